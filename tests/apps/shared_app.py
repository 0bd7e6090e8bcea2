"""An app that shares blocks of memory between the master and its workers (DESIGN.md 11)."""

from __future__ import annotations

from clusterd import MasterEndpoint, WorkerEndpoint, rpc


class Master(MasterEndpoint):
    @rpc
    def read(self, name: str, size: int, offset: int, length: int) -> str:
        return bytes(self.shared_block(name, size)[offset:offset + length]).hex()

    @rpc
    def same_block(self, name: str, size: int) -> bool:
        first = self.shared_block(name, size)
        second = self.shared_block(name, size)
        first[0] = 42
        return second[0] == 42

    @rpc
    def mismatch(self, name: str) -> str:
        self.shared_block(name, 100)
        try:
            self.shared_block(name, 200)
        except ValueError as exc:
            return str(exc)
        return "no error"

    @rpc
    async def write_on(self, slot: int, name: str, size: int, offset: int, data: str) -> int:
        return await self.workers.call_slot(slot, "write", name, size, offset, data)

    @rpc
    async def read_on(self, slot: int, name: str, size: int, offset: int, length: int) -> str:
        return await self.workers.call_slot(slot, "read", name, size, offset, length)


class Worker(WorkerEndpoint):
    @rpc
    async def write(self, name: str, size: int, offset: int, data: str) -> int:
        block = await self.master.shared_block(name, size)
        raw = bytes.fromhex(data)
        block[offset:offset + len(raw)] = raw
        return self.slot

    @rpc
    async def read(self, name: str, size: int, offset: int, length: int) -> str:
        block = await self.master.shared_block(name, size)
        return bytes(block[offset:offset + length]).hex()
