"""A CPU-bound service spread over every core.

    clusterd run examples.primes:Master examples.primes:Worker
    clusterd call count_primes 2000000          # one worker counts primes below 2,000,000
    clusterd call count_primes_parallel 8000000 # the master splits the range over every worker
    clusterd call stats                         # every worker answers: broadcast
    clusterd call prime_table 100000            # computed once, shared by concurrent callers
"""

from __future__ import annotations

import math
import os

from clusterd import MasterEndpoint, RPCError, WorkerEndpoint, rpc


def _count_primes(lo: int, hi: int) -> int:
    """Primes in [lo, hi): a segmented sieve, pure Python (so the work really needs the cores)."""
    lo = max(lo, 2)
    if hi <= lo:
        return 0
    limit = int(math.isqrt(hi - 1)) + 1
    base = bytearray([1]) * (limit + 1)
    base[0:2] = b"\x00\x00"
    for i in range(2, int(math.isqrt(limit)) + 1):
        if base[i]:
            base[i * i::i] = bytes(len(base[i * i::i]))
    segment = bytearray([1]) * (hi - lo)
    for p in range(2, limit + 1):
        if base[p]:
            start = max(p * p, (lo + p - 1) // p * p)
            if start < hi:
                segment[start - lo::p] = bytes(len(segment[start - lo::p]))
    return sum(segment)


class Master(MasterEndpoint):
    """The front door: splits big jobs over the workers, and reports on them."""

    @rpc
    async def count_primes_parallel(self, n: int) -> int:
        """Primes below n, the range cut into one chunk per worker (they run in parallel)."""
        if not isinstance(n, int) or n < 0:
            raise RPCError(-32602, "n must be a non-negative integer")
        ready = max(1, len(await self.workers.broadcast("stats")))
        chunk = -(-n // ready)
        import asyncio
        parts = await asyncio.gather(*(self.workers.call("count_primes_between", lo, min(n, lo + chunk))
                                       for lo in range(0, n, chunk)))
        return sum(parts)

    @rpc
    async def stats(self) -> dict:
        """What each worker has done: a broadcast, {slot: result}."""
        per_worker = await self.workers.broadcast("stats")
        return {str(slot): (r if not isinstance(r, Exception) else str(r)) for slot, r in per_worker.items()}


class Worker(WorkerEndpoint):
    """Runs on every core; plain `def` methods run on the worker's main thread."""

    async def start_services(self) -> None:
        self.calls = 0

    @rpc
    def count_primes(self, n: int) -> int:
        """Primes below n, counted by this one worker."""
        if not isinstance(n, int) or n < 0:
            raise RPCError(-32602, "n must be a non-negative integer")
        self.calls += 1
        return _count_primes(0, n)

    @rpc
    def count_primes_between(self, lo: int, hi: int) -> int:
        self.calls += 1
        return _count_primes(lo, hi)

    @rpc
    async def prime_table(self, n: int) -> list[int]:
        """The first primes below n, computed once however many callers ask at the same moment."""
        return await self.workers.call_shared("primes_below", n)

    @rpc
    def primes_below(self, n: int) -> list[int]:
        n = min(int(n), 1_000_000)
        sieve = bytearray([1]) * max(n, 2)
        sieve[0:2] = b"\x00\x00"
        for i in range(2, int(math.isqrt(n)) + 1 if n > 1 else 2):
            if sieve[i]:
                sieve[i * i::i] = bytes(len(sieve[i * i::i]))
        return [i for i in range(n) if sieve[i]]

    @rpc
    def stats(self) -> dict:
        return {"slot": self.slot, "pid": self.pid, "generation": self.generation, "calls": self.calls}
