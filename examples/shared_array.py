"""Workers fill one large shared array in parallel; the master reads it in place.

    clusterd run examples.shared_array:Master examples.shared_array:Worker --workers 4
    clusterd call fill                 # every worker fills its part of 64 MiB of int64
    clusterd call summary              # the master reads the array where it lies: no copy
    clusterd call peek 123456          # any worker reads any element, whoever wrote it

The array is a block of shared memory that the master owns (`self.shared_block`) and every worker
maps (`await self.master.shared_block`). Only ranges, counts and sums travel over JSON-RPC; the
64 MiB never do. SHARED_ARRAY_MIB sets the size (default 64).
"""

from __future__ import annotations

import asyncio
import os
import time
from array import array

from clusterd import MasterEndpoint, RPCError, WorkerEndpoint, rpc

BLOCK = "squares"
ITEM = 8  # int64
MIB = int(os.environ.get("SHARED_ARRAY_MIB", "64"))
ITEMS = MIB * 1024 * 1024 // ITEM
CHUNK = 1 << 16


def _expected_sum(n: int) -> int:
    """0² + 1² + ... + (n-1)²."""
    return (n - 1) * n * (2 * n - 1) // 6


class Master(MasterEndpoint):
    async def start_services(self) -> None:
        self.raw = self.shared_block(BLOCK, ITEMS * ITEM)
        self.array = self.raw.cast("q")

    @rpc
    async def fill(self) -> dict:
        """Split the array into one range per ready worker; they fill their ranges at the same time."""
        slots = sorted(slot for slot, r in (await self.workers.broadcast("my_slot")).items()
                       if not isinstance(r, Exception))
        if not slots:
            raise RPCError(-32001, "no worker ready")
        self.raw[:] = bytes(len(self.raw))  # start from zeros, so that a missed range shows
        bounds = [ITEMS * k // len(slots) for k in range(len(slots) + 1)]
        ranges = {slot: (bounds[k], bounds[k + 1]) for k, slot in enumerate(slots)}
        started = time.perf_counter()
        done = await asyncio.gather(*(self.workers.call_slot(slot, "fill_range", lo, hi)
                                      for slot, (lo, hi) in ranges.items()))
        return {"items": ITEMS, "bytes": ITEMS * ITEM, "seconds": round(time.perf_counter() - started, 3),
                "ranges": {str(slot): list(r) for slot, r in ranges.items()},
                "filled_by": {str(d["slot"]): d["pid"] for d in done}}

    @rpc
    def summary(self) -> dict:
        """Read the whole array in place (no copy through JSON-RPC) and check it."""
        total = sum(self.array)
        expected = _expected_sum(ITEMS)
        # the sums pass 2**64: sent as decimal strings, as JSON numbers would lose digits
        return {"items": ITEMS, "sum": str(total), "expected": str(expected), "ok": total == expected,
                "first": self.array[0], "last": self.array[ITEMS - 1]}


class Worker(WorkerEndpoint):
    async def start_services(self) -> None:
        self.array = (await self.master.shared_block(BLOCK, ITEMS * ITEM)).cast("q")

    @rpc
    def my_slot(self) -> int:
        return self.slot

    @rpc
    def fill_range(self, lo: int, hi: int) -> dict:
        """Write i² at every index i of [lo, hi), a chunk at a time."""
        view = self.array
        for start in range(lo, hi, CHUNK):
            stop = min(start + CHUNK, hi)
            view[start:stop] = array("q", [i * i for i in range(start, stop)])
        return {"slot": self.slot, "pid": self.pid, "items": hi - lo}

    @rpc
    def peek(self, index: int) -> dict:
        """One element, read by this worker wherever it was written."""
        if not 0 <= index < ITEMS:
            raise RPCError(-32602, f"index must be in [0, {ITEMS})")
        return {"index": index, "value": self.array[index], "slot": self.slot, "pid": self.pid}
