"""The master's own meters, read by the status document and the metrics: its open file descriptors and
how late its event loop runs. Kept apart from the Prometheus exposition (metrics.py), which the master
loads only when something asks for metrics."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
from collections.abc import Callable


def fd_usage() -> tuple[int | None, int | None]:
    """Open file descriptors of this process and its soft limit (None where unknown)."""
    try:
        used: int | None = len(os.listdir("/proc/self/fd"))
    except OSError:
        used = None
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return used, (None if soft == resource.RLIM_INFINITY else soft)


class LoopLagMeter:
    """Measures how late a timer on the event loop fires: the loop's health as a client feels it
    (a blocking handler or a flood shows up here before anywhere else)."""

    def __init__(self, interval: float = 1.0, on_tick: Callable[[], None] | None = None) -> None:
        self.interval = interval
        self.on_tick = on_tick
        self.latest = 0.0
        self.worst = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = loop.time() + self.interval
        self._handle = loop.call_at(self._due, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        self.latest = max(0.0, now - self._due)
        self.worst = max(self.worst, self.latest)
        self._due = now + self.interval
        self._handle = loop.call_at(self._due, self._fire, loop)
        if self.on_tick is not None:
            try:
                self.on_tick()
            except Exception:  # a periodic task must outlive a bad tick
                logging.getLogger("clusterd").exception("periodic tick failed")

    def take(self) -> float:
        """The latest lag, rounded for the status document."""
        return round(self.latest, 6)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


__all__ = ["LoopLagMeter", "fd_usage"]
