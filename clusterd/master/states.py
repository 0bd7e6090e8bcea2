"""The states a reader follows through the master: the instance's, a worker's, and why a worker exited.

They are string enums: their values are what the status document, the logs and the status line show.
"""

from __future__ import annotations

import enum


class ClusterState(enum.StrEnum):
    """The instance as a whole; changed only through Router.set_state (which informs systemd too).

    starting -> running <-> reloading; any -> stopping -> stopped
    """

    STARTING = "starting"     # the master's services and the first workers are starting
    RUNNING = "running"       # every slot is served (or being restarted after a crash)
    RELOADING = "reloading"   # a rolling reload replaces the workers slot by slot
    STOPPING = "stopping"     # no new calls; calls in flight finish; workers stop
    STOPPED = "stopped"       # every worker and the master's services have stopped


class WorkerState(enum.StrEnum):
    """One worker process: STARTING -> READY -> DRAINING -> STOPPING -> EXITED (any may jump to EXITED)."""

    STARTING = "starting"   # spawned, not yet ready: gets no calls
    READY = "ready"         # serving
    DRAINING = "draining"   # a replacement serves its slot; it finishes what it holds
    STOPPING = "stopping"   # told to stop (stop_services), or killed
    EXITED = "exited"


class ExitReason(enum.StrEnum):
    """Why a worker left: the `reason` of its exit in the status document and the logs."""

    CRASHED = "crashed"            # it exited on its own (or could not start)
    HUNG = "hung"                  # silent past the heartbeat timeout, or ran past a call's deadline
    MAX_MEMORY = "max-memory"      # recycled: over --max-memory
    MAX_REQUESTS = "max-requests"  # recycled: served --max-requests calls
    RELOAD = "reload"              # replaced by a rolling reload
    SCALE = "scale"                # its slot was scaled away
    STOP = "stop"                  # the instance stopped

    @property
    def failure(self) -> bool:
        """Failures count toward the crash loop and restart with backoff; planned exits restart at once."""
        return self in (ExitReason.CRASHED, ExitReason.HUNG)


__all__ = ["ClusterState", "WorkerState", "ExitReason"]
