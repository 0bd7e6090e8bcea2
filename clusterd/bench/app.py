"""The built-in app that ``clusterd bench`` runs: an echo method and a CPU-bound method.

A bare master plus this worker is a load-balanced service: ``echo`` and ``burn`` are forwarded by
the master to one worker each.
"""

from __future__ import annotations

from typing import Any

from clusterd import MasterEndpoint, WorkerEndpoint, rpc


class Master(MasterEndpoint):
    pass


class Worker(WorkerEndpoint):
    @rpc
    def echo(self, x: Any) -> Any:
        return x

    @rpc
    def burn(self, n: int) -> int:
        """Pure-Python CPU work: holds the GIL for the whole call, as user code would."""
        return burn(n)


def burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


class ChaosWorker(Worker):
    """The bench's worker plus an idempotent call, for `clusterd bench --chaos`."""

    @rpc(idempotent=True)
    def idem_echo(self, x: Any) -> Any:
        return x
