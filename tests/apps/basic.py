"""The app most tests run: a bit of everything a user would write."""

from __future__ import annotations

import asyncio
import os
import threading
import time

from clusterd import MasterEndpoint, RPCError, WorkerEndpoint, rpc


class Master(MasterEndpoint):
    async def start_services(self) -> None:
        self.ready_events: list[int] = []
        self.exit_events: list[dict] = []
        self.settings = {"greeting": "hello"}

    async def on_worker_ready(self, worker) -> None:
        self.ready_events.append(worker.slot)

    async def on_worker_exit(self, worker, exit) -> None:
        self.exit_events.append({"slot": worker.slot, **exit})

    @rpc
    async def config(self) -> dict:
        return self.settings

    @rpc
    def master_add(self, a: int, b: int) -> int:
        return a + b

    @rpc
    async def total(self, n: int) -> int:
        per_worker = await self.workers.broadcast("count", n)
        return sum(v for v in per_worker.values() if isinstance(v, int))

    @rpc
    async def broadcast_pids(self) -> dict:
        return {str(k): v for k, v in (await self.workers.broadcast("pid")).items()}

    @rpc
    async def via_slot(self, slot: int) -> int:
        return await self.workers.call_slot(slot, "pid")

    @rpc
    async def shared_slow(self, tag: str) -> dict:
        return await self.workers.call_shared("slow_unique", tag)

    @rpc
    async def hooks(self) -> dict:
        return {"ready": self.ready_events, "exits": self.exit_events}

    def not_exposed(self) -> str:
        return "secret"


class Worker(WorkerEndpoint):
    async def start_services(self) -> None:
        self.counter = 0
        self.executions = 0

    @rpc
    def echo(self, x=None):
        return x

    @rpc
    def add(self, a: int, b: int) -> int:
        return a + b

    @rpc
    def subtract(self, minuend: int, subtrahend: int) -> int:
        return minuend - subtrahend

    @rpc(name="sum")
    def sum_all(self, *values: int) -> int:
        return sum(values)

    @rpc
    def pid(self) -> int:
        return os.getpid()

    @rpc
    def whoami(self) -> dict:
        return {"slot": self.slot, "pid": self.pid, "generation": self.generation}

    @rpc
    def count(self, n: int) -> int:
        return n

    @rpc
    async def sleep(self, seconds: float) -> int:
        await asyncio.sleep(seconds)
        return os.getpid()

    @rpc
    def block(self, seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()

    @rpc
    def spin(self, seconds: float) -> int:
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            n += 1
        return os.getpid()

    @rpc
    def deadlock(self) -> None:
        lock = threading.Lock()
        lock.acquire()
        lock.acquire()

    @rpc
    def crash(self) -> None:
        os._exit(7)

    @rpc(idempotent=True)
    async def idem_sleep(self, seconds: float) -> int:
        await asyncio.sleep(seconds)
        return os.getpid()

    @rpc(timeout=0.5)
    def slow_with_timeout(self, seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()

    @rpc
    def fail(self, message: str) -> None:
        raise ValueError(message)

    @rpc
    def fail_rpc(self) -> None:
        raise RPCError(1234, "custom failure", {"why": "because"})

    @rpc
    def allocate(self, megabytes: int) -> int:
        self.hog = bytearray(megabytes * 1024 * 1024)
        for i in range(0, len(self.hog), 4096):
            self.hog[i] = 1
        return len(self.hog)

    @rpc
    async def ask_master(self) -> dict:
        return await self.master.call("config")

    @rpc
    async def master_sum(self, a: int, b: int) -> int:
        return await self.master.call("master_add", a, b)

    @rpc
    async def peer_pid(self, slot: int) -> int:
        return await self.workers.call_slot(slot, "pid")

    @rpc
    async def peers(self) -> dict:
        return {str(k): v for k, v in (await self.workers.broadcast("pid")).items()}

    @rpc
    async def any_pid(self) -> int:
        return await self.workers.call("pid")

    @rpc
    async def slow_unique(self, tag: str) -> dict:
        self.executions += 1
        await asyncio.sleep(0.5)
        return {"tag": tag, "pid": os.getpid(), "execution": self.executions, "at": time.time()}

    @rpc
    async def shared_from_worker(self, tag: str) -> dict:
        return await self.workers.call_shared("slow_unique", tag)

    @rpc(idempotent=True)
    async def idem_slow_first(self, seconds: float) -> int:
        """Slow on the first generation only: a retry on a reloaded worker answers at once."""
        if self.generation == 1:
            await asyncio.sleep(seconds)
        return os.getpid()

    @rpc(timeout=0.3)
    async def async_with_timeout(self, seconds: float) -> int:
        await asyncio.sleep(seconds)
        return os.getpid()

    @rpc(offload=True)
    def offloaded_block(self, seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()

    def hidden(self) -> str:
        return "not reachable"

    def _private(self) -> str:
        return "not reachable"
