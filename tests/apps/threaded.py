"""The basic app, plus what only makes sense for thread workers (--isolation thread)."""

from __future__ import annotations

import sys
import threading

from clusterd import rpc
from tests.apps import basic


class Master(basic.Master):
    @rpc
    async def slot_of(self, slot: int) -> int:
        return (await self.workers.call_slot(slot, "whoami"))["slot"]


class Worker(basic.Worker):
    @rpc
    def thread(self) -> dict:
        return {"slot": self.slot, "thread": threading.current_thread().name,
                "main": threading.current_thread() is threading.main_thread()}

    @rpc
    def exit_loop(self, code: int) -> None:
        sys.exit(code)  # ends this worker's loop (and thread), not the master

    @rpc
    async def exit_loop_async(self, code: int) -> None:
        raise SystemExit(code)

    @rpc
    def hang(self) -> None:
        threading.Event().wait()  # never returns: a hung thread
