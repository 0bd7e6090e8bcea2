"""What the live dashboard shows: a 15-minute history of calls and latency, the lifecycle events,
and the workers, pushed to browsers as Server-Sent Events.

The feed samples the merged per-method statistics once a second whether or not anyone watches (so
a page opened now shows the last 15 minutes), and builds the workers part of a message only while
someone does. Every message is encoded once, as SSE bytes, and kept in a short ring with a sequence
number; each open page (or a worker relaying the stream) waits for the sequence after the one it
has. A reader that falls behind the ring starts over with a fresh `hello`: no per-client queue, so
slow browsers cost no memory.

Messages (the `data:` of each is one JSON object):
    hello   {"history": [[t, calls/s, errors/s, p50_ms, p99_ms], ...], "events": [...], "status": {...}}
    tick    {"point": [t, calls/s, errors/s, p50_ms, p99_ms], "status": {...}}
    event   one lifecycle event: {"seq", "at", "kind", "msg", "slot", "pid", "reason", ...}
where status is {"name", "state", "generation", "master": {...}, "workers": [...], "methods": {...}}.

A worker serving the page on the HTTP port (--http-bind) relays the same messages: one long poll of
`relay(seq)` (the internal method clusterd.dashboard_after) at a time per worker, shared by all of
its open streams, answered as soon as there are messages after seq, or empty after a keepalive time.

The charts use uPlot 1.6.32 (MIT, github.com/leeoniya/uPlot), vendored in static/ from `npm pack
uplot` (tarball sha256 4b8a8191...b5133d): 51 KB, no dependencies, time axes, log scales and live
legends that a hand-drawn canvas would have to grow. Upgrade by replacing the two files.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from importlib import resources

import orjson

from .method_stats import MethodStats, Snapshot, Window, quantile

# Lifecycle events (log.event kinds) that belong on the timeline.
TIMELINE_KINDS = frozenset({
    "worker-exit", "worker-ready", "worker-recycle", "worker-hung", "worker-kill", "worker-backoff",
    "call-timeout", "reload-start", "reload-done", "reload-failed", "scale", "version-changed",
    "master-ready", "master-stop", "agent-join", "agent-lost", "boot-failed",
})
EVENT_FIELDS = ("slot", "pid", "generation", "reason", "code", "signal")
# The page's headers (on both ports): its own files only, no framing, nothing cached.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
}
STATIC_HEADERS = {"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"}
# With nothing to send for this long, a stream gets a keepalive comment (which also finds peers that left).
KEEPALIVE_S = 15.0
# A relaying worker counts as a reader for this long after it last asked (it asks again at once).
RELAY_GRACE_S = 5.0
STATIC_FILES = {"uPlot.iife.min.js": "text/javascript; charset=utf-8",
                "uPlot.min.css": "text/css; charset=utf-8",
                "dashboard.js": "text/javascript; charset=utf-8",
                "dashboard.css": "text/css; charset=utf-8"}


class EventLog(logging.Handler):
    """Keeps the recent lifecycle events logged through `clusterd.ops.log.event`, for the timeline.

    Attach it to the "clusterd" logger after `log.setup()` (which replaces the handlers). Records may
    come from any thread; listeners are called on the thread that logged.
    """

    def __init__(self, size: int = 200) -> None:
        super().__init__(logging.INFO)
        self.events: deque[dict] = deque(maxlen=size)
        self.listeners: list[Callable[[dict], None]] = []
        self._seq = 0

    def emit(self, record: logging.LogRecord) -> None:
        kind = getattr(record, "event", None)
        if kind not in TIMELINE_KINDS:
            return
        try:
            self._seq += 1
            entry = {"seq": self._seq, "at": round(record.created, 3), "kind": kind, "msg": record.getMessage()}
            for key in EVENT_FIELDS:
                value = getattr(record, key, None)
                if value is not None:
                    entry[key] = value
            self.events.append(entry)
            for listener in list(self.listeners):
                listener(entry)
        except Exception:  # a dashboard must never break logging
            self.handleError(record)


class DashboardFeed:
    """Samples the statistics every `interval` seconds and publishes SSE messages.

    status: returns the status document (called only while a page is open); stats: the master's
    merged MethodStats; window: its last-minute Window (for the per-method rows).
    """

    def __init__(self, status: Callable[[], dict], stats: MethodStats, window: Window | None = None,
                 events: EventLog | None = None, interval: float = 1.0, history_s: float = 900.0,
                 ring: int = 64, clock: Callable[[], float] = time.time) -> None:
        self.status = status
        self.stats = stats
        self.window = window
        self.events = events or EventLog()
        self.interval = interval
        self.clock = clock
        self.history: deque[list] = deque(maxlen=max(1, int(history_s / interval)))
        self.readers = 0
        self.seq = 0
        self._ring: deque[tuple[int, bytes]] = deque(maxlen=ring)
        self._wake: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._last: tuple[float, Snapshot] | None = None
        self._relayed_until = 0.0   # loop time: a worker relays the stream to pages until then
        self.closed = False

    # ------------------------------------------------------------------ sampling
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._last = (self.clock(), self.stats.snapshot())
        self.events.listeners.append(self._on_event)
        self._handle = loop.call_later(self.interval, self._tick)

    def stop(self) -> None:
        self.closed = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._on_event in self.events.listeners:
            self.events.listeners.remove(self._on_event)
        self._publish_wake()

    def _tick(self) -> None:
        self._handle = self._loop.call_later(self.interval, self._tick) if self._loop else None
        try:
            self.sample()
        except Exception:
            logging.getLogger("clusterd").exception("dashboard sample failed")

    def sample(self) -> list:
        """Take one point of the history; publish a tick when someone watches."""
        now, snap = self.clock(), self.stats.snapshot()
        if self._last is None:
            self._last = (now, snap)
            return []
        then, before = self._last
        self._last = (now, snap)
        calls, errors, buckets = snap.minus(before).overall()
        dt = max(now - then, 1e-6)
        p50, p99 = quantile(buckets, 0.5), quantile(buckets, 0.99)
        point = [round(now, 3), round(calls / dt, 3), round(errors / dt, 3),
                 None if p50 is None else round(p50 * 1000, 3), None if p99 is None else round(p99 * 1000, 3)]
        self.history.append(point)
        if self.readers or (self._loop is not None and self._loop.time() < self._relayed_until):
            self._publish("tick", {"point": point, "status": self.status_part()})
        return point

    def status_part(self) -> dict:
        doc = self.status()
        return {"name": doc.get("name"), "state": doc.get("state"), "generation": doc.get("generation"),
                "master": doc.get("master"), "workers": doc.get("workers") or [],
                "queued": doc.get("queued"),
                "methods": self.window.methods() if self.window is not None else doc.get("methods") or {}}

    # ------------------------------------------------------------------ publishing
    def _on_event(self, entry: dict) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._publish, "event", entry)

    def _publish(self, kind: str, data: dict) -> None:
        self.seq += 1
        self._ring.append((self.seq, sse(kind, data, self.seq)))
        self._publish_wake()

    def _publish_wake(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        self._wake = None

    def hello(self) -> tuple[int, bytes]:
        """The first message of a stream, and the sequence to read after."""
        data = {"history": list(self.history), "events": list(self.events.events), "status": self.status_part()}
        return self.seq, sse("hello", data)

    async def after(self, seq: int, timeout: float | None = None) -> list[tuple[int, bytes]] | None:
        """The messages after `seq`, waiting for one if there is none yet ([] on timeout). None when
        `seq` fell out of the ring: the reader must start over with hello()."""
        if seq < self.seq:
            if not self._ring or self._ring[0][0] > seq + 1:
                return None
            return [m for m in self._ring if m[0] > seq]
        if self._loop is None:
            return []
        if self._wake is None:
            self._wake = self._loop.create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._wake), timeout)
        except TimeoutError:
            return []
        return [m for m in self._ring if m[0] > seq]


    async def relay(self, seq: int | None, timeout: float = KEEPALIVE_S) -> dict:
        """What a worker relays to its open pages: {"seq", "hello": text} to start (seq None) or
        start over (it fell behind), else {"seq", "messages": [[seq, text], ...]}, empty after
        `timeout` (the worker sends its pages a keepalive), and {"closed": true} once stopped."""
        if self.closed:
            return {"closed": True}
        if self._loop is not None:
            self._relayed_until = max(self._relayed_until, self._loop.time() + timeout + RELAY_GRACE_S)
        if seq is None or seq > self.seq:
            return self._relay_hello()
        messages = await self.after(seq, timeout)
        if self.closed:
            return {"closed": True}
        if messages is None:
            return self._relay_hello()
        return {"seq": messages[-1][0] if messages else seq,
                "messages": [[n, data.decode()] for n, data in messages]}

    def _relay_hello(self) -> dict:
        seq, data = self.hello()
        return {"seq": seq, "hello": data.decode()}


def sse(kind: str, data: dict, seq: int | None = None) -> bytes:
    head = f"event: {kind}\n" + (f"id: {seq}\n" if seq is not None else "")
    return head.encode() + b"data: " + orjson.dumps(data) + b"\n\n"


@functools.cache
def static_file(name: str) -> tuple[bytes, str] | None:
    """A file of the page (package data) and its content type, or None when it is not one."""
    content_type = STATIC_FILES.get(name)
    if content_type is None:
        return None
    return resources.files(__package__).joinpath("static", name).read_bytes(), content_type


@functools.cache
def page() -> bytes:
    return resources.files(__package__).joinpath("static", "dashboard.html").read_bytes()


__all__ = ["DashboardFeed", "EventLog", "KEEPALIVE_S", "PAGE_HEADERS", "STATIC_FILES", "STATIC_HEADERS",
           "TIMELINE_KINDS", "page", "static_file", "sse"]
