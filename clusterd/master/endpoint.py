"""MasterEndpoint (the class users subclass), its `workers` proxy, and the internal methods through
which a worker reaches the other workers (`clusterd.workers.*`, `clusterd.shared_block`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .. import protocol
from ..protocol import RPCError
from .pool import Worker


@dataclass(frozen=True)
class WorkerInfo:
    """What the master's hooks learn about a worker."""

    slot: int
    pid: int | None
    generation: int
    host: str | None = None
    agent: str | None = None


def worker_info(worker: Worker) -> WorkerInfo:
    return WorkerInfo(worker.slot, worker.pid, worker.generation, worker.host, worker.agent)


class WorkerCaller(Protocol):
    """What the proxies need of the master (the router implements it)."""

    shared: Any

    async def call_worker(self, method: str, params: list | dict, worker: Worker | None = None) -> Any: ...

    def start_worker_call(self, method: str, params: list | dict, worker: Worker | None = None) -> asyncio.Future:
        """Send a call to a worker: a future of its answer bytes (outcome() decodes them)."""

    def ready_workers(self) -> list[Worker]:
        """The serving worker of each slot that has one, by slot."""


class WorkersProxy:
    """`self.workers` on the master: call one, a given one, all, or share one execution."""

    def __init__(self, caller: WorkerCaller) -> None:
        self._caller = caller
        self._shared: dict[tuple[str, bytes], asyncio.Future] = {}

    # Each call is one future (resolved with the worker's answer bytes) and one frame: no task.
    async def call(self, method: str, *params: Any) -> Any:
        return outcome(await self._caller.start_worker_call(method, list(params)))

    async def call_slot(self, slot: int, method: str, *params: Any) -> Any:
        target = next((w for w in self._caller.ready_workers() if w.slot == slot), None)
        if target is None:
            raise RPCError(protocol.NO_WORKER, f"No worker ready in slot {slot}")
        return outcome(await self._caller.start_worker_call(method, list(params), target))

    async def broadcast(self, method: str, *params: Any) -> dict[int, Any]:
        """Every ready worker: {slot: result, or the RPCError it raised}."""
        targets = self._caller.ready_workers()
        answers = await asyncio.gather(*(self._caller.start_worker_call(method, list(params), w) for w in targets))
        out: dict[int, Any] = {}
        for worker, raw in zip(targets, answers):
            try:
                out[worker.slot] = outcome(raw)
            except RPCError as exc:
                out[worker.slot] = exc
            except Exception as exc:  # an answer that is not JSON-RPC
                out[worker.slot] = RPCError(protocol.INTERNAL_ERROR, str(exc))
        return out

    async def call_shared(self, method: str, *params: Any) -> Any:
        """Concurrent identical calls share one execution; a later call starts a fresh one."""
        key = (method, protocol.dumps(list(params)))
        fut = self._shared.get(key)
        if fut is None:
            fut = self._caller.start_worker_call(method, list(params))
            self._shared[key] = fut
            fut.add_done_callback(lambda _f: self._shared.pop(key, None))
        return outcome(await asyncio.shield(fut))


def outcome(raw: bytes) -> Any:
    """The result of a worker's answer bytes, or its error raised as RemoteError."""
    return protocol.response_outcome(protocol.loads(raw))


class MasterEndpoint:
    """Subclass this; mark the methods callers may reach with @rpc."""

    workers: WorkersProxy
    name: str
    pid: int
    _caller: WorkerCaller

    async def start_services(self) -> None:
        """Runs before the workers start."""

    async def stop_services(self) -> None:
        """Runs after every worker exited."""

    async def on_worker_ready(self, worker: WorkerInfo) -> None:
        """A worker reported ready (after its start_services)."""

    async def on_worker_exit(self, worker: WorkerInfo, exit: dict) -> None:
        """A worker exited; exit has code, signal, at and reason."""

    def shared_block(self, name: str, size: int) -> memoryview:
        """A block of shared memory every worker can attach to by name."""
        return self._caller.shared.block(name, size)


def internal_methods(workers: WorkersProxy, caller: WorkerCaller) -> dict[str, Callable]:
    """The methods a worker calls on the master to reach the other workers (WorkersProxyViaMaster)."""

    async def call(method: str, params: list | dict = ()) -> Any:
        return await caller.call_worker(method, params or [])

    async def call_slot(slot: int, method: str, params: list | dict = ()) -> Any:
        return await workers.call_slot(slot, method, *(params or []))

    async def call_shared(method: str, params: list = ()) -> Any:
        return await workers.call_shared(method, *(params or []))

    async def broadcast(method: str, params: list = ()) -> dict:
        results = await workers.broadcast(method, *(params or []))
        return {slot: ({"error": r.to_dict()} if isinstance(r, RPCError) else {"result": r})
                for slot, r in results.items()}

    async def shared_block(name: str, size: int) -> dict:
        if caller.shared is None:
            raise RPCError(protocol.INTERNAL_ERROR, "shared memory is not available")
        return caller.shared.describe(name, size)

    return {"clusterd.workers.call": call, "clusterd.workers.call_slot": call_slot,
            "clusterd.workers.broadcast": broadcast, "clusterd.workers.call_shared": call_shared,
            "clusterd.shared_block": shared_block}


__all__ = ["MasterEndpoint", "WorkersProxy", "WorkerInfo", "WorkerCaller", "worker_info", "internal_methods",
           "outcome"]
