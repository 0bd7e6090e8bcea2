"""The Prometheus collector: exact values from a fixed status document, names by the conventions."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from clusterd.ops.method_stats import OK, MethodStats
from clusterd.ops.metrics import Exporter, LoopLagMeter, fd_usage

DOC = {
    "name": "app", "state": "running", "generation": 3, "queued": 2,
    "master": {"pid": 100, "started_at": 1764000000.0, "uptime_s": 5.0, "version": "1.2.0", "rss_bytes": 31000000,
               "cpu_percent": 0.5, "cpu_seconds": 1.25, "loop_lag_s": 0.002, "open_fds": 40, "max_fds": 1024,
               "clients": 3},
    "workers": [
        {"slot": 0, "pid": 201, "state": "ready", "generation": 3, "started_at": 1764000001.0, "rss_bytes": 24000000,
         "cpu_seconds": 2.5, "inflight": 1, "served": 10, "failed": 1, "restarts": 0},
        # slot 1 in the middle of a reload: the draining worker and its replacement
        {"slot": 1, "pid": 150, "state": "draining", "generation": 2, "started_at": 1764000000.5,
         "rss_bytes": 26000000, "cpu_seconds": 9.0, "inflight": 2, "served": 99, "failed": 0, "restarts": 1},
        {"slot": 1, "pid": 202, "state": "ready", "generation": 3, "started_at": 1764000002.0, "rss_bytes": 22000000,
         "cpu_seconds": 0.5, "inflight": 0, "served": 3, "failed": 0, "restarts": 1},
        # slot 2 waiting out its restart backoff
        {"slot": 2, "pid": None, "state": "starting", "generation": 3, "started_at": None, "rss_bytes": None,
         "cpu_seconds": None, "inflight": 0, "served": 0, "failed": 0, "restarts": 4},
    ],
    "counters": {"refused": {"-32001": 5, "-32005": 1}, "rejected": {"too-large": 2, "malformed": 7},
                 "restarts": {"crashed": 4, "hung": 1}, "reloads": {"ok": 2, "failed": 1}},
}


def scrape(doc: dict, stats: MethodStats | None = None) -> dict[tuple[str, tuple], float]:
    text = Exporter(lambda: doc, stats or MethodStats(), "0.1.0").render()[0].decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def families(doc: dict, stats: MethodStats | None = None) -> dict:
    text = Exporter(lambda: doc, stats or MethodStats(), "0.1.0").render()[0].decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample_stats() -> MethodStats:
    stats = MethodStats()
    stats.record("fib", "zmq", OK, 0.0013)
    stats.record("fib", "zmq", OK, 0.0007)
    stats.record("fib", "http", "-32000", 0.2)
    stats.record("add", "worker", OK, 0.00002)
    stats.record("add", "ws", OK, 90.0)
    return stats


def test_exact_values_from_the_status_document():
    s = scrape(DOC)
    assert s[("clusterd_build_info", (("app_version", "1.2.0"), ("version", "0.1.0")))] == 1
    assert s[("clusterd_generation", ())] == 3
    assert s[("clusterd_calls_in_flight", ())] == 3          # sum over the workers
    assert s[("clusterd_calls_queued", ())] == 2
    assert s[("clusterd_calls_refused_total", (("code", "-32001"),))] == 5
    assert s[("clusterd_calls_refused_total", (("code", "-32005"),))] == 1
    assert s[("clusterd_messages_rejected_total", (("reason", "malformed"),))] == 7
    assert s[("clusterd_messages_rejected_total", (("reason", "too-large"),))] == 2
    assert s[("clusterd_worker_restarts_total", (("reason", "crashed"),))] == 4
    assert s[("clusterd_worker_restarts_total", (("reason", "hung"),))] == 1
    assert s[("clusterd_reloads_total", (("outcome", "ok"),))] == 2
    assert s[("clusterd_reloads_total", (("outcome", "failed"),))] == 1
    assert {k[1][0][1]: v for k, v in s.items() if k[0] == "clusterd_workers"} == {
        "starting": 1, "ready": 2, "draining": 1, "stopping": 0}
    # per slot: the worker that serves it (the replacement in slot 1); none for a slot without a process
    assert s[("clusterd_worker_rss_bytes", (("slot", "0"),))] == 24000000
    assert s[("clusterd_worker_rss_bytes", (("slot", "1"),))] == 22000000
    assert s[("clusterd_worker_cpu_seconds_total", (("slot", "1"),))] == 0.5
    assert s[("clusterd_worker_calls_served_total", (("slot", "0"),))] == 10
    assert s[("clusterd_worker_calls_failed_total", (("slot", "0"),))] == 1
    assert not any(k[1] == (("slot", "2"),) for k in s)
    assert s[("clusterd_master_loop_lag_seconds", ())] == 0.002
    assert s[("clusterd_master_rss_bytes", ())] == 31000000
    assert s[("clusterd_master_cpu_seconds_total", ())] == 1.25
    assert s[("clusterd_master_start_time_seconds", ())] == 1764000000.0
    assert s[("clusterd_open_fds", ())] == 40
    assert s[("clusterd_max_fds", ())] == 1024
    assert s[("clusterd_clients_connected", ())] == 3


def test_calls_and_latency_histogram_from_the_statistics():
    s = scrape(DOC, sample_stats())
    calls = {k[1]: v for k, v in s.items() if k[0] == "clusterd_calls_total"}
    assert calls == {
        (("door", "zmq"), ("method", "fib"), ("outcome", "ok")): 2,
        (("door", "http"), ("method", "fib"), ("outcome", "-32000")): 1,
        (("door", "worker"), ("method", "add"), ("outcome", "ok")): 1,
        (("door", "ws"), ("method", "add"), ("outcome", "ok")): 1,
    }

    def bucket(method: str, le: str) -> float:
        return s[("clusterd_call_duration_seconds_bucket", (("le", le), ("method", method)))]

    assert bucket("fib", "0.0005") == 0
    assert bucket("fib", "0.001") == 1
    assert bucket("fib", "0.0025") == 2
    assert bucket("fib", "0.1") == 2
    assert bucket("fib", "0.25") == 3
    assert bucket("fib", "+Inf") == 3
    assert bucket("add", "5e-05") == 1
    assert bucket("add", "60.0") == 1
    assert bucket("add", "+Inf") == 2
    assert s[("clusterd_call_duration_seconds_count", (("method", "fib"),))] == 3
    assert s[("clusterd_call_duration_seconds_sum", (("method", "fib"),))] == pytest.approx(0.202)


def test_missing_fields_give_no_samples_rather_than_zeros():
    doc = {"name": "app", "state": "running", "master": {"pid": 1, "version": None},
           "workers": [{"slot": 0, "pid": 5, "state": "ready", "inflight": 0, "served": 0, "failed": 0}]}
    fams = families(doc)
    for name in ("clusterd_master_loop_lag_seconds", "clusterd_open_fds", "clusterd_clients_connected",
                 "clusterd_generation"):
        assert name not in fams
    for name in ("clusterd_calls_refused", "clusterd_worker_restarts", "clusterd_worker_cpu_seconds"):
        assert fams[name].samples == []
    assert fams["clusterd_build_info"].samples[0].labels == {"version": "0.1.0", "app_version": ""}


DOCUMENTED = {"clusterd_calls", "clusterd_call_duration_seconds", "clusterd_calls_in_flight",
              "clusterd_calls_queued", "clusterd_calls_refused", "clusterd_messages_rejected", "clusterd_workers",
              "clusterd_worker_restarts", "clusterd_reloads", "clusterd_generation", "clusterd_worker_rss_bytes",
              "clusterd_worker_cpu_seconds", "clusterd_worker_calls_served", "clusterd_worker_calls_failed",
              "clusterd_master_loop_lag_seconds", "clusterd_master_rss_bytes", "clusterd_open_fds",
              "clusterd_max_fds", "clusterd_clients_connected", "clusterd_build_info"}


def test_every_documented_family_is_there():
    assert DOCUMENTED <= set(families(DOC, sample_stats()))


def test_names_follow_prometheus_conventions():
    fams = families(DOC, sample_stats())
    snake = re.compile(r"^clusterd_[a-z][a-z0-9]*(_[a-z0-9]+)*$")
    for name, family in fams.items():
        assert snake.match(name), name
        assert family.documentation, name
        sample_names = {s.name for s in family.samples}
        if family.type == "counter":
            assert sample_names <= {name + "_total"}, name      # counters end in _total
        for label in {k for s in family.samples for k in s.labels}:
            assert re.match(r"^[a-z][a-z0-9_]*$", label) and not label.startswith("__"), (name, label)
        # units are base units, spelled out, at the end (before _total)
        assert not re.search(r"_(ms|milliseconds|kb|mb|kib|mib|percent)(_|$)", name), name
        if "time" in name or "lag" in name or "duration" in name or "cpu" in name:
            assert name.endswith("_seconds"), name
        if "rss" in name or "memory" in name:
            assert name.endswith("_bytes"), name
    assert fams["clusterd_call_duration_seconds"].type == "histogram"


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool is not installed (Debian: apt-get install prometheus)")
def test_promtool_check_metrics_is_clean():
    text, _type = Exporter(lambda: DOC, sample_stats(), "0.1.0").render()
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == b"" and result.stderr.strip() == b""


def test_hostile_method_names_are_escaped_in_the_exposition():
    stats = MethodStats()
    stats.record('x"}\nclusterd_fake 1', "zmq", OK, 0.001)
    fams = families(DOC, stats)
    assert "clusterd_fake" not in fams
    labels = [s.labels["method"] for s in fams["clusterd_calls"].samples]
    assert labels == ['x"}\nclusterd_fake 1']


def test_fd_usage_reports_this_process():
    used, limit = fd_usage()
    assert used is not None and used > 0
    assert limit is None or limit >= used


def test_loop_lag_meter_measures_a_blocked_loop():
    async def main() -> float:
        meter = LoopLagMeter(interval=0.01)
        meter.start(asyncio.get_running_loop())
        try:
            await asyncio.sleep(0.005)
            time.sleep(0.1)                   # block the loop well past the timer
            await asyncio.sleep(0.05)         # the late timer fires now
            return meter.worst
        finally:
            meter.stop()

    assert asyncio.run(main()) >= 0.08


def test_openmetrics_when_the_scraper_asks_for_it():
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
    body, content_type = Exporter(lambda: DOC, sample_stats(), "0.1.0").render(
        "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
    assert content_type.startswith("application/openmetrics-text")
    fams = {f.name: f for f in parse_openmetrics(body.decode())}
    assert {s.value for s in fams["clusterd_calls"].samples if s.labels["method"] == "fib"} == {2, 1}
    plain, content_type = Exporter(lambda: DOC, sample_stats(), "0.1.0").render("")
    assert content_type.startswith("text/plain; version=0.0.4")
