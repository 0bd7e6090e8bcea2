"""The worker table: worker records, slots, and calls in flight."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import zmq

from .states import ExitReason, WorkerState


class Call:
    """One call in flight on a worker, or waiting for one.

    A call from a client is answered by sending the worker's response bytes unchanged to `sock`
    with `envelope`; a call the master made itself resolves `future` instead.
    """

    __slots__ = ("token", "payload", "rid", "sock", "envelope", "future", "worker", "deadline",
                 "idempotent", "timeout", "method", "door", "started")

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
        # for the metrics (ops/telemetry.py): door None leaves the call uncounted
        self.method = ""
        self.door: str | None = None
        self.started = 0.0


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
    served: int = 0                # calls it answered through the master
    failed: int = 0
    max_requests: int = 0          # 0: no limit
    last_beat: float = field(default_factory=time.monotonic)
    heard: bool = False     # a beat arrived: until then the worker is still booting an interpreter
    stalled: float = 0.0
    http: dict | None = None       # its HTTP door's calls and connections, from its last heartbeat
    door_served: int = 0           # calls its HTTP/WebSocket door answered (beats and DOOR reports)
    rss_bytes: int | None = None
    cpu_percent: float | None = None
    retire_reason: ExitReason | None = None   # why the master is replacing or stopping it
    stop_deadline: float | None = None
    boot_error: dict | None = None
    boot_reported: bool = False    # its start-up failure is known (message or output line, whichever came first)
    output_tail: deque = field(default_factory=lambda: deque(maxlen=60))
    process: Any = None            # the local process handle, None for a remote worker
    host: str | None = None
    agent: str | None = None
    methods: dict | None = None
    sock: Any = None               # the master's socket this worker is connected to

    @property
    def inflight(self) -> int:
        return len(self.calls)

    def past_max_requests(self) -> bool:
        """--max-requests counts every call the worker answered: through the master and on its door."""
        return bool(self.max_requests) and self.served + self.door_served >= self.max_requests

    def label(self) -> str:
        pid = f"pid {self.pid}, " if self.pid is not None else ""  # a process not yet spawned has none
        return f"worker {self.slot} ({pid}generation {self.generation})"


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
