"""The control commands: `clusterd.status`, `.scale`, `.reload`, `.reload_wait`, `.stop`, `.logs`.

The control socket and the master's signals (signals.py) run the same commands, so they agree on
when a command is allowed and on its limits (as circus turns signals and circusctl into one set).
The CLI prints their answers (clusterd/cli.py, clusterd/status.py).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from .. import protocol
from ..ops import log
from ..protocol import RPCError
from ..settings import ConfigError, parse_workers
from .states import ClusterState
from .status import status_document
from .view import MasterView

NAMES = ("clusterd.status", "clusterd.reload", "clusterd.reload_wait", "clusterd.scale", "clusterd.stop",
         "clusterd.logs")

# A relative change (SIGTTOU, scale with delta) never removes the last worker; `scale 0` may.
MIN_WORKERS_BY_DELTA = 1


class Admin:
    def __init__(self, router: MasterView) -> None:
        self.router = router
        self.handlers: dict[str, Callable[..., Awaitable[Any]]] = {
            "clusterd.status": self.status, "clusterd.reload": self.reload,
            "clusterd.reload_wait": self.reload_wait, "clusterd.scale": self.scale, "clusterd.stop": self.stop,
            "clusterd.logs": self.logs,
        }

    async def status(self) -> dict:
        return status_document(self.router)

    async def scale(self, workers: int | str | None = None, delta: int | None = None) -> dict:
        sup = self.router.supervisor
        if delta is not None:
            target = max(sup.wanted + int(delta), min(sup.wanted, MIN_WORKERS_BY_DELTA))
        else:
            try:
                target = parse_workers(workers if workers is not None else sup.wanted)
            except ConfigError as exc:
                raise RPCError(protocol.INVALID_PARAMS, str(exc)) from None
        if target < 0:
            raise RPCError(protocol.INVALID_PARAMS, "the number of workers cannot be negative")
        self._refuse_when_stopping()
        old = sup.wanted
        if target != old or delta is None:
            sup.scale(target)
            self.router.update_status_line()
        return {"from": old, "to": target}

    async def stop(self, timeout: float | None = None, graceful: bool = True) -> dict:
        """A graceful stop; a fast one asked for during a graceful one cuts it short."""
        if timeout is not None:
            self.router.config.graceful_timeout = float(timeout)
        self.router.loop.call_soon(self.router.request_stop, graceful)
        return {"stopping": True, "pid": os.getpid()}

    async def stop_after_drain_delay(self) -> dict:
        """SIGTERM/SIGINT (DESIGN.md 14): /readyz answers 503 at once, calls are served on for
        --drain-delay seconds (load balancers take the instance out meanwhile), then the graceful stop.
        A second signal during the delay stops at once."""
        router = self.router
        delay = router.config.drain_delay
        if delay <= 0 or router.drain_delay_started or router.state is ClusterState.STOPPING:
            return await self.stop(graceful=True)
        router.begin_drain_delay()
        log.event("drain-delay", f"{router.config.name}: not ready; stopping in {delay:g}s (--drain-delay)")
        router.loop.call_later(delay, router.request_stop, True)
        return {"stopping": True, "pid": os.getpid()}

    async def reload(self, wait: bool = True) -> dict:
        self._refuse_when_stopping()
        return await self.router.reloads.request(wait=wait)

    async def reload_from(self, source: str) -> dict:
        """A reload from a signal: the same rule as `clusterd reload`, not waited for."""
        self._refuse_when_stopping()
        return await self.router.reloads.request(wait=False, source=source)

    async def reload_wait(self, id: int, after: int = 0) -> dict:
        return await self.router.reloads.progress(id, after)

    async def logs(self, after: int = 0, slot: int | None = None, lines: int | None = 100,
                   wait: float = 0.0) -> dict:
        """The recent log (`clusterd logs`): entries after `after`; with wait, the next ones as they come."""
        ring = self.router.log_ring
        if ring is None:
            return {"entries": [], "next": after}
        if not isinstance(after, int) or (slot is not None and not isinstance(slot, int)) \
                or (lines is not None and not isinstance(lines, int)) or not isinstance(wait, (int, float)):
            raise RPCError(protocol.INVALID_PARAMS, "after, slot and lines are integers, wait is seconds")
        entries = ring.read(after, slot, lines)
        if not entries and wait > 0 and self.router.state is not ClusterState.STOPPING:
            # with a slot, wake on any new entry (then filter); the reader asks again from the newest
            await ring.wait(max(after, ring.seq) if slot is not None else after, min(float(wait), 60.0))
            entries = ring.read(after, slot, lines)
        newest = max([after, *(e["seq"] for e in entries)])
        return {"entries": entries, "next": max(newest, ring.seq) if slot is not None else newest}

    def _refuse_when_stopping(self) -> None:
        if self.router.state is ClusterState.STOPPING:
            raise RPCError(protocol.SHUTTING_DOWN)


__all__ = ["Admin", "NAMES", "MIN_WORKERS_BY_DELTA"]
