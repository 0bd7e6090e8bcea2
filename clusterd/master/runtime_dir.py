"""The instance's runtime directory: its lock, pid file and socket paths (DESIGN.md 8)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..control import read_pid


class InstanceBusy(Exception):
    """Another live master holds this instance name."""

    def __init__(self, name: str, pid: int | None) -> None:
        super().__init__(f"an instance named {name!r} is already running (pid {pid})")
        self.pid = pid


class RuntimeDir:
    """The instance's directory: its lock, pid file and socket paths."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd: int | None = None

    def claim(self, name: str) -> None:
        """Take the instance name, or raise InstanceBusy; a directory left by a dead master is taken over."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.path, 0o700)
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise InstanceBusy(name, read_pid(self.path)) from None
        self._lock_fd = fd
        for stale in ("control.sock", "workers.sock"):
            try:
                (self.path / stale).unlink()
            except FileNotFoundError:
                pass
        tmp = self.path / "master.pid.tmp"
        tmp.write_text(f"{os.getpid()}\n")
        tmp.replace(self.path / "master.pid")

    def release(self) -> None:
        for name in ("control.sock", "workers.sock", "master.pid"):
            try:
                (self.path / name).unlink()
            except FileNotFoundError:
                pass
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


__all__ = ["RuntimeDir", "InstanceBusy"]
