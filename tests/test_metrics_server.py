"""The --metrics-bind server served for real on a port: /metrics, the dashboard page and its SSE stream."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
import urllib.error
import urllib.request

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clusterd.ops import log
from clusterd.ops.dashboard import DashboardFeed, EventLog
from clusterd.ops.method_stats import OK, MethodStats, Window
from clusterd.ops.metrics import Exporter
from clusterd.ops.metrics_server import OpsServer, parse_bind

DOC = {"name": "demo", "state": "running", "generation": 1, "queued": 0,
       "master": {"pid": 10, "started_at": 1764000000.0, "uptime_s": 3.0, "version": "2.0", "rss_bytes": 1000},
       "workers": [{"slot": 0, "pid": 4321, "state": "ready", "generation": 1, "uptime_s": 2.0, "restarts": 0,
                    "rss_bytes": 2000, "cpu_percent": 1.0, "inflight": 0, "served": 7, "failed": 0,
                    "last_exit": None}]}


class Served:
    """An OpsServer on its own event loop in a thread, as the master runs it on its loop."""

    def __init__(self, dashboard: bool = True, **server_options) -> None:
        self.stats = MethodStats()
        self.events = EventLog()
        self.loop = asyncio.new_event_loop()
        self.window = Window(self.stats)
        self.feed = DashboardFeed(lambda: DOC, self.stats, self.window, self.events, interval=0.05) \
            if dashboard else None
        self.server = OpsServer(Exporter(lambda: DOC, self.stats, "0.1.0"), self.feed, **server_options)
        self.port = 0
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self._start)

    async def _start(self) -> None:
        if self.feed is not None:
            self.feed.start(asyncio.get_running_loop())
        _host, self.port = await self.server.start("127.0.0.1", 0)

    def call(self, coro_fn, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro_fn(), self.loop).result(timeout)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        async def stop():
            if self.feed is not None:
                self.feed.stop()
            await self.server.close()
        self.call(stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def served():
    s = Served()
    yield s
    s.close()


def get(url: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def read_until(sock: socket.socket, done, deadline_s: float = 10.0) -> bytes:
    data = b""
    deadline = time.monotonic() + deadline_s
    while not done(data):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; got {data[-2000:]!r}"
        sock.settimeout(left)
        chunk = sock.recv(65536)
        assert chunk, f"connection closed; got {data[-2000:]!r}"
        data += chunk
    return data


def sse_messages(data: bytes) -> list[tuple[str, dict]]:
    out = []
    for block in data.split(b"\n\n"):
        kind = payload = None
        for line in block.split(b"\n"):
            if line.startswith(b"event: "):
                kind = line[7:].decode()
            elif line.startswith(b"data: "):
                payload = orjson.loads(line[6:])
        if kind and payload is not None:
            out.append((kind, payload))
    return out


def test_metrics_are_served(served):
    served.stats.record("fib", "zmq", OK, 0.002)
    served.stats.record("fib", "zmq", "-32000", 0.002)
    status, headers, body = get(served.url("/metrics"))
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")   # what every Prometheus reads
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(body.decode()) for s in f.samples}
    assert samples[("clusterd_calls_total", (("door", "zmq"), ("method", "fib"), ("outcome", "ok")))] == 1
    assert samples[("clusterd_calls_total", (("door", "zmq"), ("method", "fib"), ("outcome", "-32000")))] == 1
    assert samples[("clusterd_worker_calls_served_total", (("slot", "0"),))] == 7


def test_dashboard_page_and_its_files(served):
    status, headers, body = get(served.url("/dashboard"))
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'<table id="workers">' in body and b"dashboard/dashboard.js" in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert b"http://" not in body and b"https://" not in body          # nothing from a CDN
    for name, kind in (("uPlot.iife.min.js", "text/javascript"), ("uPlot.min.css", "text/css"),
                       ("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        status, headers, body = get(served.url("/dashboard/" + name))
        assert status == 200 and headers["Content-Type"].startswith(kind) and body, name


@pytest.mark.parametrize("path", ["/", "/dashboard/../pyproject.toml", "/dashboard/dashboard.html/x",
                                  "/dashboard/__init__.py", "/status"])
def test_other_paths_are_not_found(served, path):
    assert get(served.url(path))[0] == 404


def test_only_get(served):
    req = urllib.request.Request(served.url("/metrics"), data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 405


def test_huge_request_head_is_refused_and_the_server_goes_on(served):
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Junk: " + b"a" * 40000 + b"\r\n\r\n")
        reply = read_until(sock, lambda d: b"\r\n\r\n" in d)
    assert reply.startswith(b"HTTP/1.1 431")
    assert get(served.url("/metrics"))[0] == 200


def test_without_dashboard_only_metrics():
    s = Served(dashboard=False)
    try:
        assert get(s.url("/metrics"))[0] == 200
        assert get(s.url("/dashboard"))[0] == 404
        assert get(s.url("/dashboard/events"))[0] == 404
    finally:
        s.close()


def test_event_stream_sends_hello_ticks_and_lifecycle_events(served):
    logger = logging.getLogger("clusterd")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(served.events)
    try:
        served.stats.record("fib", "zmq", OK, 0.003)
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
            sock.sendall(b"GET /dashboard/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
            data = read_until(sock, lambda d: b"event: tick" in d)
            head = data.split(b"\r\n\r\n", 1)[0]
            assert head.startswith(b"HTTP/1.1 200") and b"Content-Type: text/event-stream" in head
            messages = sse_messages(data.split(b"\r\n\r\n", 1)[1])
            kind, hello = messages[0]
            assert kind == "hello"
            assert hello["status"]["workers"][0]["pid"] == 4321
            ticks = [m for k, m in messages if k == "tick"]
            assert ticks and len(ticks[0]["point"]) == 5
            assert ticks[0]["status"]["methods"]["fib"]["calls"] == 1

            # an event logged on another thread reaches the open stream
            log.event("worker-exit", "worker 0 (pid 4321) exited (signal 9, crashed)", level=logging.WARNING,
                      slot=0, pid=4321, reason="crashed", signal=9)
            data = read_until(sock, lambda d: b"event: event" in d)
            event = next(m for k, m in sse_messages(data) if k == "event")
            assert event["kind"] == "worker-exit" and event["pid"] == 4321 and event["reason"] == "crashed"
        # a page opened later gets it in its hello
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
            sock.sendall(b"GET /dashboard/events HTTP/1.1\r\n\r\n")
            data = read_until(sock, lambda d: b"event: hello" in d and d.count(b"\n\n") >= 3)
            hello = sse_messages(data.split(b"\r\n\r\n", 1)[1])[0][1]
            assert [e["kind"] for e in hello["events"]] == ["worker-exit"]
            assert hello["history"], "the history keeps points while nobody watches"
    finally:
        logger.removeHandler(served.events)
        logger.setLevel(level)


def test_streams_are_bounded():
    s = Served(max_streams=1)
    try:
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as first:
            first.sendall(b"GET /dashboard/events HTTP/1.1\r\n\r\n")
            read_until(first, lambda d: b"event: hello" in d)
            status, headers, _ = get(s.url("/dashboard/events"))
            assert status == 503 and headers["Retry-After"]
        # the slot frees when the first page goes away
        def freed() -> bool:
            return s.server._streams == 0
        deadline = time.monotonic() + 20
        while not freed():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        s.close()


def test_a_reader_behind_the_ring_starts_over():
    async def main():
        feed = DashboardFeed(lambda: DOC, MethodStats(), ring=4, interval=3600)
        feed.start(asyncio.get_running_loop())
        feed.readers = 1
        seq, _hello = feed.hello()
        for _ in range(10):
            feed.sample()
        assert await feed.after(seq) is None
        latest, _ = feed.hello()
        assert await feed.after(latest, timeout=0.01) == []
        feed.stop()

    asyncio.run(main())


@pytest.mark.parametrize("value,expected", [("127.0.0.1:9100", ("127.0.0.1", 9100)), (":9100", ("127.0.0.1", 9100)),
                                            ("[::1]:9100", ("::1", 9100)), ("0.0.0.0:0", ("0.0.0.0", 0))])
def test_parse_bind(value, expected):
    assert parse_bind(value) == expected


@pytest.mark.parametrize("value", ["9100", "host:", "host:http", "host:70000"])
def test_parse_bind_rejects(value):
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_bind(value)
