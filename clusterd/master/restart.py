"""The restart policy: when a failed slot is started again, and when failures mean a crash loop.

A slot whose worker fails is restarted at once the first time, then after a backoff that doubles
(BACKOFF_FIRST_S, 2x, ... up to BACKOFF_MAX_S). A worker that served for STABLE_AFTER_S resets its
slot's count. Failures of all slots within --crash-window are counted: --crash-limit per slot
(times the number of slots) of them is a crash loop, and the master stops with status 1.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

STABLE_AFTER_S = 1.0       # a worker ready this long resets its slot's backoff
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0


def backoff(consecutive_failures: int) -> float:
    """The delay before restarting a slot that failed this many times in a row (the first: none)."""
    if consecutive_failures <= 1:
        return 0.0
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (consecutive_failures - 2))


class CrashLoop(Exception):
    """Too many failures within the crash window: the instance stops."""


class RestartPolicy:
    """Counts failures; says how long a failed slot waits, or raises CrashLoop."""

    def __init__(self, crash_limit: int, crash_window: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.crash_limit = crash_limit
        self.crash_window = crash_window
        self.clock = clock
        self.failures: deque[float] = deque()

    def failed(self, consecutive: int, served_for: float | None, slots: int) -> tuple[int, float]:
        """A slot's worker failed: (the slot's new count of failures in a row, delay before its restart).

        consecutive is the slot's count so far; served_for how long the worker had been ready (None: never).
        """
        now = self.clock()
        if served_for is not None and served_for >= STABLE_AFTER_S:
            consecutive = 0
        consecutive += 1
        self.failures.append(now)
        while self.failures and now - self.failures[0] > self.crash_window:
            self.failures.popleft()
        limit = self.crash_limit * max(1, slots)
        if self.crash_limit and len(self.failures) >= limit:
            raise CrashLoop(f"crash loop: {len(self.failures)} worker failures within {self.crash_window:g}s "
                            f"(limit {self.crash_limit} per worker)")
        return consecutive, backoff(consecutive)


__all__ = ["RestartPolicy", "CrashLoop", "backoff", "STABLE_AFTER_S", "BACKOFF_FIRST_S", "BACKOFF_MAX_S"]
