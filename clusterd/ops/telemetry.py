"""The master's one handle on metrics, per-method statistics and the dashboard.

The router records calls and counts refusals through it, the heartbeat handler merges workers'
deltas into it, the status document takes its fields from it, and it runs the `--metrics-bind`
server. Everything else in ops/ stays behind it, so the master's side of the seam is a few calls.

Wiring (master):
- create after log.setup(): Telemetry(router.status_document, clusterd.__version__, config.metrics_bind,
  config.dashboard); `await start()` in serve() (OSError: cannot bind, exit 2), `await close()` at stop.
- status_document(): master.update(master_fields()) plus master.cpu_seconds (psutil cpu_times),
  "methods": methods(), "counters": counters_document(), and workers[].cpu_seconds, calls_inflight,
  master.clients (see metrics.INPUT_FIELDS).
- on each answer: record(method, door, OK, seconds) for a result; record_error(method, door,
  response_bytes, seconds) for a worker's b"e" answer; record_code(...) for the master's own errors.
  Calls need `method`, `door` and a start time (loop.time()); a batch is one call named "(batch)".
  door: "zmq" for a client socket, "worker" for a worker's b"q" request, "master" for the master's
  own WorkersProxy calls. A worker forwarding an HTTP/WS call to the master marks it, and the master
  does not record it (the worker already did, door "http"/"ws").
- count("refused", code) where the master answers -32001/-32004/-32005 itself; count("rejected",
  "too-large"|"malformed"); count("restarts", reason) where a slot is restarted; count("reloads",
  "ok"|"failed") when a reload ends.
- heartbeat handler: merge(beat.get("stats")).
Wiring (worker): one MethodStats; its HTTP/WS door records each call; the heartbeat thread holds a
DeltaTracker and adds "stats": tracker.delta() to the beat (when not None), tracker.commit() after
a successful send.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from .dashboard import DashboardFeed, EventLog
from .meters import LoopLagMeter, fd_usage
from .method_stats import OK, UNKNOWN, MethodStats, Window
from .metrics_server import OpsServer, parse_bind

if TYPE_CHECKING:
    from .metrics import Exporter

COUNTER_KINDS = ("refused", "rejected", "restarts", "reloads")
COUNTER_LABELS = {"refused": ("-32001", "-32004", "-32005"), "rejected": ("too-large", "malformed"),
                  "restarts": ("crashed", "hung", "max-memory", "max-requests", "reload"),
                  "reloads": ("ok", "failed")}
METHOD_NOT_FOUND = "-32601"


def error_outcome(response: bytes) -> str:
    """The outcome label of an error response: its code as a string ("-32000"); the answer of a
    call that failed in a way the bytes do not tell is "error"."""
    try:
        code = orjson.loads(response)["error"]["code"]
    except (ValueError, TypeError, KeyError):
        return "error"
    return str(code) if isinstance(code, int) else "error"


class Telemetry:
    """Statistics, counters, the loop-lag meter, the event timeline and the optional server.

    status: the master's status_document (called at scrape time and by the dashboard, on the loop).
    """

    def __init__(self, status: Callable[[], dict], clusterd_version: str, metrics_bind: str | None = None,
                 dashboard: bool = False) -> None:
        self.stats = MethodStats()
        self.window = Window(self.stats)
        self.events = EventLog()
        self.lag = LoopLagMeter(interval=1.0, on_tick=self.window.tick)
        # every known label starts at 0, so that rate() and a dashboard see the first one happen
        self.counters: dict[str, dict[str, int]] = {kind: dict.fromkeys(labels, 0)
                                                     for kind, labels in COUNTER_LABELS.items()}
        self._status = status
        self._exporter: Exporter | None = None
        self.exporter_version = clusterd_version
        self.feed = DashboardFeed(status, self.stats, self.window, self.events) if dashboard else None
        self.bind = parse_bind(metrics_bind) if metrics_bind else None   # ValueError: a usage error
        self.server: OpsServer | None = None
        self.address: tuple[str, int] | None = None
        self.record = self.stats.record   # the hot path: record(method, door, OK, seconds)

    @property
    def exporter(self) -> Exporter:
        """The Prometheus exposition, made at the first scrape: prometheus_client costs the master
        about 5 MB of memory, which an instance nobody scrapes does not pay."""
        if self._exporter is None:
            from .metrics import Exporter
            self._exporter = Exporter(self._status, self.stats, self.exporter_version)
        return self._exporter

    async def start(self) -> None:
        """Start the meters (and the server when bound). OSError when the address cannot be bound."""
        loop = asyncio.get_running_loop()
        self.lag.start(loop)
        logging.getLogger("clusterd").addHandler(self.events)
        if self.feed is not None:
            self.feed.start(loop)
        if self.bind is not None:
            self.server = OpsServer(self.exporter, self.feed)
            self.address = await self.server.start(*self.bind)

    async def close(self) -> None:
        self.lag.stop()
        logging.getLogger("clusterd").removeHandler(self.events)
        if self.feed is not None:
            self.feed.stop()
        if self.server is not None:
            await self.server.close()

    def record_error(self, method: str, door: str, response: bytes, seconds: float) -> None:
        """A call answered with an error response (bytes as sent). Names of methods that do not exist
        are folded into one, so a flood of made-up names cannot grow memory or label sets."""
        outcome = error_outcome(response)
        self.stats.record(UNKNOWN if outcome == METHOD_NOT_FOUND else method, door, outcome, seconds)

    def record_code(self, method: str, door: str | None, code: int | None, seconds: float) -> None:
        """A call the master answered itself: with an error code of its own (-32001, -32003, ...), or
        None for a result. Door None: a call counted elsewhere (a worker's HTTP door), not here."""
        if door is None:
            return
        outcome = OK if code is None else str(code)
        self.stats.record(UNKNOWN if outcome == METHOD_NOT_FOUND else method, door, outcome, seconds)

    def refused(self, method: str, door: str | None, code: int) -> None:
        """A call answered -32004/-32005 at once, without reaching a worker."""
        self.record_code(method, door, code, 0.0)
        self.count("refused", code)

    def count(self, kind: str, label: Any, n: int = 1) -> None:
        """One more of a counter family: count("restarts", "crashed"), count("reloads", "ok"),
        count("refused", -32001), count("rejected", "too-large")."""
        family = self.counters[kind]
        key = str(label)
        family[key] = family.get(key, 0) + n

    def merge(self, delta: Any) -> None:
        """A worker's delta from its heartbeat (see method_stats); a malformed one is ignored."""
        if delta is not None:
            self.stats.merge(delta)

    def master_fields(self) -> dict:
        """Fields for the status document's `master` object."""
        open_fds, max_fds = fd_usage()
        return {"loop_lag_s": self.lag.take(), "open_fds": open_fds, "max_fds": max_fds}

    def methods(self) -> dict:
        """The status document's `methods` section (last minute)."""
        return self.window.methods()

    def counters_document(self) -> dict:
        return {kind: dict(values) for kind, values in self.counters.items()}


__all__ = ["Telemetry", "error_outcome", "OK", "UNKNOWN"]
