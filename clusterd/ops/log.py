"""Lifecycle logging on stderr: readable lines, or one JSON object per line (`--log-format json`)."""

from __future__ import annotations

import logging
import sys
import time

import orjson

logger = logging.getLogger("clusterd")


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        source = getattr(record, "source", None) or "master"
        line = f"{stamp} {record.levelname:<7} [{source}] {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    FIELDS = ("event", "slot", "pid", "generation", "reason", "code", "signal", "source", "instance", "traceback")

    def format(self, record: logging.LogRecord) -> str:
        obj = {"ts": round(record.created, 6), "level": record.levelname.lower(), "msg": record.getMessage()}
        for key in self.FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                obj[key] = value
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(obj).decode()


def setup(log_format: str = "text", debug: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False


def is_json() -> bool:
    """Whether setup() chose one JSON object per line."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers)


def event(kind: str, message: str, level: int = logging.INFO, **fields) -> None:
    """Log one lifecycle event; the fields go into JSON lines as keys."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"event": kind, **fields})


class RateLimited:
    """Reports a recurring fault at most once per period, with how many were held back: a flood of
    bad input must not become a flood of log lines (nor stop whoever reports it)."""

    def __init__(self, period: float = 10.0) -> None:
        self.period = period
        self._next = 0.0
        self._held = 0

    def exception(self, message: str) -> None:
        """Log message with the exception being handled, unless one was logged within the period."""
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return
        held, self._held = self._held, 0
        self._next = now + self.period
        logger.error(message + (f" ({held} more since the last report)" if held else ""), exc_info=True)


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
