"""Time limits on calls: the queue of calls waiting for a ready worker (--queue-timeout), and the
deadlines of calls running on a worker (--call-timeout, or the method's own timeout).

Neither costs a timer per call: the queue keeps one timer for its oldest call, the deadlines one
sweep while any call has a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from .. import protocol
from ..ops import log
from .pool import Call, Worker
from .states import ClusterState, ExitReason, WorkerState
from .view import MasterView


class CallQueue:
    """Calls that found no ready worker: sent as workers become ready, answered -32001 past the timeout."""

    def __init__(self, router: MasterView) -> None:
        self.router = router
        self.calls: deque[Call] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self.calls)

    def add(self, call: Call) -> None:
        router = self.router
        if router.state is ClusterState.STOPPING:
            return router.reply_error(call, protocol.SHUTTING_DOWN)
        call.deadline = router.loop.time() + router.config.queue_timeout
        self.calls.append(call)
        if self._timer is None:
            self._timer = router.loop.call_at(call.deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if not log.survive("expiring queued calls", self._expire_calls) and self.calls and self._timer is None:
            self._timer = self.router.loop.call_later(0.1, self._expire)

    def _expire_calls(self) -> None:
        now = self.router.loop.time()
        while self.calls and self.calls[0].deadline <= now:
            self.router.reply_error(self.calls.popleft(), protocol.NO_WORKER)
        if self.calls:
            self._timer = self.router.loop.call_at(self.calls[0].deadline, self._expire)

    def flush(self) -> None:
        """A worker became ready: send it (and any other ready one) the waiting calls."""
        balancer = self.router.supervisor.balancer
        while self.calls:
            worker = balancer.pick()
            if worker is None:
                return
            call = self.calls.popleft()
            call.deadline = 0.0
            self.router.send_call(worker, call)

    def fail_all(self) -> None:
        while self.calls:
            self.router.reply_error(self.calls.popleft(), protocol.SHUTTING_DOWN)


class Deadlines:
    """Answers calls past their deadline with -32003 and has the workers running them replaced."""

    def __init__(self, router: MasterView) -> None:
        self.router = router
        self._handle: asyncio.TimerHandle | None = None

    def arm(self, timeout: float) -> None:
        """A call with a deadline was sent: make sure a sweep is due."""
        if self._handle is None:
            self._handle = self.router.loop.call_later(min(0.1, timeout), self._sweep)

    def _sweep(self) -> None:
        self._handle = None
        if not log.survive("the call deadline sweep", self._sweep_expired) and self._handle is None:
            self._handle = self.router.loop.call_later(0.1, self._sweep)

    def _sweep_expired(self) -> None:
        router = self.router
        router.flush_worker_messages()  # an answer already sent is delivered, not timed out
        now = router.loop.time()
        pending = False
        for worker in list(router.supervisor.by_ident.values()):
            expired = [c for c in worker.calls.values() if c.deadline and c.deadline <= now]
            for call in expired:
                del worker.calls[call.token]
                router.reply_error(call, protocol.CALL_TIMEOUT, f"Call timed out after {call.timeout:g}s")
            if expired:
                log.event("call-timeout", f"{worker.label()} ran past a call's deadline: recycling",
                          level=logging.WARNING, slot=worker.slot, pid=worker.pid)
                self._recycle_runaway(worker)
            if any(c.deadline for c in worker.calls.values()):
                pending = True
        if pending:
            self._handle = router.loop.call_later(0.05, self._sweep)

    def _recycle_runaway(self, worker: Worker) -> None:
        """Replaced at once; killed once nothing else it runs can finish (bounded by 5 s)."""
        sup = self.router.supervisor
        sup.balancer.remove(worker)
        slot = sup.slots.get(worker.slot)
        if slot is not None and slot.active is worker and slot.incoming is None:
            sup.recycle(worker, ExitReason.HUNG)
        worker.retire_reason = worker.retire_reason or ExitReason.HUNG
        if worker.state is WorkerState.READY:
            sup.set_worker_state(worker, WorkerState.DRAINING)
        worker.stop_deadline = time.monotonic() + min(self.router.config.graceful_timeout, 5.0)
        if not worker.calls:
            sup.kill(worker, ExitReason.HUNG)


__all__ = ["CallQueue", "Deadlines"]
