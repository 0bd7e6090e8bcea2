"""The master's signals: each runs a control command (admin.py), so a signal and `clusterd stop /
reload / scale` agree on when it is allowed and on its limits.

    SIGTERM           stop (graceful; after --drain-delay)     SIGHUP    reload (not waited for)
    SIGINT (Ctrl-C)   stop; again: fast stop   SIGTTIN   scale +1
    SIGQUIT           stop (fast)              SIGTTOU   scale -1
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..ops import log
from ..protocol import RPCError
from .admin import Admin
from .view import MasterView

EXIT_INTERRUPTED = 130  # a Ctrl-C the blocked loop could not take: 128 + SIGINT, as shells report it

Command = Callable[[], Awaitable[Any]]


def install_signals(router: MasterView) -> None:
    admin: Admin = router.admin
    commands: dict[int, tuple[str, Command]] = {
        signal.SIGTERM: ("stop", admin.stop_after_drain_delay),  # --drain-delay first (DESIGN.md 14)
        signal.SIGQUIT: ("stop", lambda: admin.stop(graceful=False)),
        signal.SIGHUP: ("reload", lambda: admin.reload_from("SIGHUP")),
        signal.SIGTTIN: ("scale", lambda: admin.scale(delta=1)),
        signal.SIGTTOU: ("scale", lambda: admin.scale(delta=-1)),
    }
    for sig, (name, command) in commands.items():
        router.loop.add_signal_handler(sig, _on_signal, router, sig, name, command)
    signal.signal(signal.SIGINT, _Interrupts(router))


def _on_signal(router: MasterView, sig: int, name: str, command: Command) -> None:
    router.spawn_task(_run(signal.Signals(sig).name, name, command))


async def _run(sig_name: str, name: str, command: Command) -> None:
    try:
        await command()
    except RPCError as exc:  # refused, as the control command would be: said once, not raised
        log.event("signal-refused", f"{sig_name} ({name}) refused: {exc.message}", level=logging.WARNING)


class _Interrupts:
    """Ctrl-C: the first asks for a graceful stop, the next one for a fast stop (as uvicorn, gunicorn).

    A plain signal handler, not the loop's: it runs in the main thread even while user code blocks
    the loop (a time.sleep in start_services). If the loop has not taken the previous Ctrl-C within
    a second, the next one exits right there with status 130, after removing the instance's files:
    its workers and zygotes die with it (parent-death signal)."""

    def __init__(self, router: MasterView) -> None:
        self.loop: asyncio.AbstractEventLoop = router.loop
        self.router = router
        self.pending_since: float | None = None

    def __call__(self, signum: int, frame: object) -> None:
        now = time.monotonic()
        if self.pending_since is not None and now - self.pending_since > 1.0:
            sys.stderr.write(f"clusterd: {self.router.config.name}: the master's event loop is blocked (by user "
                             "code?) and did not take the previous Ctrl-C: exiting at once\n")
            sys.stderr.flush()
            self.router.dir.release()
            os._exit(EXIT_INTERRUPTED)
        if self.pending_since is None:
            self.pending_since = now
        try:
            self.loop.call_soon_threadsafe(self._in_loop)
        except RuntimeError:  # the loop has already closed: the master is on its way out
            raise KeyboardInterrupt from None

    def _in_loop(self) -> None:
        self.pending_since = None
        self.router.interrupted = True
        _on_signal(self.router, signal.SIGINT, "stop",
                   lambda: self.router.admin.stop(graceful=not self.router.stopped.is_set()))


__all__ = ["install_signals", "EXIT_INTERRUPTED"]
