"""Keeping the instance's runtime directory (SECURITY.md): the sockets bound in it as files we own,
and what vanishes of it (a tmp cleaner, an rm -r) put back, checked every heartbeat interval."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from pathlib import Path

import zmq

from ..ops import log
from ..runtime_dir import InstanceBusy, RuntimeDirError
from .view import MasterView


class DirKeeper:
    def __init__(self, router: MasterView) -> None:
        self.router = router
        self.taken_by: int | None = None  # another instance took our name: our worker socket moved
        self._private_dir: Path | None = None
        self._problem: str | None = None
        self._timer: asyncio.TimerHandle | None = None

    def bind_ipc(self, sock: zmq.Socket, name: str) -> None:
        """Bind sock to <instance dir>/name, 0600, and remember that file as ours."""
        path = self.router.dir.path / name
        sock.bind(f"ipc://{path}")
        os.chmod(path, 0o600)
        self.router.dir.own(name)
        identity = getattr(self.router, "worker_identity", None)
        if name == "workers.sock" and identity is not None:
            from ..privileges import open_worker_link
            open_worker_link(self.router.dir.path, identity)

    def start(self) -> None:
        self._timer = self.router.loop.call_later(self.router.config.heartbeat_interval, self._watch)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)

    def _watch(self) -> None:
        self.start()
        try:
            self.keep()
        except Exception:  # a check must never stop the periodic task
            log.logger.exception("checking the runtime directory failed")

    def keep(self) -> None:
        """Put back what vanished of our runtime directory.

        Deleted files are made again and the sockets bound again at their paths. If another instance
        took the name meanwhile, its files are left alone: our workers get a private socket, so that
        new ones join us and not it, and we keep serving our binds until told to stop by a signal.
        """
        router = self.router
        if self.taken_by is not None:
            self._claim_back()
            return
        lost = router.dir.lost()
        if not lost:
            return
        if "" in lost or "lock" in lost:
            if not self._claim_again():
                return
            lost = ["control.sock", "workers.sock"]
        for item in lost:
            if item == "master.pid":
                router.dir.write_pid()
            elif item == "control.sock":
                self.bind_ipc(router.control, item)
            elif item == "workers.sock" and self._private_dir is None:
                self.bind_ipc(router.wsock, item)

    def _claim_again(self) -> bool:
        router = self.router
        name = router.config.name
        try:
            router.dir.claim(name)
        except InstanceBusy as exc:
            self.taken_by = exc.pid or 0
            self._move_worker_socket()
            log.event("runtime-dir-taken", f"{name}: runtime directory {router.dir.path} was deleted and is now "
                      f"held by another instance (pid {exc.pid}); this master (pid {os.getpid()}) keeps "
                      f"serving its binds, its workers now use {router.worker_endpoint}; `clusterd "
                      f"stop/status --name {name}` reach the other instance: stop this one with "
                      f"`kill -TERM {os.getpid()}`", level=logging.WARNING)
            return False
        except (RuntimeDirError, OSError) as exc:
            problem = f"{name}: runtime directory {router.dir.path} vanished and cannot be made again: {exc}"
            if problem != self._problem:
                log.event("runtime-dir-lost", problem, level=logging.WARNING)
            self._problem = problem
            return False
        self._problem = None
        log.event("runtime-dir-recreated", f"{name}: runtime directory {router.dir.path} was deleted: made "
                  "again, with master.pid and both sockets", level=logging.WARNING)
        return True

    def _claim_back(self) -> None:
        """The instance that took our name has stopped: take it back, sockets and all."""
        router = self.router
        name = router.config.name
        try:
            router.dir.claim(name)
        except (InstanceBusy, RuntimeDirError, OSError):
            return  # still taken (or not makeable): checked again at the next turn
        self.taken_by = None
        self.bind_ipc(router.control, "control.sock")
        self.bind_ipc(router.wsock, "workers.sock")  # new workers join here; running ones stay where they are
        router.worker_endpoint = f"ipc://{router.dir.path / 'workers.sock'}"
        log.event("runtime-dir-reclaimed", f"{name}: the instance that had taken this name is gone: this master "
                  f"(pid {os.getpid()}) holds {router.dir.path} again", level=logging.WARNING)

    def _move_worker_socket(self) -> None:
        """Bind the workers socket in a private directory of ours, beside the one we lost."""
        router = self.router
        self._private_dir = Path(tempfile.mkdtemp(prefix=f".{router.config.name}-{router.token}-",
                                                  dir=router.dir.path.parent))
        path = self._private_dir / "workers.sock"
        router.wsock.bind(f"ipc://{path}")
        os.chmod(path, 0o600)
        router.worker_endpoint = f"ipc://{path}"


__all__ = ["DirKeeper"]
