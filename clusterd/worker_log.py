"""A worker's `logging` records, carried to the master with their level and logger name.

A worker process writes each record as one line (`log.WORKER_RECORD` + JSON) on the stderr pipe the
master reads; the master logs it as its own record tagged with the worker's slot and pid
(`log.worker_line`). A thread worker (--isolation thread) hands the same line over in-process.
Exceptions raised by @rpc methods are logged here too, at ERROR and at most once per period per
method, and `--log-calls` adds one access line per call.
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from typing import Any

import orjson

from . import endpoint, log

ERROR_PERIOD_S = 10.0
errors_logger = logging.getLogger("clusterd.worker")
access_logger = logging.getLogger("clusterd.access")


def _encode(record: logging.LogRecord) -> bytes:
    obj: dict[str, Any] = {"level": record.levelno, "logger": record.name, "msg": record.getMessage()}
    if record.exc_info:
        obj["exc"] = "".join(traceback.format_exception(*record.exc_info))
    for key in ("method", "duration_ms"):
        value = getattr(record, key, None)
        if value is not None:
            obj[key] = value
    return log.WORKER_RECORD + orjson.dumps(obj, default=str) + b"\n"


def write_record(obj: dict) -> None:
    """One record line on fd 2, in one write."""
    try:
        os.write(2, log.WORKER_RECORD + orjson.dumps(obj, default=str) + b"\n")
    except OSError:
        pass


class PipeHandler(logging.Handler):
    """Writes each record as one line on fd 2, in one write so lines of other writers cannot split it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            os.write(2, _encode(record))
        except Exception:
            self.handleError(record)


class ThreadHandler(logging.Handler):
    """For thread workers: the record goes straight to the master's log, tagged with the thread's slot."""

    def emit(self, record: logging.LogRecord) -> None:
        name = threading.current_thread().name
        if not name.startswith("clusterd-worker-"):
            return  # the master's own threads log through the clusterd logger, not the root one
        try:
            parts = name[len("clusterd-worker-"):].split(".")  # its ident: token.slot.generation.serial
            slot = int(parts[1]) if len(parts) > 1 else int(parts[0])
            log.worker_line(_encode(record).rstrip(b"\n"), slot, os.getpid())
        except Exception:
            self.handleError(record)


def install(debug: bool = False, thread: bool = False) -> None:
    """Send the root logger's records to the master (once per process); INFO and up unless --debug."""
    root = logging.getLogger()
    kind = ThreadHandler if thread else PipeHandler
    if not any(isinstance(h, kind) for h in root.handlers):
        root.addHandler(kind())
    if thread:
        # the master's root level is its own business; and clusterd.* loggers of the master process
        # would otherwise reach the master's own handler untagged
        for lg in (errors_logger, access_logger):
            if not any(isinstance(h, ThreadHandler) for h in lg.handlers):
                lg.addHandler(ThreadHandler())
            lg.propagate = False
            lg.setLevel(logging.INFO)
        return
    root.setLevel(logging.DEBUG if debug else logging.INFO)


class CallErrors:
    """Logs an exception raised by an @rpc method, with its traceback, at most once per period per method."""

    def __init__(self, logger: logging.Logger = errors_logger, period: float = ERROR_PERIOD_S) -> None:
        self.logger = logger
        self.period = period
        self._limits: dict[str, log.RateLimited] = {}

    def report(self, method: str, exc: BaseException) -> None:
        limit = self._limits.get(method)
        if limit is None:
            if len(self._limits) > 10000:  # a flood of distinct names must not grow this without bound
                self._limits.clear()
            limit = self._limits[method] = log.RateLimited(self.period)
        held = limit.allow()
        if held is None:
            return
        more = f" ({held} more since the last report)" if held else ""
        tb = exc.__traceback__
        if tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename == endpoint.__file__:
            tb = tb.tb_next  # start the traceback at the user's method, not at the dispatcher calling it
        self.logger.error("%s raised %s: %s%s", method, type(exc).__name__, exc, more,
                          exc_info=(type(exc), exc, tb), extra={"method": method})


def access(method: str, ok: bool, started: float, now: float) -> None:
    """One --log-calls line: the method, how it ended, how long it took."""
    ms = round((now - started) * 1000, 3)
    access_logger.info("%s %s %.1fms", method, "ok" if ok else "error", ms,
                       extra={"method": method, "duration_ms": ms})
