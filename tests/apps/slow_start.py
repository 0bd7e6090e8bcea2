"""A service whose start_services takes 30 s, in the master or the workers (SLOW_START=master|worker,
SLOW_HOW=async|blocking); it writes its pid to $SLOW_MARK when the slow part begins."""

from __future__ import annotations

import asyncio
import os
import time

from clusterd import MasterEndpoint, WorkerEndpoint, rpc


async def _slow(where: str) -> None:
    if os.environ.get("SLOW_START") != where:
        return
    with open(os.environ["SLOW_MARK"], "a") as fh:
        fh.write(f"{os.getpid()}\n")
    if os.environ.get("SLOW_HOW") == "blocking":
        time.sleep(30)
    else:
        await asyncio.sleep(30)


class Master(MasterEndpoint):
    async def start_services(self) -> None:
        await _slow("master")


class Worker(WorkerEndpoint):
    async def start_services(self) -> None:
        await _slow("worker")

    @rpc
    def ping(self) -> str:
        return "pong"
