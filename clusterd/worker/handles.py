"""What a spawner hands the supervisor, and the plumbing every way of starting a worker shares.

The supervisor sees a worker as a `WorkerHandle` (`pid`, `returncode`, `send_signal()`, `kill()`),
made by a `Spawner` (spawn.py: fresh interpreters or zygote forks; threads.py), every line it prints
(`OutputPipe`) and one call when it has exited.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from typing import Any, Protocol

import psutil

WORKER_ENTRY = "from clusterd.worker import main; main()"
ZYGOTE_ENTRY = "from clusterd.worker.zygote import main; main()"

OnLine = Callable[[object, bytes], None]
OnExit = Callable[[object, "int | None"], None]


class WorkerHandle(Protocol):
    """What the supervisor knows of a running worker, however it was started (process, thread, agent)."""

    pid: int | None
    returncode: int | None
    isolation: str          # "process" or "thread": shown in the status document

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...

    def measure(self) -> tuple[int | None, float | None] | None:
        """(rss_bytes, cpu_percent) now, or None when unknown (an agent reports its workers' memory)."""


class Spawner(Protocol):
    """Starts workers and reports each one's output lines and exit to the callbacks it was made with."""

    def spawn(self, worker: Any, env: dict, label: str, generation: int = 0,
              link: socket.socket | None = None) -> WorkerHandle:
        """Start a worker; `link` (its end of the link to the master) is passed to it, then closed here."""

    def reset(self, generation: int) -> None:
        """The next spawn of this generation runs the code on disk now (a reload starts)."""

    def retire_generation(self, generation: int) -> None:
        """Generations older than this one are no longer wanted."""

    def alive(self) -> bool:
        """Whether any worker still shares this process (only thread workers can)."""

    def close(self) -> None: ...

    def owned_pids(self) -> set[int]:
        """The child processes this spawner will wait for itself: the reaper leaves them alone."""


class OutputPipe:
    """Reads a worker's stdout+stderr as lines, without blocking the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, worker: object, on_line: OnLine) -> None:
        self.loop = loop
        self.fd = fd
        self.worker = worker
        self.on_line = on_line
        self.buf = b""
        self.open = True
        os.set_blocking(fd, False)
        loop.add_reader(fd, self.read)

    def read(self) -> None:
        if not self.open:
            return
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.close()
            return
        *lines, self.buf = (self.buf + chunk).split(b"\n")
        for line in lines:
            self.on_line(self.worker, line)

    def close(self) -> None:
        if self.open:
            self.open = False
            self.loop.remove_reader(self.fd)
            if self.buf:
                self.on_line(self.worker, self.buf)
                self.buf = b""
            os.close(self.fd)


class ProcessHandle:
    """A worker process, started fresh or forked by a zygote (a WorkerHandle)."""

    isolation = "process"

    def __init__(self) -> None:
        self.pid: int | None = None
        self.returncode: int | None = None
        self._pending_signal: int | None = None
        self._ps: psutil.Process | None = None

    def measure(self) -> tuple[int | None, float | None] | None:
        if self.pid is None:
            return None
        try:
            if self._ps is None:
                self._ps = psutil.Process(self.pid)
                self._ps.cpu_percent(None)
            return self._ps.memory_info().rss, self._ps.cpu_percent(None)
        except psutil.Error:
            return None

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) the process used so far (the metrics' counter)."""
        if self._ps is None or self.returncode is not None:
            return None
        try:
            times = self._ps.cpu_times()
        except psutil.Error:
            return None
        return round(times.user + times.system, 3)

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None:
            return
        if self.pid is None:
            self._pending_signal = sig  # a zygote has not told us the pid yet
            return
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _known(self, pid: int) -> None:
        self.pid = pid
        if self._pending_signal is not None:
            sig, self._pending_signal = self._pending_signal, None
            self.send_signal(sig)


# Blocked while a child starts, so that a signal to the whole group cannot kill it before it ignores
# them (worker.ignore_group_signals); the blocked mask is inherited through fork and exec.
_GROUP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT}


def popen_shielded(*args, **kwargs) -> subprocess.Popen:
    """Popen with the group's signals blocked in this thread (a signal meanwhile is taken by another)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _GROUP_SIGNALS)
    try:
        return subprocess.Popen(*args, **kwargs)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


PassFds = Callable[[], "list[int]"]


def no_fds() -> list[int]:
    return []
