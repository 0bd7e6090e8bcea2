"""--dashboard on the HTTP port (--http-bind): the page, its files and its event stream, served by the
workers and relayed from the master; open with a token, bounded, and closed by a stopping worker.
The relay's sharing of one long poll is checked on its own at the end, with a fake link."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import time

import pytest

from clusterd import protocol
from clusterd.httpdoor import DEFAULT_MAX_STREAMS
from clusterd.worker.dashboard_relay import KEEPALIVE, DashboardRelay

from .conftest import free_port, wait_for

pytestmark = pytest.mark.timeout(120)

APP = ("tests.apps.basic:Master", "tests.apps.basic:Worker")


def start(cluster, *options: str, name: str):
    port = free_port()
    inst = cluster(*APP, "--http-bind", f"127.0.0.1:{port}", "--dashboard", *options, name=name)
    inst.port = port
    return inst


def get(port: int, path: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def post_call(port: int, method: str, *params, token: str | None = None) -> dict:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/", body=protocol.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                                                       "params": list(params)}), headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        return {"status": resp.status, **(json.loads(body) if resp.status == 200 else {})}
    finally:
        conn.close()


class Sse:
    """One GET /dashboard/events over a raw socket, read event by event."""

    def __init__(self, port: int, timeout: float = 20.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.sendall(b"GET /dashboard/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        self.buf = b""
        self.eof = False
        head = self._until(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}

    def _until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                self.eof = True
                raise EOFError
            self.buf += chunk
        part, self.buf = self.buf.split(sep, 1)
        return part

    def next(self) -> tuple[str, dict | None]:
        """The next event (kind, data); comments come as ("comment", None), "retry" as ("retry", None)."""
        block = self._until(b"\n\n").decode()
        kind, data = "message", None
        for line in block.split("\n"):
            if line.startswith(":"):
                return "comment", None
            if line.startswith("retry:"):
                return "retry", None
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
        return kind, data

    def wait(self, predicate, timeout: float = 15.0, what: str = "an event") -> tuple[str, dict | None]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.1, deadline - time.monotonic()))
            kind, data = self.next()
            if predicate(kind, data):
                return kind, data
        raise AssertionError(f"timed out waiting for {what}")

    def read_to_end(self, timeout: float = 15.0) -> None:
        """Until the server closes the stream (EOFError never escapes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                self.next()
            except EOFError:
                return
        raise AssertionError("the stream was not closed")

    def close(self) -> None:
        self.sock.close()


def hello(stream: Sse) -> dict:
    return stream.wait(lambda kind, _d: kind == "hello", what="hello")[1]


def test_page_files_and_live_stream_on_the_http_port_without_the_token(cluster, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-for-the-dashboard-test\n")
    os.chmod(token_file, 0o600)
    inst = start(cluster, "--workers", "2", "--http-token-file", str(token_file), name="dashhttp")
    pids = sorted(w["pid"] for w in inst.wait_ready(2))

    status, headers, body = get(inst.port, "/dashboard")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in headers["content-security-policy"]
    assert b'src="dashboard/dashboard.js"' in body           # relative: the same on both ports
    status, headers, body = get(inst.port, "/dashboard/uPlot.iife.min.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript") and b"uPlot" in body
    assert get(inst.port, "/dashboard/dashboard.css")[0] == 200
    assert get(inst.port, "/dashboard/nothing.js")[0] == 404
    assert get(inst.port, "/dashboard/events", method="HEAD")[0] == 405
    assert post_call(inst.port, "add", 1, 2)["status"] == 401  # the token guards the RPC path, not the page
    token = "s3cret-token-for-the-dashboard-test"
    for caller in (inst.client().call, lambda *a: post_call(inst.port, *a, token=token)):
        assert caller("clusterd.dashboard_after", None)["error"]["code"] == -32601   # the workers' only

    stream = Sse(inst.port)
    try:
        assert stream.status == 200 and stream.headers["content-type"] == "text/event-stream"
        first = hello(stream)
        assert sorted(w["pid"] for w in first["status"]["workers"]) == pids
        assert any(e["kind"] == "worker-ready" for e in first["events"])

        assert post_call(inst.port, "add", 2, 3, token=token)["result"] == 5
        stream.wait(lambda kind, d: kind == "tick" and "add" in d["status"]["methods"], what="a tick with the call")

        # the worker not serving this stream (its open connections reach the status with its heartbeats)
        def serving() -> list[int]:
            return [w["pid"] for w in inst.status()["workers"] if (w.get("http") or {}).get("connections")]
        holder = wait_for(lambda: (lambda p: p if len(p) == 1 else None)(serving()), 10,
                          message="the stream's worker in the status")[0]
        victim = next(pid for pid in pids if pid != holder)
        os.kill(victim, signal.SIGKILL)
        stream.wait(lambda kind, d: kind == "event" and d["kind"] == "worker-exit" and d.get("pid") == victim,
                    what="the kill on the timeline")
    finally:
        stream.close()


def test_streams_are_shared_by_a_worker_and_bounded(cluster):
    inst = start(cluster, "--workers", "1", name="dashcap")
    inst.wait_ready(1)
    streams = []
    try:
        for _ in range(DEFAULT_MAX_STREAMS):
            s = Sse(inst.port)
            assert s.status == 200
            streams.append(s)
        for s in streams:
            hello(s)
        refused = Sse(inst.port)
        assert refused.status == 503 and refused.headers.get("retry-after")
        refused.close()
        # every open stream gets the same ticks (one relay feeds them all)
        seqs = [s.wait(lambda kind, _d: kind == "tick", what="a tick") for s in streams[:2]]
        assert all(kind == "tick" for kind, _ in seqs)
        streams.pop().close()
        wait_for(lambda: Sse(inst.port).status == 200, 10, message="a place once a stream closed")
    finally:
        for s in streams:
            s.close()


def test_a_rolling_reload_closes_the_streams_and_the_page_reconnects(cluster):
    inst = start(cluster, "--workers", "2", name="dashreload")
    old = {w["pid"] for w in inst.wait_ready(2)}
    stream = Sse(inst.port)
    try:
        hello(stream)
        done = inst.cli("reload", "--name", "dashreload")
        assert done.returncode == 0, done.stderr
        stream.read_to_end()          # the draining worker ended it: an EventSource retries
    finally:
        stream.close()
    new = {w["pid"] for w in inst.wait_ready(2)}
    assert not new & old
    again = Sse(inst.port)
    try:
        data = hello(again)
        assert {w["pid"] for w in data["status"]["workers"]} == new
        assert data["status"]["generation"] == 2
    finally:
        again.close()


def test_an_open_stream_does_not_hold_up_a_stop(cluster):
    inst = start(cluster, "--workers", "1", "--graceful-timeout", "30", name="dashstop")
    inst.wait_ready(1)
    stream = Sse(inst.port)
    try:
        hello(stream)
        inst.signal(signal.SIGTERM)
        stream.read_to_end(10)
        assert inst.wait_exit(10) == 0   # well within the graceful timeout and the 15 s long poll
    finally:
        stream.close()


def test_dashboard_without_a_port_is_a_usage_error(cluster):
    inst = cluster(*APP, "--workers", "1", "--dashboard", name="dashnone", start=False)
    inst.start(wait=False)
    assert inst.wait_exit(30) == 2
    lines = inst.stderr().strip().splitlines()
    assert len(lines) == 1 and "--http-bind" in lines[0] and "--metrics-bind" in lines[0]


def test_a_dashboard_other_hosts_can_reach_gets_a_warning(cluster):
    port = free_port()
    inst = cluster(*APP, "--workers", "1", "--http-bind", f"0.0.0.0:{port}", "--dashboard", "--log-format", "json",
                   name="dashpublic")
    assert get(port, "/dashboard")[0] == 200
    assert '"event": "insecure-dashboard"' in inst.stderr().replace('":"', '": "')
    quiet = cluster(*APP, "--workers", "1", "--http-bind", f"127.0.0.1:{free_port()}", "--dashboard",
                    "--log-format", "json", name="dashlocal")
    assert "insecure-dashboard" not in quiet.stderr()


# ---------------------------------------------------------------------------- the relay, with a fake link
class FakeStream:
    def __init__(self) -> None:
        self.data = b""
        self.closed = False
        self.on_close = None

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.data += data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.on_close(self)


class FakeLink:
    """Answers clusterd.dashboard_after from a script; records every poll."""

    def __init__(self) -> None:
        self.polls: list = []
        self.waiting: list[asyncio.Future] = []

    async def request(self, method: str, params: list) -> dict:
        assert method == "clusterd.dashboard_after"
        self.polls.append(params[0])
        if params[0] is None:
            return {"seq": 3, "hello": "event: hello\ndata: {}\n\n"}
        fut = asyncio.get_running_loop().create_future()
        self.waiting.append(fut)
        return await fut

    def answer(self, result: dict) -> None:
        self.waiting.pop(0).set_result(result)


def message(n: int) -> list:
    return [n, f"event: tick\nid: {n}\ndata: {{}}\n\n"]


def test_one_long_poll_feeds_every_stream_and_stops_with_the_last():
    async def scenario() -> None:
        link = FakeLink()
        relay = DashboardRelay(link)
        a, b = FakeStream(), FakeStream()
        relay.open(a)
        relay.open(b)
        for _ in range(5):
            await asyncio.sleep(0)
        assert link.polls == [None, None, 3] and len(link.waiting) == 1   # two hellos, one poll
        link.answer({"seq": 5, "messages": [message(4), message(5)]})
        for _ in range(5):
            await asyncio.sleep(0)
        for s in (a, b):
            assert s.data.count(b"event: hello") == 1 and b"id: 4\n" in s.data and b"id: 5\n" in s.data
        assert link.polls[-1] == 5 and len(link.waiting) == 1
        link.answer({"seq": 5, "messages": []})   # the master's keepalive
        for _ in range(5):
            await asyncio.sleep(0)
        assert a.data.endswith(KEEPALIVE) and b.data.endswith(KEEPALIVE)
        link.answer({"seq": 9, "hello": "event: hello\ndata: {\"again\": 1}\n\n"})   # fell behind
        for _ in range(5):
            await asyncio.sleep(0)
        assert a.data.count(b"event: hello") == 2 and link.polls[-1] == 9
        a.close()
        assert relay._poll is not None
        b.close()
        for _ in range(3):
            await asyncio.sleep(0)
        assert relay._poll is None and link.waiting[0].cancelled()   # no poll without a stream
        polls = len(link.polls)
        await asyncio.sleep(0.05)
        assert len(link.polls) == polls
    asyncio.run(scenario())


def test_the_master_answers_a_relay_at_once_or_after_the_keepalive():
    from clusterd.ops.dashboard import DashboardFeed
    from clusterd.ops.method_stats import MethodStats

    async def scenario() -> None:
        feed = DashboardFeed(lambda: {"name": "x", "workers": []}, MethodStats(), interval=3600)
        feed.start(asyncio.get_running_loop())
        first = await feed.relay(None)
        assert "hello" in first and first["seq"] == 0
        assert await feed.relay(0, timeout=0.01) == {"seq": 0, "messages": []}
        waiting = asyncio.ensure_future(feed.relay(0, timeout=10))
        await asyncio.sleep(0)
        feed.sample()                         # a relay counts as a reader: the tick is published
        answer = await asyncio.wait_for(waiting, 5)
        assert answer["seq"] == 1 and answer["messages"][0][1].startswith("event: tick")
        assert "hello" in await feed.relay(99)    # a sequence the feed never had: start over
        feed.stop()
        assert await feed.relay(1) == {"closed": True}
    asyncio.run(scenario())
