"""Stopping in the order Kubernetes expects (issue 17, DESIGN.md 14), with clients that keep calling.

When a pod is deleted, the kubelet sends SIGTERM while the Service's endpoints (and any Ingress) still
send it traffic for a few seconds. So, on SIGTERM: `/readyz` answers 503 at once, every call is still
served for `--drain-delay` seconds, then the graceful stop lets the calls in flight finish and the
master exits 0. Played here with a kubelet-like prober, keep-alive clients that stop sending only once
"the endpoints" have noticed the 503, and a long call that is still running when the graceful stop
begins: not one call may fail. Run as usual and as PID 1 of a PID namespace (as in a container).

Needs the HTTP door's `--http-bind` and `--drain-delay`: skipped, with the reason, while
`clusterd run --help` does not list them.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import ROOT, free_port, wait_for
from tests.test_pid1 import launcher

pytestmark = pytest.mark.timeout(120)

BASIC = ("tests.apps.basic:Master", "tests.apps.basic:Worker")
DRAIN_DELAY = 3.0
NEEDED = ("--http-bind", "--drain-delay")


@functools.cache
def missing_options() -> tuple[str, ...]:
    """The options this test needs that `clusterd run` does not have (yet)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "clusterd", "run", "--help"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    return tuple(flag for flag in NEEDED if flag not in out.stdout)


@pytest.fixture(autouse=True)
def needs_the_http_door():
    if missing_options():
        pytest.skip(f"clusterd run has no {' or '.join(missing_options())} yet (the HTTP door and its drain "
                    "delay): this test runs once they exist")


def http_call(conn: http.client.HTTPConnection, method: str, params: list, rid: int) -> dict:
    body = json.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": rid})
    conn.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise AssertionError(f"HTTP {resp.status}: {data[:200]!r}")
    return json.loads(data)


class Prober(threading.Thread):
    """GET /readyz on a new connection every 50 ms, as the kubelet's readiness probe does."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.seen: list[tuple[float, int | str]] = []   # (monotonic time, status or "down")
        self.stop = threading.Event()

    def first(self, status: int | str) -> float | None:
        return next((t for t, s in self.seen if s == status), None)

    def run(self) -> None:
        while not self.stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                conn.request("GET", "/readyz")
                self.seen.append((time.monotonic(), conn.getresponse().status))
            except OSError:
                self.seen.append((time.monotonic(), "down"))
            finally:
                conn.close()
            self.stop.wait(0.05)


class Caller(threading.Thread):
    """A client behind the Service: one keep-alive connection, calls back to back until the endpoints
    drop the pod (`removed`); every call it sends must be answered with the right result."""

    def __init__(self, port: int, removed: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.removed = removed
        self.answered: list[float] = []     # when each call was answered
        self.failures: list[str] = []

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        i = 0
        try:
            while not self.removed.is_set():
                i += 1
                try:
                    reply = http_call(conn, "add", [i, 1], i)
                except Exception as exc:  # noqa: BLE001 - every failure is the test's finding
                    self.failures.append(f"call {i}: {exc!r}")
                    return
                if reply.get("result") != i + 1:
                    self.failures.append(f"call {i}: {reply}")
                    return
                self.answered.append(time.monotonic())
        finally:
            conn.close()


@pytest.mark.parametrize("mode", ["pid1", "plain"], ids=["as PID 1", "as a process"])
def test_sigterm_readyz_503_at_once_serves_through_drain_delay_then_stops_gracefully(cluster, mode):
    port = free_port()
    launch = launcher("pid1" if mode == "pid1" else "subreaper", cluster)
    inst, master = launch(*BASIC, "--workers", "2", "--http-bind", f"127.0.0.1:{port}",
                          "--drain-delay", str(DRAIN_DELAY), "--graceful-timeout", "20")
    inst.wait_ready(2)
    prober = Prober(port)
    prober.start()
    wait_for(lambda: prober.first(200), timeout=10, message="readyz 200 before the stop")
    removed = threading.Event()
    callers = [Caller(port, removed) for _ in range(3)]
    for caller in callers:
        caller.start()
    wait_for(lambda: all(len(c.answered) >= 5 for c in callers), timeout=20, message="clients calling")

    sigterm_at = time.monotonic()
    master.send_signal(signal.SIGTERM)

    first_503 = wait_for(lambda: prober.first(503), timeout=DRAIN_DELAY, message="readyz 503 after SIGTERM")
    # the endpoints notice the 503 a moment later: meanwhile every client keeps calling, and a long
    # call starts that will still be running when the drain delay is over and the graceful stop begins
    long_call: dict = {}

    def call_long() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            long_call["reply"] = http_call(conn, "sleep", [DRAIN_DELAY], 1)
        except Exception as exc:  # noqa: BLE001
            long_call["error"] = repr(exc)
        finally:
            conn.close()

    long_thread = threading.Thread(target=call_long, daemon=True)
    long_thread.start()
    wait_for(lambda: all(sum(t > first_503 for t in c.answered) >= 5 for c in callers), timeout=DRAIN_DELAY,
             message="calls served after readyz turned 503")
    removed.set()
    for caller in callers:
        caller.join(30)

    code = inst.wait_exit(60)
    exited_at = time.monotonic()
    long_thread.join(30)
    prober.stop.set()
    prober.join(10)

    assert code == 0, inst.stderr()
    assert [f for c in callers for f in c.failures] == []
    assert "result" in long_call.get("reply", {}), long_call      # in flight when the graceful stop began
    assert first_503 - sigterm_at < DRAIN_DELAY                    # not ready at once, well before the stop
    statuses_after = [s for t, s in prober.seen if t >= first_503]
    assert 200 not in statuses_after                               # and never ready again
    assert exited_at - sigterm_at >= DRAIN_DELAY                   # served on for the whole drain delay
    assert "Traceback" not in inst.stderr()
