"""Lifecycle logging on stderr (or `--log-file`): readable lines, or one JSON object per line
(`--log-format json`); and the line format a worker's `logging` records travel in to the master."""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time

import orjson

logger = logging.getLogger("clusterd")

INSTANCE: str | None = None
"""The instance name, set by setup(): every JSON line carries it."""

WORKER_RECORD = b"\x1eclusterd-log "
"""How a line a worker writes starts when it is a `logging` record (worker_log.py writes them)."""


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        source = getattr(record, "source", None) or "master"
        name = getattr(record, "logger", None)
        line = (f"{stamp}.{int(record.msecs):03d} {record.levelname:<7} [{source}] "
                f"{name + ': ' if name else ''}{record.getMessage()}")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        exc = getattr(record, "exc", None)
        if exc:
            line += "\n" + exc.rstrip()
        return line


class JsonFormatter(logging.Formatter):
    FIELDS = ("event", "slot", "pid", "generation", "reason", "code", "signal", "source", "logger", "method",
              "methods", "address",
              "duration_ms", "instance", "traceback", "exc")

    def format(self, record: logging.LogRecord) -> str:
        obj = {"ts": round(record.created, 6), "level": record.levelname.lower(), "msg": record.getMessage()}
        if INSTANCE is not None:
            obj["instance"] = INSTANCE
        for key in self.FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                obj[key] = value
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(obj).decode()


def setup(log_format: str = "text", debug: bool = False, instance: str | None = None,
          log_file: str | None = None) -> None:
    """Where and how the master logs. A --log-file is reopened when logrotate moves it away."""
    global INSTANCE
    INSTANCE = instance
    if log_file:
        handler: logging.Handler = logging.handlers.WatchedFileHandler(log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    keep = [h for h in logger.handlers if getattr(h, "keep_on_setup", False)]
    logger.handlers[:] = [handler, *keep]
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False


def is_json() -> bool:
    """Whether setup() chose one JSON object per line."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers)


def event(kind: str, message: str, level: int = logging.INFO, **fields) -> None:
    """Log one lifecycle event; the fields go into JSON lines as keys."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"event": kind, **fields})


def parse_record(line: bytes) -> dict | None:
    """The record a worker line carries (see WORKER_RECORD), or None for a plain output line."""
    if not line.startswith(WORKER_RECORD):
        return None
    try:
        rec = orjson.loads(line[len(WORKER_RECORD):])
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def worker_line(line: bytes, slot: int | None, pid: int | None, label: str | None = None) -> None:
    """Log one line a worker wrote: its `logging` record with its own level and logger name, or a
    plain stdout/stderr line at INFO, tagged with the worker's slot and pid either way."""
    rec = parse_record(line)
    if rec is not None and ("boot_failure" in rec or worker_record(rec, slot, pid, label)):
        return  # a start-up failure reaches the master as a message of its own
    text = line.decode("utf-8", "replace").rstrip("\r")
    logger.info("%s", text, extra={"source": label or f"worker {slot} pid {pid}", "slot": slot, "pid": pid,
                                   "event": "output"})


def worker_record(rec: dict, slot: int | None, pid: int | None, label: str | None = None) -> bool:
    """Log a worker's `logging` record as the master's own, tagged; False when it is not one."""
    level = rec.get("level")
    if not isinstance(level, int):
        return False
    if logger.isEnabledFor(level):
        extra = {"source": label or f"worker {slot} pid {pid}", "slot": slot, "pid": pid, "event": "worker-log",
                 "logger": rec.get("logger"), "exc": rec.get("exc")}
        for key in ("method", "duration_ms"):
            if key in rec:
                extra[key] = rec[key]
        logger.log(level, "%s", rec.get("msg", ""), extra=extra)
    return True


class RateLimited:
    """Reports a recurring fault at most once per period, with how many were held back: a flood of
    bad input must not become a flood of log lines (nor stop whoever reports it)."""

    def __init__(self, period: float = 10.0) -> None:
        self.period = period
        self._next = 0.0
        self._held = 0

    def allow(self) -> int | None:
        """None when held back; else how many were held back since the last report."""
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return None
        held, self._held = self._held, 0
        self._next = now + self.period
        return held

    def exception(self, message: str) -> None:
        """Log message with the exception being handled, unless one was logged within the period."""
        held = self.allow()
        if held is None:
            return
        logger.error(message + (f" ({held} more since the last report)" if held else ""), exc_info=True)

    def warning(self, message: str) -> None:
        """Log message as a warning, unless one was logged within the period."""
        held = self.allow()
        if held is None:
            return
        logger.warning(message + (f" ({held} more since the last report)" if held else ""))


def survive(what: str, func, *args) -> bool:
    """Run one turn of a periodic task; an exception is logged, never raised, so the task goes on.

    Returns whether the turn completed. Used by every call_later loop of the master (the health check,
    call deadlines, restarts): a task that stops rescheduling itself blinds the master for good."""
    try:
        func(*args)
        return True
    except Exception:
        logger.exception("%s failed; it runs again at its next turn", what)
        return False
