"""The supervisor's narrow interface to the rest of the master, and what it reports back.

The supervisor imports nothing of the router: the router implements SupervisorHost. A test drives the
supervisor with a fake host and a fake spawner (tests/test_units.py).
"""

from __future__ import annotations

import socket
import time
from typing import Protocol

from ..wire import WorkerSpec
from ..worker.handles import WorkerHandle
from .pool import Worker
from .states import ExitReason


class SupervisorHost(Protocol):
    """What the supervisor tells the rest of the master (events), and the little it asks of it."""

    worker_endpoint: str   # may move: read it for each worker
    token: str             # this master's, in every worker identity

    def keep_runtime_dir(self) -> None:
        """Before a worker starts: make sure the socket it will connect to is ours."""

    def child_environ(self) -> dict[str, str]:
        """The environment a worker process starts with."""

    def start_remote(self, agent: str, worker: Worker, spec: WorkerSpec) -> WorkerHandle:
        """Ask the agent running a slot to start its worker."""

    def open_link(self, worker: Worker) -> socket.socket | None:
        """A local worker process's end of its link to the master (local_links.py), to be passed to it
        and then closed here; None when the worker uses the workers socket (thread workers)."""

    def http_fds(self) -> list[int]:
        """The descriptors of the --http-bind listening sockets a local worker inherits (front.py)."""

    def learn_methods(self, methods: dict) -> None:
        """The current generation's method table (from its first ready worker)."""

    def on_worker_ready(self, worker: Worker) -> None: ...

    def on_worker_gone(self, worker: Worker, exit_info: dict) -> None:
        """A worker exited: answer the calls it held."""

    def send_stop(self, worker: Worker) -> None:
        """Tell a worker to stop gracefully."""

    def flush_worker_messages(self) -> None:
        """Handle what workers already sent (answers, beats) before judging them by what has not arrived."""


class BootFailure(Exception):
    """A worker could not become ready: carries its error and traceback for the user."""

    def __init__(self, worker: Worker, error: str, traceback: str) -> None:
        super().__init__(error)
        self.worker = worker
        self.error = error
        self.traceback = traceback

    @classmethod
    def of(cls, worker: Worker, returncode: int | None) -> "BootFailure":
        """The worker's own report of why it could not start, else its last output and exit status."""
        err = worker.boot_error or {}
        tb = err.get("traceback") or "\n".join(worker.output_tail)
        error = err.get("error") or (f"worker exited with code {returncode}" if returncode is not None
                                     and returncode >= 0 else f"worker killed by signal {-(returncode or 0)}")
        return cls(worker, error, tb)

    def to_dict(self) -> dict:
        return {"slot": self.worker.slot, "pid": self.worker.pid, "error": self.error,
                "traceback": self.traceback}


def exit_info(returncode: int | None, reason: ExitReason) -> dict:
    code = sig = None
    if returncode is not None:
        if returncode < 0:
            sig = -returncode
        else:
            code = returncode
    return {"code": code, "signal": sig, "at": time.time(), "reason": reason}


__all__ = ["SupervisorHost", "BootFailure", "exit_info"]
