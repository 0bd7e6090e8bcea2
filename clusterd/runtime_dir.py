"""The runtime directory (DESIGN.md 8): where an instance keeps its lock, pid file and sockets.

It is trusted only when it is safe, as ssh-agent, tmux and PostgreSQL trust theirs: the root may be
owned by us or by root (systemd's RuntimeDirectory= parent), `<name>/` only by us, and neither may be
writable by group or others. Otherwise another local user could plant a control.sock that answers
our `clusterd call` and swallows our `clusterd stop`. The master and the client check the same.

A master never deletes a file that is not its own: it remembers the inode of each file it made and
removes only those that are still the same file.
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

FIX = "or set CLUSTERD_RUNTIME_DIR to a private directory of yours"


class RuntimeDirError(Exception):
    """The runtime directory cannot be used: a one-line message saying what to fix (exit status 2)."""


class InstanceBusy(Exception):
    """Another live master holds this instance name."""

    def __init__(self, name: str, pid: int | None) -> None:
        super().__init__(f"an instance named {name!r} is already running (pid {pid})")
        self.pid = pid


def check_safe(path: Path, *, root_may_own: bool) -> None:
    """Raise RuntimeDirError unless path is a directory only we (or root, if allowed) can change."""
    try:
        link = os.lstat(path)
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise RuntimeDirError(f"cannot use runtime directory {path}: {exc.strerror} ({FIX})") from None
    uid = os.geteuid()
    owners = (uid, 0) if root_may_own else (uid,)
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in owners:
        raise RuntimeDirError(f"runtime directory {path} is a symbolic link owned by uid {link.st_uid}, "
                              f"not by you (uid {uid}): remove it, {FIX}")
    if not stat.S_ISDIR(st.st_mode):
        raise RuntimeDirError(f"runtime directory {path} exists and is not a directory: remove it, {FIX}")
    if st.st_uid not in owners:
        raise RuntimeDirError(f"runtime directory {path} is owned by uid {st.st_uid}, not by you (uid {uid}): "
                              f"have it removed, {FIX}")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and st.st_mode & stat.S_ISVTX:
        raise RuntimeDirError(f"runtime directory {path} is a shared directory (mode {stat.S_IMODE(st.st_mode):o}): "
                              "set CLUSTERD_RUNTIME_DIR to a private directory of yours inside it")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise RuntimeDirError(f"runtime directory {path} is writable by group or others "
                              f"(mode {stat.S_IMODE(st.st_mode):o}): run `chmod 700 {path}`, {FIX}")


def check_instance_path(root: Path, name: str) -> Path:
    """The instance directory a client may connect into, after checking it and its root."""
    check_safe(root, root_may_own=True)
    path = root / name
    check_safe(path, root_may_own=False)
    return path


def make_private_dir(path: Path, *, parents: bool) -> None:
    """Create path 0700 (parents too, if asked) or raise RuntimeDirError saying why it cannot be."""
    try:
        path.mkdir(mode=0o700, parents=parents, exist_ok=True)
    except FileExistsError:
        raise RuntimeDirError(f"runtime directory {path} exists and is not a directory: remove it, {FIX}") from None
    except OSError as exc:
        raise RuntimeDirError(f"cannot create runtime directory {path}: {exc.strerror} ({FIX})") from None


def read_pid(path: Path) -> int | None:
    """The pid in an instance directory's master.pid, if readable."""
    try:
        return int((path / "master.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class RuntimeDir:
    """One instance's directory: the name lock, master.pid and the socket paths (DESIGN.md 8)."""

    SOCKETS = ("control.sock", "workers.sock")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_fd: int | None = None
        self._owned: dict[str, tuple[int, int]] = {}  # file name -> (device, inode) we made

    def claim(self, name: str) -> None:
        """Take the instance name, or raise InstanceBusy / RuntimeDirError.

        A directory left by a dead master is taken over (its lock is free)."""
        make_private_dir(self.path.parent, parents=True)
        check_safe(self.path.parent, root_may_own=True)
        make_private_dir(self.path, parents=False)
        check_safe(self.path, root_may_own=False)
        try:
            fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise RuntimeDirError(f"cannot create {self.path / 'lock'}: {exc.strerror} ({FIX})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise InstanceBusy(name, read_pid(self.path)) from None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # the lock of a directory that vanished
        self._lock_fd = fd
        self._owned = {"": _file_id(self.path), "lock": _file_id(self.path / "lock")}
        for stale in (*self.SOCKETS, *(p.name for p in self.path.glob("gate*.sock"))):
            try:  # left by a dead master: ours now, under the lock
                (self.path / stale).unlink()
            except FileNotFoundError:
                pass
        self.write_pid()

    def write_pid(self) -> None:
        tmp = self.path / "master.pid.tmp"
        tmp.write_text(f"{os.getpid()}\n")
        tmp.replace(self.path / "master.pid")
        self.own("master.pid")

    def own(self, name: str) -> None:
        """Remember a file we just made here (a socket we bound), so that only it is removed at exit."""
        self._owned[name] = _file_id(self.path / name)

    def lost(self) -> list[str]:
        """The names of our files (`""` for the directory itself) that are gone or are no longer ours."""
        return [name for name, ident in self._owned.items() if _file_id(self.path / name) != ident]

    def release(self) -> None:
        """Remove master.pid and the sockets if they are still the ones we made; drop the lock."""
        if "" not in self.lost():  # the directory itself is still ours
            for name in [n for n in self._owned if n not in ("", "lock")]:  # master.pid and our sockets
                ident = self._owned.get(name)
                if ident is not None and _file_id(self.path / name) == ident:
                    try:
                        (self.path / name).unlink()
                    except FileNotFoundError:
                        pass
        self._owned.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
