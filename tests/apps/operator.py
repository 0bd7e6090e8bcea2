"""An app for the operator's day: it raises, logs, prints and dies inside a call."""

from __future__ import annotations

import asyncio
import logging
import os

from clusterd import MasterEndpoint, WorkerEndpoint, rpc

log = logging.getLogger("opsapp")


class Master(MasterEndpoint):
    @rpc
    def master_fails(self) -> None:
        raise KeyError("master-side")


class Worker(WorkerEndpoint):
    @rpc
    def fails(self, tag: str = "boom") -> None:
        raise ValueError(f"bad value {tag}")

    @rpc
    async def fails_async(self) -> None:
        await asyncio.sleep(0)
        raise LookupError("async-fault")

    @rpc
    def ok(self, x: int = 1) -> int:
        return x

    @rpc
    def warn(self, text: str) -> int:
        log.warning("careful: %s", text)
        log.debug("a debug detail %s", text)
        return self.slot

    @rpc
    def shout(self, text: str) -> int:
        print(f"plain {text}", flush=True)
        return self.slot

    @rpc
    def die(self) -> None:
        os._exit(7)
