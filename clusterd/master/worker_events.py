"""What the router does when the supervisor reports on a worker: the router's side of SupervisorHost.

A worker ready gets the calls that waited for one; a worker gone has its calls answered (-32002, or
retried elsewhere when idempotent); the master's hooks (on_worker_ready, on_worker_exit) run.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .. import protocol, wire
from ..ops import log
from ..wire import WorkerSpec
from ..worker.handles import WorkerHandle
from .endpoint import worker_info
from .pool import Worker
from .states import ClusterState, ExitReason
from .view import MasterView

# Exits after which a slot gets a new worker: what clusterd_worker_restarts_total counts.
RESTART_REASONS = frozenset({ExitReason.CRASHED, ExitReason.HUNG, ExitReason.MAX_MEMORY, ExitReason.MAX_REQUESTS,
                             ExitReason.RELOAD})


class WorkerEvents:
    """Implements SupervisorHost (host.py) for the router."""

    def __init__(self, router: MasterView) -> None:
        self.router = router

    @property
    def worker_endpoint(self) -> str:
        return self.router.worker_endpoint  # it moves if another instance took our runtime directory

    @property
    def token(self) -> str:
        return self.router.token

    def keep_runtime_dir(self) -> None:
        self.router.keeper.keep()

    def child_environ(self) -> dict[str, str]:
        return self.router.child_environ()

    def flush_worker_messages(self) -> None:
        self.router.flush_worker_messages()

    def start_remote(self, agent: str, worker: Worker, spec: WorkerSpec) -> WorkerHandle:
        worker.sock = self.router.rsock
        return self.router.agents.spawn(agent, worker, spec)

    def send_stop(self, worker: Worker) -> None:
        # with the time it has left (a worker's HTTP door answers what it cannot finish before then)
        left = worker.stop_deadline - time.monotonic() if worker.stop_deadline is not None else None
        frames = [worker.ident, wire.STOP] if left is None else [worker.ident, wire.STOP, b"%.3f" % max(left, 0.0)]
        self.router.to_worker(frames, worker.sock)

    def learn_methods(self, methods: dict) -> None:
        self.router.worker_methods = methods

    def open_link(self, worker: Worker) -> socket.socket | None:
        links = self.router.links
        if links is None:
            return None
        worker.sock = links  # its calls, answers, state and stop go out on its link
        return links.open(worker.ident)

    def http_fds(self) -> list[int]:
        return self.router.front.fds

    def on_worker_ready(self, worker: Worker) -> None:
        router = self.router
        router.queue.flush()
        router.publish_readiness(worker)
        router.spawn_task(_hook(router.endpoint.on_worker_ready, worker_info(worker)))
        router.update_status_line()

    def on_worker_gone(self, worker: Worker, exit_info: dict) -> None:
        """Answer every call the worker held: -32002, or a retry elsewhere for idempotent ones."""
        router = self.router
        if router.links is not None:
            router.links.drop(worker.ident)
        reason = exit_info.get("reason")
        slot = router.supervisor.slots.get(worker.slot)
        refused = slot is not None and slot.incoming is worker and worker.ready_at is None  # its slot keeps its worker
        if reason in RESTART_REASONS and router.state is not ClusterState.STOPPING and not refused:
            router.telemetry.count("restarts", reason)
        calls = list(worker.calls.values())
        worker.calls.clear()
        for call in calls:
            if call.idempotent and router.state is not ClusterState.STOPPING:
                call.deadline = 0.0
                router.dispatch(call, exclude=worker)
            else:
                router.reply_error(call, protocol.WORKER_DIED)
        router.spawn_task(_hook(router.endpoint.on_worker_exit, worker_info(worker), exit_info))
        router.update_status_line()
        router.publish_readiness()


async def _hook(func: Callable[..., Awaitable[Any]], *args: Any) -> None:
    try:
        await func(*args)
    except Exception:
        log.logger.exception("a master hook raised")


__all__ = ["WorkerEvents"]
