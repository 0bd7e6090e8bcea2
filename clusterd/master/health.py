"""The master's health rules for a worker, checked on every heartbeat tick.

A worker is hung when the master has heard no beat for the heartbeat timeout (it is stopped, or
stuck in C code holding the GIL), or when its heartbeat thread reports the main thread stalled for
that long (no progress at all: a deadlock, a call that never returns). A worker busy in a long
pure-Python call keeps beating and is not stalled: it is left alone (a call's own deadline, if any,
is the router's business).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from ..ops import log
from ..settings import Config
from .pool import Worker
from .states import ExitReason, WorkerState

BOOT_SILENCE_S = 10.0
"""How long a new worker may stay silent before its first beat: starting an interpreter and importing
the app takes longer than a short heartbeat timeout on a loaded machine, and is not a hang."""


def is_hung(worker: Worker, now: float, timeout: float) -> bool:
    """Silent, or stalled, for longer than the heartbeat timeout (now: time.monotonic()); a worker
    that has not beaten yet gets at least BOOT_SILENCE_S."""
    silence = timeout if worker.heard else max(timeout, BOOT_SILENCE_S)
    return now - worker.last_beat > silence or worker.stalled > timeout


def past_stop_deadline(worker: Worker, now: float) -> bool:
    """Told to stop (or drain) and still there after the graceful timeout."""
    return worker.stop_deadline is not None and now > worker.stop_deadline


def over_memory(worker: Worker, max_memory: int) -> bool:
    """A serving worker above --max-memory (0: no limit) is recycled."""
    return bool(max_memory and worker.rss_bytes and worker.rss_bytes > max_memory
                and worker.state is WorkerState.READY)


class Supervised(Protocol):
    """What the health check uses of the supervisor."""

    config: Config
    loop: asyncio.AbstractEventLoop
    by_ident: dict[bytes, Worker]
    host: Any          # the SupervisorHost: flush_worker_messages()

    def kill(self, worker: Worker, reason: ExitReason) -> None: ...

    def recycle(self, worker: Worker, reason: ExitReason) -> None: ...


class HealthCheck:
    """Every heartbeat interval: kill workers past their stop deadline or hung, recycle those over
    --max-memory, and refresh every worker's memory and CPU figures."""

    def __init__(self, sup: Supervised) -> None:
        self.sup = sup
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self) -> None:
        self._due = time.monotonic() + self.sup.config.heartbeat_interval
        self._handle = self.sup.loop.call_later(self.sup.config.heartbeat_interval, self._tick)

    def _tick(self) -> None:
        """The health check; it reschedules itself whatever one turn meets (EMFILE, a psutil error)."""
        try:
            log.survive("the periodic health check", self._check)
        finally:
            self._schedule()

    def _check(self) -> None:
        self._credit_own_lateness(time.monotonic())
        self.sup.host.flush_worker_messages()  # judge on what the workers sent, not on what is still queued
        self.check(time.monotonic())

    def _credit_own_lateness(self, now: float) -> None:
        """Count missed beats in the master's own loop time: when this loop ran late (the master was
        stopped, or starved of CPU), that gap is not the workers' silence nor their stop deadlines'."""
        late = now - self._due - self.sup.config.heartbeat_interval
        if late <= 0:
            return
        log.event("master-late", f"the master's loop ran {late:.1f}s late: that time is not held against "
                  "workers", level=logging.WARNING)
        for worker in self.sup.by_ident.values():
            worker.last_beat = min(worker.last_beat + late, now)
            if worker.stop_deadline is not None:
                worker.stop_deadline += late

    def check(self, now: float) -> None:
        """Kill workers past their stop deadline or hung; recycle those over --max-memory."""
        for worker in list(self.sup.by_ident.values()):
            if worker.state is WorkerState.EXITED:
                continue
            if past_stop_deadline(worker, now):
                log.event("worker-kill", f"{worker.label()} did not stop within the graceful timeout: killed",
                          level=logging.WARNING, slot=worker.slot, pid=worker.pid)
                self.sup.kill(worker, worker.retire_reason or ExitReason.STOP)
                worker.stop_deadline = None
                continue
            if is_hung(worker, now, self.sup.config.heartbeat_timeout):
                if worker.retire_reason is not ExitReason.HUNG:
                    log.event("worker-hung", f"{worker.label()} stopped answering heartbeats: killed",
                              level=logging.WARNING, slot=worker.slot, pid=worker.pid, reason="hung")
                worker.retire_reason = ExitReason.HUNG
                self.sup.kill(worker, ExitReason.HUNG)
                continue
            self._measure(worker)
            if over_memory(worker, self.sup.config.max_memory):
                self.sup.recycle(worker, ExitReason.MAX_MEMORY)

    def _measure(self, worker: Worker) -> None:
        if worker.process is None or worker.process.pid is None:
            return
        worker.pid = worker.process.pid
        measured = worker.process.measure()
        if measured is not None:
            worker.rss_bytes, worker.cpu_percent = measured


__all__ = ["HealthCheck", "is_hung", "past_stop_deadline", "over_memory"]
