"""Per-method call statistics: counters and latency histograms that add up across processes.

Every process that answers calls (the master for its ZeroMQ doors, a worker for its HTTP and
WebSocket doors) records into one `MethodStats`. It only ever grows (cumulative counters, fixed
log-scale buckets), so:
- two of them merge by addition (a worker's `Delta` is folded into the master's with `merge`);
- the last minute is the difference between now and a snapshot taken a minute ago (`Window`), so
  the hot path never rotates or expires anything;
- the Prometheus histogram is a coarsening of the same buckets (`PROM_BUCKETS`).

`record` is a handful of dict and list operations on the event loop's thread; no locks. Another
thread (the worker's heartbeat) may read it through `DeltaTracker`, which only copies.

Wire format of a delta (orjson-friendly, sparse; what a worker sends with a heartbeat):

    {"v": 1,
     "c": [[method, door, outcome, n], ...],             # calls since the last delta
     "h": {method: [sum_seconds, i, n, i, n, ...]}}     # bucket index i of BOUNDS gained n calls

`outcome` is "ok" or the JSON-RPC error code as a string ("-32601"). A delta of another bucket
layout ("v") is ignored rather than misread.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from typing import Any

LAYOUT_VERSION = 1
DOORS = ("zmq", "http", "ws", "worker", "master")
OK = "ok"
OTHER = "(other)"              # methods past the cap share this name: bounded memory and label sets
UNKNOWN = "(unknown)"          # what callers should record for a method that does not exist (-32601)
MAX_METHODS = 256


def _bounds() -> tuple[float, ...]:
    """Upper bounds in seconds from 50 µs to 60 s, 1.2 to 4/3 apart (so an estimated quantile is
    within a third of the true one), on round numbers so that the 1-2.5-5 Prometheus buckets are
    exactly among them."""
    mantissas = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
    out = []
    for exponent in range(-5, 2):
        for m in mantissas:
            value = float(f"{m}e{exponent}")
            if 5e-5 <= value <= 60.0:
                out.append(value)
    return tuple(out)


BOUNDS: tuple[float, ...] = _bounds()          # bucket i counts durations <= BOUNDS[i]; one more: > 60 s
NBUCKETS = len(BOUNDS) + 1
PROM_BUCKETS: tuple[float, ...] = tuple(float(f"{m}e{e}") for e in range(-5, 2) for m in (1.0, 2.5, 5.0)
                                        if 5e-5 <= float(f"{m}e{e}") <= 60.0) + (60.0,)
_PROM_INDEX = tuple(BOUNDS.index(b) for b in PROM_BUCKETS)


class MethodStats:
    """Cumulative calls by (method, door, outcome) and a latency histogram per method."""

    __slots__ = ("calls", "hist", "sums", "max_methods")

    def __init__(self, max_methods: int = MAX_METHODS) -> None:
        self.calls: dict[tuple[str, str, str], int] = {}
        self.hist: dict[str, list[int]] = {}       # method -> NBUCKETS counts
        self.sums: dict[str, float] = {}           # method -> total seconds
        self.max_methods = max_methods

    def record(self, method: str, door: str, outcome: str, duration_s: float) -> None:
        """One answered call. `outcome` is OK or the error code as a string."""
        counts = self.hist.get(method)
        if counts is None:
            method, counts = self._admit(method)
        counts[bisect_left(BOUNDS, duration_s)] += 1
        self.sums[method] += duration_s
        key = (method, door, outcome)
        calls = self.calls
        calls[key] = calls.get(key, 0) + 1

    def prepared(self, method: str, door: str, outcome: str) -> "PreparedRecord":
        """``record(method, door, outcome, ...)`` made once for a hot path that records the same
        call over and over: the lookups and the admission are done here, not per call."""
        counts = self.hist.get(method)
        if counts is None:
            method, counts = self._admit(method)
        return PreparedRecord(self, (method, door, outcome), counts)

    def _admit(self, method: str) -> tuple[str, list[int]]:
        if len(self.hist) >= self.max_methods - 1 and method != OTHER:
            method = OTHER
        counts = self.hist.get(method)
        if counts is None:
            counts = self.hist[method] = [0] * NBUCKETS
            self.sums[method] = 0.0
        return method, counts

    def merge(self, delta: Any) -> None:
        """Add a delta (the wire format above). A malformed one is skipped, never raised on: a
        heartbeat must not stop the master's reader."""
        if not isinstance(delta, dict) or delta.get("v") != LAYOUT_VERSION:
            return
        hist = delta.get("h")
        if isinstance(hist, dict):
            for method, flat in hist.items():
                if not isinstance(method, str) or not isinstance(flat, list) or len(flat) % 2 != 1:
                    continue
                try:
                    total = float(flat[0])
                    pairs = [(int(flat[k]), int(flat[k + 1])) for k in range(1, len(flat), 2)]
                except (TypeError, ValueError):
                    continue
                if not math.isfinite(total) or any(not 0 <= i < NBUCKETS or n < 0 for i, n in pairs):
                    continue
                name, counts = (method, self.hist[method]) if method in self.hist else self._admit(method)
                for i, n in pairs:
                    counts[i] += n
                self.sums[name] += total
        calls = delta.get("c")
        if isinstance(calls, list):
            for row in calls:
                if (isinstance(row, list) and len(row) == 4 and all(isinstance(x, str) for x in row[:3])
                        and isinstance(row[3], int) and row[3] > 0):
                    method = row[0] if row[0] in self.hist else self._admit(row[0])[0]
                    key = (method, row[1], row[2])
                    self.calls[key] = self.calls.get(key, 0) + row[3]

    def snapshot(self) -> Snapshot:
        """A copy that later records do not change. Safe from another thread: each copy below is
        one C-level operation on a dict or list whose keys are plain strings (atomic under the
        GIL, locked per object on free-threaded builds); values may lag each other by a call."""
        hist = {m: c[:] for m, c in list(self.hist.items())}
        return Snapshot(dict(self.calls), hist, dict(self.sums))


class PreparedRecord:
    """One (method, door, outcome) of a MethodStats, ready to count: a call is a bucket increment, a
    sum and a counter update, with no key built (the bucket list is never replaced, so holding it
    is safe; readers on other threads only copy)."""

    __slots__ = ("calls", "key", "counts", "sums", "method")

    def __init__(self, stats: MethodStats, key: tuple[str, str, str], counts: list[int]) -> None:
        self.calls = stats.calls
        self.key = key
        self.counts = counts
        self.sums = stats.sums
        self.method = key[0]

    def __call__(self, duration_s: float) -> None:
        self.counts[bisect_left(BOUNDS, duration_s)] += 1
        self.sums[self.method] += duration_s
        calls = self.calls
        key = self.key
        calls[key] = calls.get(key, 0) + 1


class Snapshot:
    """Cumulative statistics at one moment; two of them subtract to what happened in between."""

    __slots__ = ("calls", "hist", "sums")

    def __init__(self, calls: dict[tuple[str, str, str], int], hist: dict[str, list[int]],
                 sums: dict[str, float]) -> None:
        self.calls = calls
        self.hist = hist
        self.sums = sums

    @classmethod
    def empty(cls) -> Snapshot:
        return cls({}, {}, {})

    def minus(self, older: Snapshot) -> Snapshot:
        calls = {k: n - older.calls.get(k, 0) for k, n in self.calls.items() if n != older.calls.get(k, 0)}
        hist, sums = {}, {}
        for method, counts in self.hist.items():
            before = older.hist.get(method)
            diff = counts[:] if before is None else [a - b for a, b in zip(counts, before)]
            if any(diff):
                hist[method] = diff
                sums[method] = self.sums.get(method, 0.0) - older.sums.get(method, 0.0)
        return Snapshot(calls, hist, sums)

    def to_delta(self) -> dict:
        """This snapshot (usually a difference) in the wire format, zero buckets left out."""
        hist = {}
        for method, counts in self.hist.items():
            flat: list = [round(self.sums.get(method, 0.0), 9)]
            for i, n in enumerate(counts):
                if n:
                    flat += (i, n)
            hist[method] = flat
        return {"v": LAYOUT_VERSION, "c": [[m, d, o, n] for (m, d, o), n in self.calls.items() if n > 0],
                "h": hist}

    def methods(self) -> dict[str, dict]:
        """The status document's `methods` section for this span:
        {method: {"calls": n, "errors": n, "p50_ms": x, "p99_ms": y}}, methods without calls left out."""
        totals: dict[str, list[int]] = {}
        for (method, _door, outcome), n in self.calls.items():
            row = totals.setdefault(method, [0, 0])
            row[0] += n
            if outcome != OK:
                row[1] += n
        out = {}
        for method in sorted(totals):
            calls, errors = totals[method]
            if calls <= 0:
                continue
            counts = self.hist.get(method)
            out[method] = {"calls": calls, "errors": errors,
                           "p50_ms": _ms(quantile(counts, 0.5)) if counts else None,
                           "p99_ms": _ms(quantile(counts, 0.99)) if counts else None}
        return out

    def overall(self) -> tuple[int, int, list[int]]:
        """Calls, errors and the latency buckets of every method together."""
        calls = errors = 0
        for (_m, _d, outcome), n in self.calls.items():
            calls += n
            if outcome != OK:
                errors += n
        merged = [0] * NBUCKETS
        for counts in self.hist.values():
            for i, n in enumerate(counts):
                if n:
                    merged[i] += n
        return calls, errors, merged


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def quantile(counts: list[int], q: float) -> float | None:
    """Estimate the q-quantile in seconds from bucket counts, interpolating geometrically inside the
    bucket it falls in (latencies spread about evenly on a log scale). None without observations."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n <= 0:
            continue
        if seen + n >= rank:
            if i >= len(BOUNDS):
                return BOUNDS[-1]          # beyond the last bound: all we know is "over 60 s"
            upper = BOUNDS[i]
            lower = BOUNDS[i - 1] if i > 0 else upper / 1.25
            fraction = max(0.0, min(1.0, (rank - seen) / n))
            return lower * math.exp(math.log(upper / lower) * fraction)
        seen += n
    return BOUNDS[-1]


def cumulative_at_prom_buckets(counts: list[int]) -> list[int]:
    """Cumulative counts at each of PROM_BUCKETS, then the total (the +Inf bucket)."""
    out, running, start = [], 0, 0
    for index in _PROM_INDEX:
        running += sum(counts[start:index + 1])
        start = index + 1
        out.append(running)
    out.append(running + sum(counts[start:]))
    return out


class DeltaTracker:
    """What a worker sends with each heartbeat: the calls since the previous send.

    Lives on the heartbeat thread: it snapshots the worker's MethodStats and subtracts what it
    sent last. `commit()` after a successful send, so a beat that could not be sent loses nothing.
    """

    def __init__(self, stats: MethodStats) -> None:
        self.stats = stats
        self._sent = Snapshot.empty()
        self._pending: Snapshot | None = None

    def delta(self) -> dict | None:
        """The delta to send, or None when nothing happened (keeps idle heartbeats small)."""
        now = self.stats.snapshot()
        diff = now.minus(self._sent)
        self._pending = now
        return diff.to_delta() if diff.calls or diff.hist else None

    def commit(self) -> None:
        if self._pending is not None:
            self._sent, self._pending = self._pending, None


class Window:
    """Statistics over the last `span` seconds, from snapshots taken every `step` seconds.

    `tick()` is called periodically (the master's status tick); `recent()` is the live state minus
    the newest snapshot at least `span` old, so it covers between span and span + step seconds.
    """

    def __init__(self, stats: MethodStats, span: float = 60.0, step: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stats = stats
        self.span = span
        self.step = step
        self.clock = clock
        self._ring: deque[tuple[float, Snapshot]] = deque()
        self._ring.append((clock(), Snapshot.empty()))

    def tick(self) -> None:
        now = self.clock()
        if now - self._ring[-1][0] < self.step:
            return
        self._ring.append((now, self.stats.snapshot()))
        # keep one snapshot at least `span` old: the base of recent()
        while len(self._ring) > 1 and now - self._ring[1][0] >= self.span:
            self._ring.popleft()

    def recent(self) -> Snapshot:
        now = self.clock()
        base = self._ring[0][1]
        for taken, snap in self._ring:
            if now - taken >= self.span:
                base = snap
            else:
                break
        return self.stats.snapshot().minus(base)

    def methods(self) -> dict[str, dict]:
        """The status document's `methods` section: per method over the last minute."""
        return self.recent().methods()


__all__ = ["MethodStats", "PreparedRecord", "Snapshot", "DeltaTracker", "Window", "quantile",
           "cumulative_at_prom_buckets", "BOUNDS",
           "PROM_BUCKETS", "DOORS", "OK", "OTHER", "UNKNOWN", "LAYOUT_VERSION"]
