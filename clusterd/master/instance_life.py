"""The instance's life as the Router holds it: its name and shared memory, its state, readiness, stop.

``InstanceLife`` is a base class of ``Router`` (router.py): systemd's notifications, the status line
and the HTTP door's ``/readyz`` all follow ``set_state``; nothing here is on the per-call path.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..ops import systemd
from ..runtime_dir import RuntimeDir
from ..settings import Config
from .front import FrontDoor, state_frames
from .pool import Worker
from .states import ClusterState, WorkerState

if TYPE_CHECKING:
    from .supervisor import Supervisor


class InstanceLife:
    """The instance's state and readiness (see Router for the attributes and the rest)."""

    config: Config
    dir: RuntimeDir
    shared: Any
    state: ClusterState
    notifier: systemd.Notifier | None
    front: FrontDoor
    supervisor: Supervisor
    drain_delay_started: bool
    graceful: bool
    stopped: asyncio.Event
    hurried: asyncio.Event

    # ------------------------------------------------------------------ the instance
    def claim(self) -> None:
        """Take the instance name (or raise InstanceBusy), then the shared memory that goes with it."""
        self.dir.claim(self.config.name)
        try:
            from ..shared import SharedBlocks
            self.shared = SharedBlocks(self.config.name)
        except ImportError:
            self.shared = None

    def release(self) -> None:
        if self.shared is not None:
            self.shared.close()
        self.close_sockets()
        self.front.close()
        self.dir.release()

    def set_state(self, state: ClusterState) -> None:
        """The one place the instance's state changes: systemd and the status line follow it."""
        self.state = state
        if self.notifier is not None:
            if state is ClusterState.RUNNING:
                self.notifier.ready()
            elif state is ClusterState.RELOADING:
                self.notifier.reloading()
            elif state is ClusterState.STOPPING:
                self.notifier.stopping()
        self.update_status_line()
        self.publish_readiness()

    # ------------------------------------------------------------------ readiness (/readyz)
    def instance_ready(self) -> bool:
        """At least one ready worker, and no stop (nor the --drain-delay before one) begun."""
        if self.drain_delay_started or self.state in (ClusterState.STOPPING, ClusterState.STOPPED):
            return False
        return any(w.state is WorkerState.READY for w in self.supervisor.by_ident.values())

    def publish_readiness(self, worker: Worker | None = None) -> None:
        """Tell the workers serving the HTTP door whether the instance is ready: all of them when it
        changed, or one that just became ready."""
        if not self.front.sockets:
            return
        ready = self.instance_ready()
        if worker is not None:
            self.to_worker(state_frames(worker.ident, ready), worker.sock)
        if ready == self.front.ready:
            return
        self.front.ready = ready
        for other in list(self.supervisor.by_ident.values()):
            if other.agent is None and other.ready_at is not None and other is not worker:
                self.to_worker(state_frames(other.ident, ready), other.sock)

    def begin_drain_delay(self) -> None:
        """SIGTERM with --drain-delay: /readyz answers 503 now; the graceful stop follows the delay."""
        self.drain_delay_started = True
        self.publish_readiness()

    def update_status_line(self) -> None:
        if self.notifier is not None:
            ready, wanted = self.supervisor.slot_summary()
            self.notifier.status(f"{self.state}: {ready}/{wanted} workers ready, generation "
                                 f"{self.supervisor.generation}")

    def request_stop(self, graceful: bool = True) -> None:
        """Stop; a fast stop asked for during a graceful one cuts it short (a second Ctrl-C, SIGQUIT)."""
        if not self.stopped.is_set():
            self.graceful = graceful
            self.stopped.set()
        elif not graceful:
            self.hurried.set()


__all__ = ["InstanceLife"]
