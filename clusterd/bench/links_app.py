"""The app `clusterd bench --links` runs: each side times its own loop of calls to the other.

It uses only the public API, so the bench can also run it on another clusterd tree (a baseline
checkout) by loading this file under another module name.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from clusterd import MasterEndpoint, WorkerEndpoint, rpc


async def timed_loop(call: Callable[[], Awaitable[Any]], seconds: float, inflight: int) -> dict:
    """Keep `inflight` calls going for `seconds`: {"calls": n, "seconds": elapsed}, timed here."""
    clock = time.perf_counter
    deadline = clock() + seconds
    done = 0

    async def lane() -> None:
        nonlocal done
        while clock() < deadline:
            await call()
            done += 1

    started = clock()
    await asyncio.gather(*(lane() for _ in range(inflight)))
    return {"calls": done, "seconds": clock() - started}


class Master(MasterEndpoint):
    @rpc
    def echo(self, x: Any) -> Any:
        return x

    @rpc
    async def to_workers(self, seconds: float, inflight: int, payload: Any) -> dict:
        """Master -> worker: `self.workers.call("echo", payload)` in a loop."""
        call = self.workers.call
        return await timed_loop(lambda: call("echo", payload), seconds, inflight)


class Worker(WorkerEndpoint):
    @rpc
    def echo(self, x: Any) -> Any:
        return x

    @rpc
    async def to_master(self, seconds: float, inflight: int, payload: Any) -> dict:
        """Worker -> master: `self.master.call("echo", payload)` in a loop."""
        call = self.master.call
        return await timed_loop(lambda: call("echo", payload), seconds, inflight)
