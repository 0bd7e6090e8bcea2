"""An app for the operator's day: it raises, logs, prints and dies inside a call."""

from __future__ import annotations

import asyncio
import logging
import os
import time

from clusterd import MasterEndpoint, WorkerEndpoint, rpc

log = logging.getLogger("opsapp")


class Master(MasterEndpoint):
    @rpc
    def master_where(self, key: str = "OPS_VAR") -> dict:
        return {"uid": os.getuid(), "cwd": os.getcwd(), "env": os.environ.get(key)}

    @rpc
    def master_fails(self) -> None:
        raise KeyError("master-side")


class Worker(WorkerEndpoint):
    async def start_services(self) -> None:
        flag = os.environ.get("OPS_FAIL_FILE")
        if flag and os.path.exists(flag):
            raise RuntimeError("refusing to start: the fail file exists")

    @rpc
    def slow(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

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
    def where(self, key: str = "OPS_VAR") -> dict:
        import sys
        return {"uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd(), "env": os.environ.get(key),
                "path": sys.path[:5], "user": os.environ.get("USER")}

    @rpc
    def die(self) -> None:
        os._exit(7)
