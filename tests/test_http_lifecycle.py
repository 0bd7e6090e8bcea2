"""The HTTP/WebSocket door through the instance's life: probes through start, reload and stop, no call
lost across a rolling reload, no connection refused across scale and crashes, calls on a worker that
dies, --drain-delay and `clusterd health`."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from clusterd import protocol
from clusterd.cli.tables import health_verdict

from .conftest import free_port, wait_for
from .http_clients import HttpRpc

pytestmark = pytest.mark.timeout(180)

APP = ("tests.apps.basic:Master", "tests.apps.basic:Worker")
CLOSED = (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine, BrokenPipeError)


def start(cluster, *options: str, name: str, wait: bool = True):
    port = free_port()
    inst = cluster(*APP, "--http-bind", f"127.0.0.1:{port}", *options, name=name, wait=wait)
    inst.port = port
    return inst


def wait_in_flight(inst, n: int, pid: int | None = None, timeout: float = 10.0) -> None:
    """Wait until the workers (or the one with pid) report n HTTP/WebSocket calls running: their
    doors' counts reach the status with their heartbeats."""
    def running() -> bool:
        return sum((w.get("http") or {}).get("inflight", 0) for w in inst.status()["workers"]
                   if pid is None or w["pid"] == pid) >= n
    wait_for(running, timeout=timeout, interval=0.05, message=f"{n} calls in flight on the workers")


def probe(port: int, path: str) -> int:
    """A probe as a load balancer sends it: a new connection each time."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


# ---------------------------------------------------------------------------- clients that keep calling
class HttpCaller(threading.Thread):
    """Calls add(i, 1) over one keep-alive connection until stopped. A connection the server closes
    without answering had that request unread (the door only closes between answers), so it is
    sent again on a new connection, as HTTP clients do; anything else is a failure."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.calls = self.resent = self.reconnects = 0
        self.failures: list[str] = []

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        i = 0
        while not self.stop.is_set():
            i += 1
            body = json.dumps({"jsonrpc": "2.0", "method": "add", "params": [i, 1], "id": i})
            for _attempt in range(3):
                try:
                    conn.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    data = resp.read()
                    if resp.getheader("Connection", "").lower() == "close":
                        conn.close()
                        self.reconnects += 1
                    break
                except CLOSED:
                    conn.close()
                    self.resent += 1
            else:
                self.failures.append(f"call {i}: connection closed 3 times")
                continue
            reply = json.loads(data)
            if resp.status != 200 or reply.get("result") != i + 1:
                self.failures.append(f"call {i}: {resp.status} {reply}")
            self.calls += 1
        conn.close()


class WsCaller(HttpCaller):
    """Keeps 4 calls in flight on one WebSocket. On a close (1001 when its worker drains) the calls
    still unanswered were never read by the server: they are sent again on a new connection."""

    def run(self) -> None:
        url = f"ws://127.0.0.1:{self.port}/ws"
        pending: dict[int, int] = {}
        next_id = 0
        while not self.stop.is_set():
            try:
                with ws_connect(url) as ws:
                    for i in list(pending):
                        ws.send(json.dumps({"jsonrpc": "2.0", "method": "add", "params": [i, 1], "id": i}))
                    while not self.stop.is_set() or pending:
                        while len(pending) < 4 and not self.stop.is_set():
                            next_id += 1
                            pending[next_id] = next_id + 1
                            ws.send(json.dumps({"jsonrpc": "2.0", "method": "add", "params": [next_id, 1],
                                                "id": next_id}))
                        reply = json.loads(ws.recv(30))
                        expected = pending.pop(reply.get("id"), None)
                        if reply.get("result") != expected:
                            self.failures.append(str(reply))
                        self.calls += 1
                    return
            except (ConnectionClosed, ConnectionError):
                self.reconnects += 1
                self.resent += len(pending)
            except TimeoutError:
                self.failures.append(f"no answer for {sorted(pending)}")
                return


def test_rolling_reload_under_keep_alive_http_and_websocket_clients_loses_no_call(cluster):
    inst = start(cluster, "--workers", "2", name="rollhttp")
    old_pids = {w["pid"] for w in inst.ready_workers()}
    callers = [HttpCaller(inst.port), HttpCaller(inst.port), WsCaller(inst.port), WsCaller(inst.port)]
    for caller in callers:
        caller.start()
    wait_for(lambda: all(c.calls > 20 for c in callers), message="clients calling")
    for _ in range(2):
        before = [c.calls for c in callers]
        done = inst.cli("reload", "--name", "rollhttp")
        assert done.returncode == 0, done.stderr
        wait_for(lambda before=before: all(c.calls > b + 20 for c, b in zip(callers, before)),
                 message="calls after the reload")
    for caller in callers:
        caller.stop.set()
    for caller in callers:
        caller.join(30)
    assert [c.failures for c in callers] == [[], [], [], []]
    assert all(c.calls > 40 for c in callers)
    new = inst.ready_workers()
    assert {w["generation"] for w in new} == {3} and not old_pids & {w["pid"] for w in new}


# ---------------------------------------------------------------------------- probes
def test_probes_through_start_reload_and_stop(cluster):
    inst = start(cluster, "--workers", "2", "--graceful-timeout", "10", name="probes", wait=False)
    # the port is open before any worker is ready: a probe waits in the backlog, never refused
    wait_for(lambda: probe(inst.port, "/readyz") == 200, timeout=30, message="ready")
    assert probe(inst.port, "/livez") == 200
    inst.wait_running()

    codes: list[tuple[int, int]] = []
    stop = threading.Event()

    def keep_probing() -> None:
        while not stop.is_set():
            try:
                codes.append((probe(inst.port, "/livez"), probe(inst.port, "/readyz")))
            except (OSError, http.client.HTTPException) as exc:  # a probe that failed counts as one
                codes.append((repr(exc), ""))

    prober = threading.Thread(target=keep_probing)
    prober.start()
    try:
        assert inst.cli("reload", "--name", "probes").returncode == 0
    finally:
        stop.set()
        prober.join(30)
    assert codes and set(codes) == {(200, 200)}  # a rolling reload never makes the instance unready

    # a graceful stop: 503 from the moment it begins (a call in flight holds the stop open)
    holder = HttpRpc(inst.port)
    box: dict = {}
    slow = threading.Thread(target=lambda: box.update(reply=holder.call("sleep", 4.0)))
    slow.start()
    # the stop must begin while the call runs (a request still on its way may meet a closed door)
    wait_in_flight(inst, 1, timeout=3)
    watcher = HttpRpc(inst.port)
    assert watcher.get("/readyz")[0] == 200
    inst.signal(signal.SIGTERM)
    status = wait_for(lambda: (lambda s: s if s == 503 else None)(watcher.get("/readyz")[0]), timeout=10,
                      message="503 while stopping")
    assert status == 503
    slow.join(30)
    assert box["reply"]["result"] > 0  # the call in flight finished
    assert inst.wait_exit(30) == 0
    holder.close()
    watcher.close()


def test_livez_follows_the_master_loop(cluster):
    inst = start(cluster, "--workers", "1", "--heartbeat-timeout", "6", name="livez")
    assert probe(inst.port, "/livez") == 200
    os.kill(inst.proc.pid, signal.SIGSTOP)  # the master's loop stops: no heartbeat answers
    try:
        wait_for(lambda: probe(inst.port, "/livez") == 503, timeout=5, message="livez 503")
        assert probe(inst.port, "/readyz") == 200  # calls still work: it is the master that is stuck
    finally:
        os.kill(inst.proc.pid, signal.SIGCONT)
    wait_for(lambda: probe(inst.port, "/livez") == 200, timeout=10, message="livez 200 again")


def test_drain_delay_makes_readyz_fail_first_then_stops(cluster):
    inst = start(cluster, "--workers", "1", "--drain-delay", "2", name="delay")
    assert inst.cli("health", "--name", "delay").returncode == 0
    c = HttpRpc(inst.port)
    t0 = time.monotonic()
    inst.signal(signal.SIGTERM)
    wait_for(lambda: probe(inst.port, "/readyz") == 503, timeout=5, message="readyz 503")
    # still serving, on existing and on new connections, until the delay is over
    assert c.result("add", 1, 2) == 3
    assert HttpRpc(inst.port).result("add", 2, 2) == 4
    assert probe(inst.port, "/livez") == 200
    health = inst.cli("health", "--name", "delay")
    assert health.returncode == 1 and "drain-delay" in health.stdout
    assert inst.status()["ready"] is False
    assert inst.wait_exit(30) == 0
    assert time.monotonic() - t0 >= 2.0
    c.close()
    gone = inst.cli("health", "--name", "delay")
    assert gone.returncode == 3 and gone.stderr.count("\n") == 1


def test_health_verdicts():
    def doc(state, states, ready=True):
        return {"name": "x", "state": state, "ready": ready,
                "workers": [{"slot": i, "state": s} for i, s in enumerate(states)]}
    assert health_verdict(doc("running", ["ready", "ready"]))[0] == 0
    assert health_verdict(doc("running", ["ready", "starting"]))[0] == 1
    assert health_verdict(doc("reloading", ["ready", "ready"]))[0] == 1
    assert health_verdict(doc("starting", ["ready", "starting"]))[0] == 1
    assert health_verdict(doc("stopping", ["ready"], ready=False))[0] == 1
    assert health_verdict(doc("running", ["ready"], ready=False))[0] == 1
    assert health_verdict(doc("running", []))[0] == 1
    code, line = health_verdict(doc("running", ["ready", "starting"]))
    assert "1/2" in line and "\n" not in line


# ---------------------------------------------------------------------------- scale, crash, death mid-call
def test_scale_and_crashes_of_other_workers_never_refuse_a_connection(cluster):
    inst = start(cluster, "--workers", "2", name="noref")
    refused: list[str] = []
    cut: list[str] = []
    answered = [0]
    stop = threading.Event()

    def connect_and_call() -> None:
        while not stop.is_set():
            try:
                c = HttpRpc(inst.port)
                try:
                    assert c.result("add", 1, 1) == 2
                    answered[0] += 1
                finally:
                    c.close()
            except ConnectionRefusedError as exc:
                refused.append(repr(exc))
            except CLOSED as exc:  # the call's own worker was the one killed
                cut.append(repr(exc))

    threads = [threading.Thread(target=connect_and_call) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: answered[0] > 20)
        assert inst.cli("scale", "3", "--name", "noref").returncode == 0
        inst.wait_ready(3)
        assert inst.cli("scale", "1", "--name", "noref").returncode == 0
        inst.wait_ready(1)
        for _ in range(2):
            victim = inst.ready_workers()[0]["pid"]
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda victim=victim: (lambda ws: ws and ws[0]["pid"] != victim)(inst.ready_workers()),
                     timeout=20)
        before = answered[0]
        wait_for(lambda: answered[0] > before + 20)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert refused == []
    assert len(cut) <= 2 * 3  # at most the calls in flight on the killed workers


def test_a_call_cut_off_by_its_worker_stopping_gets_worker_died_and_the_connection_closes(cluster):
    # graceful timeout 4: calls get 2 s to finish, then -32002 or a retry elsewhere (worker/http.py)
    inst = start(cluster, "--workers", "1", "--graceful-timeout", "4", name="died")
    old_pid = inst.ready_workers()[0]["pid"]
    http_client = HttpRpc(inst.port)
    box: dict = {}

    def slow_http() -> None:
        status, headers, body = http_client.post(protocol.dumps(
            {"jsonrpc": "2.0", "method": "sleep", "params": [30], "id": 7}))
        box["http"] = (status, headers.get("connection"), json.loads(body))

    ws = ws_connect(f"ws://127.0.0.1:{inst.port}/ws").__enter__()
    ws.send(json.dumps({"jsonrpc": "2.0", "method": "sleep", "params": [30], "id": 8}))
    ws.send(json.dumps({"jsonrpc": "2.0", "method": "idem_sleep", "params": [0.5], "id": 9}))
    ws_idem = HttpRpc(inst.port)  # an idempotent call over HTTP, on the same worker
    idem: dict = {}

    def idem_http() -> None:
        idem["reply"] = ws_idem.call("idem_slow_first", 30)

    threads = [threading.Thread(target=slow_http), threading.Thread(target=idem_http)]
    for t in threads:
        t.start()
    wait_in_flight(inst, 3)  # the two 30 s sleeps and the idempotent call
    assert inst.cli("reload", "--name", "died").returncode == 0
    for t in threads:
        t.join(30)
    status, connection, reply = box["http"]
    assert status == 200 and connection == "close"
    assert reply == {"jsonrpc": "2.0", "error": {"code": protocol.WORKER_DIED,
                                                 "message": protocol.MESSAGES[protocol.WORKER_DIED]}, "id": 7}
    # the idempotent call ran again on the new worker, through the master
    assert idem["reply"]["result"] != old_pid and idem["reply"]["result"] == inst.ready_workers()[0]["pid"]
    answers = {}
    with pytest.raises(ConnectionClosed):
        while True:
            msg = json.loads(ws.recv(30))
            answers[msg["id"]] = msg
    assert answers[9]["result"] == old_pid  # finished in time on the old worker
    assert answers[8]["error"]["code"] == protocol.WORKER_DIED
    http_client.close()
    ws_idem.close()


def test_a_killed_worker_closes_its_connections_at_once(cluster):
    inst = start(cluster, "--workers", "2", name="killed")
    c = HttpRpc(inst.port)
    pid = c.result("pid")
    box: dict = {}

    def slow() -> None:
        try:
            box["reply"] = c.call("sleep", 30)
        except CLOSED as exc:
            box["closed"] = exc

    t = threading.Thread(target=slow)
    t.start()
    wait_in_flight(inst, 1, pid=pid)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    t.join(20)
    assert "closed" in box and time.monotonic() - t0 < 10
    c.close()
    # the next connection is served by the other worker, or the replacement
    assert HttpRpc(inst.port).result("add", 1, 1) == 2


def test_thread_isolation_serves_the_door_too(cluster):
    inst = start(cluster, "--workers", "2", "--isolation", "thread", name="threaddoor")
    c = HttpRpc(inst.port)
    try:
        assert c.result("add", 1, 2) == 3
        assert c.result("config") == {"greeting": "hello"}
        assert probe(inst.port, "/readyz") == 200
    finally:
        c.close()
    assert inst.cli("stop", "--name", "threaddoor").returncode == 0
    assert inst.wait_exit(30) == 0


def test_http_options_come_from_the_environment_and_the_config_file(cluster, tmp_path):
    port, other = free_port(), free_port()
    conf = tmp_path / "c.toml"
    conf.write_text(f'http-bind = ["127.0.0.1:{other}"]\nhttp-status = true\ndrain-delay = 0.5\n')
    inst = cluster(*APP, "--workers", "1", "-c", str(conf), name="envhttp",
                   env={"CLUSTERD_HTTP_BIND": f"127.0.0.1:{port}"})
    # the environment wins over the file
    assert probe(port, "/status") == 200
    config = inst.status()["config"]
    assert config["http_binds"] == [f"127.0.0.1:{port}"] and config["drain_delay_s"] == 0.5


def test_stop_with_a_timeout_answers_http_calls_that_cannot_finish(cluster):
    inst = start(cluster, "--workers", "1", name="stoptimeout")  # --graceful-timeout stays 30
    c = HttpRpc(inst.port)
    box: dict = {}
    caller = threading.Thread(target=lambda: box.update(reply=c.call("sleep", 60)))
    caller.start()
    wait_in_flight(inst, 1)
    t0 = time.monotonic()
    assert inst.cli("stop", "--name", "stoptimeout", "--timeout", "2").returncode == 0
    caller.join(30)
    assert box["reply"]["error"]["code"] == protocol.WORKER_DIED
    assert time.monotonic() - t0 < 15
    c.close()
