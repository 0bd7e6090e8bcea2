"""basic's app, with a worker that uses its link as its HTTP/WebSocket door does: records calls into the
worker's statistics and fetches the instance's metrics."""

from __future__ import annotations

from clusterd import rpc
from tests.apps.basic import Master
from tests.apps.basic import Worker as BasicWorker

__all__ = ["Master", "Worker"]


class Worker(BasicWorker):
    @rpc
    def door_call(self, method: str, door: str, outcome: str, seconds: float) -> None:
        self.master._link.stats.record(method, door, outcome, seconds)

    @rpc
    async def master_metrics(self) -> list[str]:
        body, content_type = await self.master._link.master_metrics()
        return [content_type, body.decode()]
