"""Workers that fail in the ways supervision must survive."""

from __future__ import annotations

import asyncio
import os

from clusterd import MasterEndpoint, WorkerEndpoint, rpc


class Master(MasterEndpoint):
    pass


class BootFails(WorkerEndpoint):
    async def start_services(self) -> None:
        raise RuntimeError("database unreachable at boot")


class DiesAfterReady(WorkerEndpoint):
    """Serves for a moment, then crashes: a crash loop."""

    async def start_services(self) -> None:
        asyncio.get_running_loop().call_later(0.2, os._exit, 3)

    @rpc
    def ping(self) -> str:
        return "pong"


class Stoppable(WorkerEndpoint):
    """Records its stop_services in a file, so a test can see a graceful stop happened."""

    async def stop_services(self) -> None:
        path = os.environ.get("STOP_MARK_DIR")
        if path:
            with open(os.path.join(path, f"worker-{self.slot}-{os.getpid()}"), "w") as fh:
                fh.write("stopped")

    @rpc
    async def sleep(self, seconds: float) -> int:
        await asyncio.sleep(seconds)
        return os.getpid()


class StoppableMaster(MasterEndpoint):
    async def stop_services(self) -> None:
        path = os.environ.get("STOP_MARK_DIR")
        if path:
            names = sorted(os.listdir(path))
            with open(os.path.join(path, "master"), "w") as fh:
                fh.write(",".join(names))  # the workers had stopped before the master's stop_services
