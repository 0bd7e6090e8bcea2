"""An app whose methods return what JSON cannot always carry, call the master for what it lacks, and
record their executions: for tests/test_hardening_input.py."""

from __future__ import annotations

import asyncio
import math
import os

from clusterd import MasterEndpoint, WorkerEndpoint, rpc


def _cycle() -> list:
    value: list = [1]
    value.append(value)
    return value


class Master(MasterEndpoint):
    @rpc
    def m_echo(self, x=None):
        return x

    @rpc
    def m_factorial(self, n: int) -> int:
        return math.factorial(n)

    @rpc
    async def m_factorial_async(self, n: int) -> int:
        return math.factorial(n)

    @rpc
    def m_cycle(self) -> list:
        return _cycle()

    @rpc
    async def m_cycle_async(self) -> list:
        return _cycle()


class Worker(WorkerEndpoint):
    @rpc
    def echo(self, x=None):
        return x

    @rpc
    def pid(self) -> int:
        return os.getpid()

    @rpc
    def factorial(self, n: int) -> int:
        return math.factorial(n)

    @rpc
    async def factorial_async(self, n: int) -> int:
        return math.factorial(n)

    @rpc
    def cycle(self) -> list:
        return _cycle()

    @rpc
    async def cycle_async(self) -> list:
        return _cycle()

    @rpc
    async def master_call(self, method: str) -> object:
        return await self.master.call(method)

    @rpc
    async def slow(self, seconds: float) -> int:
        await asyncio.sleep(seconds)
        return os.getpid()

    @rpc(idempotent=True)
    async def record(self, path: str, seconds: float) -> int:
        """Sleeps, then appends this worker's pid to path: how many times a call ran is on disk."""
        with open(path, "a") as f:
            f.write(f"start {os.getpid()}\n")
        await asyncio.sleep(seconds)
        with open(path, "a") as f:
            f.write(f"done {os.getpid()}\n")
        return os.getpid()
