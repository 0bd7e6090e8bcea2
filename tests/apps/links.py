"""An app whose master and workers call each other many at a time (tests/test_links.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from clusterd import MasterEndpoint, RPCError, WorkerEndpoint, rpc


class Master(MasterEndpoint):
    async def start_services(self) -> None:
        self.seen: list[int] = []

    @rpc
    def double(self, x: int) -> int:
        self.seen.append(x)
        return 2 * x

    @rpc
    def fails(self, code: int) -> None:
        if code:
            raise RPCError(code, "asked to fail", data={"code": code})
        raise ValueError("plain failure")

    @rpc
    async def later(self, x: int) -> int:
        await asyncio.sleep(0.001)
        return x + 1

    @rpc
    def seen_count(self) -> int:
        return len(self.seen)

    @rpc
    def reverse(self, text: str) -> str:
        return text[::-1]

    @rpc
    async def big_to_workers(self, size: int, n: int) -> list:
        """n calls at a time carrying `size` characters each way to the workers."""
        text = "".join(chr(97 + i % 26) for i in range(size))
        out = await asyncio.gather(*(self.workers.call("big_back", text, i) for i in range(n)))
        return [len(o) == size + len(str(i)) and o.startswith(text[::-1]) for i, o in enumerate(out)]

    @rpc
    async def fan_to_workers(self, n: int) -> list:
        """n concurrent self.workers.call, then n concurrent call_slot, broadcast and call_shared."""
        calls = [self.workers.call("add", i, 1) for i in range(n)]
        calls += [self.workers.call_slot(i % 2, "slot_add", i) for i in range(n)]
        calls += [self.workers.broadcast("slot_add", 0) for _ in range(4)]
        calls += [self.workers.call_shared("add", 7, 7) for _ in range(4)]
        out = await asyncio.gather(*calls)
        return [{str(k): v for k, v in r.items()} if isinstance(r, dict) else r for r in out]

    @rpc
    async def worker_error(self) -> dict:
        try:
            await self.workers.call("boom")
        except RPCError as exc:
            return {"code": exc.code, "message": exc.message, "data": exc.data}
        return {}


class Worker(WorkerEndpoint):
    @rpc
    def add(self, a: int, b: int) -> int:
        return a + b

    @rpc
    def slot_add(self, x: int) -> list:
        return [self.slot, x]

    @rpc
    def boom(self) -> None:
        raise KeyError("kaboom")

    @rpc
    def big_back(self, text: str, i: int) -> str:
        return text[::-1] + str(i)

    @rpc
    async def big_to_master(self, size: int, n: int) -> list:
        """n calls at a time carrying `size` characters each way to the master."""
        text = "".join(chr(97 + i % 26) for i in range(size))
        out = await asyncio.gather(*(self.master.call("reverse", text) for _ in range(n)))
        return [o == text[::-1] for o in out]

    @rpc
    async def fan_to_master(self, n: int) -> list:
        """n concurrent calls to the master's plain-def method: one message carries many."""
        return await asyncio.gather(*(self.master.call("double", i) for i in range(n)))

    @rpc
    async def mixed_to_master(self) -> list:
        """Answers, errors and an async method in one burst; each caller gets its own outcome."""
        calls = [self.master.call("double", 21), self.master.call("fails", 0),
                 self.master.call("fails", 4321), self.master.call("no_such_method"),
                 self.master.call("later", 9), self.master.call("double", "x", "y")]
        out: list[Any] = []
        for result in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(result, RPCError):
                out.append({"code": result.code, "data": result.data})
            else:
                out.append(result)
        return out

    @rpc
    async def cancelled_then_answered(self) -> int:
        """A call given up on the worker side does not stop the next ones from being answered."""
        for _ in range(20):
            try:
                await asyncio.wait_for(self.master.call("later", 1), 0.0001)
            except TimeoutError:
                pass
        return await self.master.call("double", 5)
