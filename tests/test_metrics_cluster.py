"""Metrics of a running instance (DESIGN.md 13): served by the master on --metrics-bind, right across
processes, with exact values after known calls, errors, a killed worker and a reload."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import urllib.request

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from clusterd import __version__, wire
from clusterd.ops.method_stats import MethodStats
from clusterd.worker import heartbeat
from tests.conftest import ROOT, free_port, wait_for

pytestmark = pytest.mark.timeout(120)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        return answer.read().decode()


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, ((label, value), ...)): value} of one scrape, parsed by prometheus_client."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(parsed: dict, name: str, **labels: str) -> float | None:
    return parsed.get((name, tuple(sorted(labels.items()))))


def calls(parsed: dict, method: str, door: str, outcome: str) -> float | None:
    return value(parsed, "clusterd_calls_total", method=method, door=door, outcome=outcome)


@pytest.fixture
def metrics_port() -> int:
    return free_port()


def test_exact_values_after_calls_errors_a_killed_worker_and_a_reload(cluster, metrics_port):
    inst = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "2", "--max-batch", "2",
                   "--metrics-bind", f"127.0.0.1:{metrics_port}")
    c = inst.client()
    for i in range(3):
        assert c.result("add", i, 1) == i + 1
    assert c.call("fail", "boom")["error"]["code"] == -32000
    assert c.call("fail_rpc")["error"]["code"] == 1234
    assert c.call("no_such_method")["error"]["code"] == -32601
    assert c.result("master_add", 2, 2) == 4
    assert c.result("total", 5) == 10                   # the master calls `count` on both workers
    c.send_raw(b"{not json")
    assert c.recv_raw()                                  # -32700, and one message rejected
    c.send_raw(b"[" + b",".join([b'{"jsonrpc": "2.0", "method": "add", "params": [1, 1], "id": 1}'] * 3) + b"]")
    assert c.recv_raw()                                  # over --max-batch 2: rejected as too large

    parsed = samples(scrape(metrics_port))
    assert calls(parsed, "add", "zmq", "ok") == 3
    assert calls(parsed, "fail", "zmq", "-32000") == 1
    assert calls(parsed, "fail_rpc", "zmq", "1234") == 1
    assert calls(parsed, "(unknown)", "zmq", "-32601") == 1
    assert calls(parsed, "master_add", "zmq", "ok") == 1
    assert calls(parsed, "total", "zmq", "ok") == 1
    assert calls(parsed, "count", "master", "ok") == 2
    assert value(parsed, "clusterd_call_duration_seconds_count", method="add") == 3
    assert value(parsed, "clusterd_call_duration_seconds_bucket", method="add", le="+Inf") == 3
    assert value(parsed, "clusterd_call_duration_seconds_bucket", method="add", le="60.0") == 3
    assert value(parsed, "clusterd_messages_rejected_total", reason="malformed") == 1
    assert value(parsed, "clusterd_messages_rejected_total", reason="too-large") == 1
    assert value(parsed, "clusterd_workers", state="ready") == 2
    assert value(parsed, "clusterd_generation") == 1
    assert value(parsed, "clusterd_calls_in_flight") == 0
    assert value(parsed, "clusterd_calls_queued") == 0
    assert value(parsed, "clusterd_worker_restarts_total", reason="crashed") == 0
    assert value(parsed, "clusterd_build_info", version=__version__, app_version="") == 1
    served = [value(parsed, "clusterd_worker_calls_served_total", slot=s) for s in ("0", "1")]
    failed = [value(parsed, "clusterd_worker_calls_failed_total", slot=s) for s in ("0", "1")]
    assert sum(served) == 3 + 2 + 2 and sum(failed) == 2   # add x3, fail, fail_rpc, count x2
    def rss_measured() -> bool:   # by the master's periodic health check
        measured = samples(scrape(metrics_port))
        return all((value(measured, "clusterd_worker_rss_bytes", slot=s) or 0) > 1_000_000 for s in ("0", "1"))
    wait_for(rss_measured, message="workers' memory measured")
    assert value(parsed, "clusterd_open_fds") > 0
    assert value(parsed, "clusterd_max_fds") > value(parsed, "clusterd_open_fds")
    assert value(parsed, "clusterd_master_loop_lag_seconds") is not None

    # a worker killed: one restart, reason crashed
    victim = inst.status()["workers"][0]
    os.kill(victim["pid"], signal.SIGKILL)
    wait_for(lambda: len(inst.ready_workers()) == 2 and victim["pid"] not in [w["pid"] for w in inst.ready_workers()],
             message="the killed worker replaced")
    parsed = samples(scrape(metrics_port))
    assert value(parsed, "clusterd_worker_restarts_total", reason="crashed") == 1
    assert value(parsed, "clusterd_worker_restarts_total", reason="reload") == 0

    # a reload: one ok, both workers replaced for it, generation 2
    done = inst.cli("reload", "--name", inst.name)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: value(samples(scrape(metrics_port)), "clusterd_reloads_total", outcome="ok") == 1,
             message="the reload counted")
    parsed = samples(scrape(metrics_port))
    assert value(parsed, "clusterd_reloads_total", outcome="failed") == 0
    assert value(parsed, "clusterd_worker_restarts_total", reason="reload") == 2
    assert value(parsed, "clusterd_worker_restarts_total", reason="crashed") == 1
    assert value(parsed, "clusterd_generation") == 2
    assert calls(parsed, "add", "zmq", "ok") == 3       # cumulative across the workers' replacement

    doc = inst.status()
    assert doc["counters"]["restarts"]["crashed"] == 1 and doc["counters"]["reloads"]["ok"] == 1
    assert doc["calls_inflight"] == 0
    for key in ("loop_lag_s", "open_fds", "max_fds", "cpu_seconds", "clients"):
        assert doc["master"][key] is not None, key


def test_a_refused_deploy_recycles_and_the_app_version(cluster, metrics_port, tmp_path):
    """reloads{failed} after a deploy that does not import; restarts{max-requests} after recycling;
    the app's version (--watch-version) in clusterd_build_info."""
    from tests.test_reload import write_app
    write_app(tmp_path, "1.0")
    (tmp_path / "VERSION").write_text("1.0\n")
    inst = cluster("app.rpc:Master", "app.rpc:Worker", "--workers", "1", "--max-requests", "3",
                   "--watch-version", "VERSION", "--metrics-bind", f"127.0.0.1:{metrics_port}", cwd=tmp_path)
    c = inst.client()
    first = inst.wait_ready(1)[0]["pid"]
    for _ in range(3):
        assert c.result("version") == "1.0"
    wait_for(lambda: (lambda ws: len(ws) == 1 and ws[0]["pid"] != first)(inst.ready_workers()), message="recycled")
    write_app(tmp_path, "2.0", broken=True)
    assert inst.cli("reload", "--name", inst.name).returncode != 0
    parsed = samples(scrape(metrics_port))
    assert value(parsed, "clusterd_reloads_total", outcome="failed") == 1
    assert value(parsed, "clusterd_reloads_total", outcome="ok") == 0
    assert value(parsed, "clusterd_worker_restarts_total", reason="max-requests") == 1
    assert value(parsed, "clusterd_worker_restarts_total", reason="crashed") == 0
    assert value(parsed, "clusterd_generation") == 1
    assert value(parsed, "clusterd_build_info", version=__version__, app_version="1.0") == 1
    assert calls(parsed, "version", "zmq", "ok") == 3


def test_status_methods_section_and_cli(cluster):
    inst = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "1")
    c = inst.client()
    for _ in range(4):
        c.result("echo", 1)
    c.call("fail", "x")
    methods = inst.status()["methods"]
    assert methods["echo"]["calls"] == 4 and methods["echo"]["errors"] == 0
    assert methods["fail"] == {"calls": 1, "errors": 1, "p50_ms": methods["fail"]["p50_ms"],
                               "p99_ms": methods["fail"]["p99_ms"]}
    assert 0 < methods["echo"]["p50_ms"] <= methods["echo"]["p99_ms"] < 10_000
    shown = inst.cli("status", "--methods", "--name", inst.name)
    assert shown.returncode == 0, shown.stderr
    rows = {line.split()[0]: line.split() for line in shown.stdout.splitlines()
            if line.startswith(("echo ", "fail "))}
    assert rows["echo"][1:3] == ["4", "0"] and rows["fail"][1:3] == ["1", "1"]
    plain = inst.cli("status", "--name", inst.name)
    assert "echo" not in plain.stdout                    # without --methods: the workers only


def test_worker_door_calls_reach_the_metrics_with_heartbeats():
    """A worker's own door (HTTP/WS) records into its MethodStats; the heartbeat carries what changed,
    once: a beat that could not leave loses nothing, an idle beat carries nothing."""
    ctx = zmq.Context()
    master = ctx.socket(zmq.ROUTER)
    port = master.bind_to_random_port("tcp://127.0.0.1")
    stats = MethodStats()
    stats.record("echo", "http", "ok", 0.002)
    stats.record("echo", "ws", "-32000", 0.004)
    stop = __import__("threading").Event()
    thread = heartbeat.start(ctx, f"tcp://127.0.0.1:{port}", b"w1", 0.05, 10.0, stop=stop, stats=stats)
    merged = MethodStats()
    beats = 0
    try:
        master.setsockopt(zmq.RCVTIMEO, 5000)
        while beats < 6:
            ident, kind, body = master.recv_multipart()
            assert ident == wire.HEARTBEAT_PREFIX + b"w1" and kind == wire.BEAT
            master.send_multipart([ident, wire.BEAT])
            beat = __import__("json").loads(body)
            merged.merge(beat.get("stats"))
            beats += 1
            if beats == 3:
                stats.record("echo", "http", "ok", 0.001)
    finally:
        stop.set()
        thread.join(5)
        master.close(0)
        ctx.term()
    assert merged.calls == {("echo", "http", "ok"): 2, ("echo", "ws", "-32000"): 1}
    assert sum(merged.hist["echo"]) == 3


def test_a_workers_door_calls_reach_the_metrics_and_it_can_fetch_them(cluster, metrics_port):
    """What a worker's HTTP/WS door does, through its link: calls it answers itself reach the master's
    metrics with the heartbeats (door http/ws); the workers-only clusterd.metrics gives it the
    instance's metrics for its own GET /metrics."""
    inst = cluster("tests.apps.linkprobe:Master", "tests.apps.linkprobe:Worker", "--workers", "1",
                   "--metrics-bind", f"127.0.0.1:{metrics_port}")
    c = inst.client()
    c.result("door_call", "echo", "http", "ok", 0.002)
    c.result("door_call", "echo", "http", "ok", 0.003)
    c.result("door_call", "echo", "ws", "-32000", 0.004)
    wait_for(lambda: calls(samples(scrape(metrics_port)), "echo", "http", "ok") == 2, message="the door's calls")
    parsed = samples(scrape(metrics_port))
    assert calls(parsed, "echo", "ws", "-32000") == 1
    assert value(parsed, "clusterd_call_duration_seconds_count", method="echo") == 3
    content_type, text = c.result("master_metrics")
    assert content_type.startswith("text/plain") and "clusterd_calls_total" in text
    assert c.call("clusterd.metrics")["error"]["code"] == -32601      # not for clients
    assert calls(samples(scrape(metrics_port)), "master_metrics", "zmq", "ok") == 1


def test_bad_metrics_bind_is_a_usage_error(cluster, metrics_port):
    for args, words in ((["--metrics-bind", "nowhere"], "HOST:PORT"),
                        (["--dashboard"], "--metrics-bind")):
        inst = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "1", *args, start=False)
        inst.start(wait=False)
        assert inst.wait_exit(30) == 2
        assert words in inst.stderr() and "Traceback" not in inst.stderr()
    import socket
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        inst = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "1",
                       "--metrics-bind", f"127.0.0.1:{taken.getsockname()[1]}", name="taken", start=False)
        inst.start(wait=False)
        assert inst.wait_exit(30) == 2
        assert "cannot listen" in inst.stderr() and "Traceback" not in inst.stderr()
    finally:
        taken.close()


def test_a_non_loopback_metrics_bind_gets_a_warning(cluster, metrics_port):
    inst = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "1",
                   "--metrics-bind", f"0.0.0.0:{metrics_port}", "--log-format", "json")
    assert scrape(metrics_port)
    assert '"event": "insecure-metrics-bind"' in inst.stderr().replace('":"', '": "')


# ---------------------------------------------------------------------------- names
NAME = re.compile(r"^clusterd_[a-z][a-z0-9_]*$")
LABEL = re.compile(r"^[a-z][a-z0-9_]*$")


def test_metric_names_follow_prometheus_conventions(cluster, metrics_port):
    inst = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "1",
                   "--metrics-bind", f"127.0.0.1:{metrics_port}")
    inst.client().result("add", 1, 2)
    wait_for(lambda: "\nclusterd_worker_cpu_seconds_total{" in scrape(metrics_port), message="workers measured")
    text = scrape(metrics_port)
    families = list(text_string_to_metric_families(text))
    names = {f.name for f in families}
    for family in families:
        assert NAME.match(family.name), family.name
        assert family.documentation, family.name
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
        if "seconds" in family.name or "bytes" in family.name:
            assert family.name.endswith(("_seconds", "_bytes")), family.name
        for s in family.samples:
            for label in s.labels:
                assert LABEL.match(label), (family.name, label)
    design = {"clusterd_calls", "clusterd_call_duration_seconds", "clusterd_calls_in_flight", "clusterd_calls_queued",
              "clusterd_workers", "clusterd_worker_restarts", "clusterd_reloads", "clusterd_worker_rss_bytes",
              "clusterd_master_loop_lag_seconds", "clusterd_open_fds", "clusterd_build_info"}
    assert design <= names, design - names
    sample_names = {s.name for f in families for s in f.samples}
    grafana = (ROOT / "deploy" / "grafana" / "clusterd-dashboard.json").read_text()
    used = set(re.findall(r"\bclusterd_[a-z_]+", grafana))
    assert used and used <= sample_names, used - sample_names   # the dashboard asks for what is served
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: prometheus); names checked above")
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == "", checked.stdout + checked.stderr
