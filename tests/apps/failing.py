"""An app whose workers cannot start: start_services raises."""

from __future__ import annotations

from tests.apps import basic


class Master(basic.Master):
    pass


class Worker(basic.Worker):
    async def start_services(self) -> None:
        raise RuntimeError("worker cannot start on purpose")
