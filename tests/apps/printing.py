"""The basic app, with workers that print and log while starting: their output must reach the
master's log carrying their slot and pid."""

from __future__ import annotations

import logging
import os
import sys

from tests.apps import basic


class Master(basic.Master):
    pass


class Worker(basic.Worker):
    async def start_services(self) -> None:
        await super().start_services()
        print(f"hello from slot {self.slot} pid {os.getpid()}")
        print(f"stderr of slot {self.slot} pid {os.getpid()}", file=sys.stderr)
        logging.getLogger("app").warning("logged by slot %s pid %s", self.slot, os.getpid())
