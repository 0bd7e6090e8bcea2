"""The master's recent log, kept in memory for `clusterd logs` (as `pm2 logs`, `supervisorctl tail`).

A logging handler on the "clusterd" logger keeps the last entries in a bounded ring; the admin method
`clusterd.logs` reads from it and, for `logs -f`, waits for the next entry (an event, not polling).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from typing import Any

RING_LINES = 2000
MAX_MSG = 4 * 1024     # one entry's message, cut beyond this ...
MAX_EXC = 8 * 1024     # ... and its traceback (its end kept: the raising frame): at most ~25 MB in all


def _cut(text: str) -> str:
    return text if len(text) <= MAX_MSG else text[:MAX_MSG] + " [...]"


def _cut_tail(text: str) -> str:
    return text if len(text) <= MAX_EXC else "[...]\n" + text[-MAX_EXC:]


class LogRing(logging.Handler):
    """Keeps the last RING_LINES records as plain dicts, numbered so a reader can ask for what follows."""

    keep_on_setup = True

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int = RING_LINES) -> None:
        super().__init__()
        self.loop = loop
        self.entries: deque[dict] = deque(maxlen=size)
        self.seq = 0
        self._loop_thread = threading.get_ident()
        self._waiters: list[asyncio.Future] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            exc = getattr(record, "exc", None)
            if record.exc_info and not exc:
                exc = logging.Formatter().formatException(record.exc_info)
            entry: dict[str, Any] = {
                "ts": record.created, "level": record.levelname.lower(), "msg": _cut(record.getMessage()),
                "source": getattr(record, "source", None) or "master",
            }
            for key in ("slot", "pid", "logger", "event"):
                value = getattr(record, key, None)
                if value is not None:
                    entry[key] = value
            if exc:
                entry["exc"] = _cut_tail(exc)
        except Exception:
            self.handleError(record)
            return
        with self.lock:
            self.seq += 1
            entry["seq"] = self.seq
            self.entries.append(entry)
        if threading.get_ident() == self._loop_thread:
            self._wake()
        else:
            try:
                self.loop.call_soon_threadsafe(self._wake)
            except RuntimeError:
                pass  # the loop is closed: nobody is waiting any more

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def read(self, after: int = 0, slot: int | None = None, lines: int | None = None) -> list[dict]:
        """Entries numbered above `after` (of one worker slot when given), the last `lines` of them."""
        with self.lock:
            picked = [e for e in self.entries if e["seq"] > after and (slot is None or e.get("slot") == slot)]
        return picked[-lines:] if lines else picked

    async def wait(self, after: int, timeout: float) -> None:
        """Return once an entry numbered above `after` exists, or after timeout seconds."""
        if self.seq > after:
            return
        fut = self.loop.create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)


def format_entry(entry: dict) -> str:
    """One entry as the text log prints it."""
    import time
    ts = entry.get("ts", 0.0)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f".{int(ts * 1000) % 1000:03d}"
    name = entry.get("logger")
    line = (f"{stamp} {entry.get('level', 'info').upper():<7} [{entry.get('source', 'master')}] "
            f"{name + ': ' if name else ''}{entry.get('msg', '')}")
    if entry.get("exc"):
        line += "\n" + entry["exc"].rstrip()
    return line
