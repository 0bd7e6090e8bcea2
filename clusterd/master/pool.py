"""The worker table: worker records and their states, slots, calls in flight, and the balancer."""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import zmq


class WorkerState(enum.Enum):
    STARTING = "starting"   # spawned, not yet ready: gets no calls
    READY = "ready"         # serving
    DRAINING = "draining"   # a replacement serves its slot; it finishes what it holds
    STOPPING = "stopping"   # told to stop (stop_services), or killed
    EXITED = "exited"

    def __str__(self) -> str:
        return self.value


class Call:
    """One call in flight on a worker, or waiting for one.

    A call from a client is answered by sending the worker's response bytes unchanged to `sock`
    with `envelope`; a call the master made itself resolves `future` instead.
    """

    __slots__ = ("token", "payload", "rid", "sock", "envelope", "future", "worker", "deadline",
                 "idempotent", "timeout")

    def __init__(self, payload: bytes, rid: Any, sock: zmq.Socket | None,
                 envelope: list[bytes] | None, future: asyncio.Future | None) -> None:
        self.token = b""
        self.payload = payload
        self.rid = rid
        self.sock = sock
        self.envelope = envelope
        self.future = future
        self.worker: Worker | None = None
        self.deadline = 0.0
        self.idempotent = False
        self.timeout: float | None = None


@dataclass(eq=False)
class Worker:
    """One worker process (local or run by an agent on another host)."""

    slot: int
    generation: int
    ident: bytes
    pid: int | None = None
    state: WorkerState = WorkerState.STARTING
    started_at: float = field(default_factory=time.time)
    ready_at: float | None = None
    calls: dict[bytes, Call] = field(default_factory=dict)
    served: int = 0
    failed: int = 0
    max_requests: int = 0          # 0: no limit
    last_beat: float = field(default_factory=time.monotonic)
    stalled: float = 0.0
    rss_bytes: int | None = None
    cpu_percent: float | None = None
    retire_reason: str | None = None   # why the master is replacing or stopping it
    stop_deadline: float | None = None
    boot_error: dict | None = None
    output_tail: deque = field(default_factory=lambda: deque(maxlen=60))
    process: Any = None            # the local process handle, None for a remote worker
    host: str | None = None
    agent: str | None = None
    methods: dict | None = None
    sock: Any = None               # the master's socket this worker is connected to

    @property
    def inflight(self) -> int:
        return len(self.calls)

    def label(self) -> str:
        return f"worker {self.slot} (pid {self.pid}, generation {self.generation})"


@dataclass
class Slot:
    """A persistent worker position 0..N-1: what a replacement inherits."""

    index: int
    active: Worker | None = None       # the worker serving (or about to serve) this slot
    incoming: Worker | None = None     # a replacement being started while `active` still serves
    restarts: int = 0
    consecutive_failures: int = 0
    last_exit: dict | None = None
    restart_handle: asyncio.TimerHandle | None = None
    agent: str | None = None           # the agent (another host) that runs this slot's workers
    retired: bool = False              # scaled away: its workers finish and are not replaced


class Balancer:
    """Picks a ready worker: fewest calls in flight, round robin among equals (or plain round robin)."""

    def __init__(self, least_busy: bool = True) -> None:
        self.least_busy = least_busy
        self.ready: list[Worker] = []
        self._next = 0

    def add(self, worker: Worker) -> None:
        if worker not in self.ready:
            self.ready.append(worker)
            self.ready.sort(key=lambda w: w.slot)

    def remove(self, worker: Worker) -> None:
        try:
            self.ready.remove(worker)
        except ValueError:
            pass

    def pick(self, exclude: Worker | None = None) -> Worker | None:
        ready = self.ready
        n = len(ready)
        if n == 0:
            return None
        start = self._next % n
        self._next = start + 1
        best = ready[start]
        if n == 1:
            return None if best is exclude else best
        if not self.least_busy:
            if best is exclude:
                best = ready[(start + 1) % n]
            return best
        best_load = len(best.calls) if best is not exclude else 1 << 60
        if best_load == 0:
            return best
        for i in range(1, n):
            w = ready[(start + i) % n]
            if w is exclude:
                continue
            load = len(w.calls)
            if load < best_load:
                best, best_load = w, load
                if load == 0:
                    break
        return None if best is exclude else best
