"""The master's part in the HTTP/WebSocket front door: it owns the listening sockets and tells the
workers whether the instance is ready; the workers serve the door themselves (worker/http.py).

The sockets are opened once, before the first worker starts, and kept for the master's whole life,
so a connection is never refused while workers restart, scale or reload: the kernel queues it until
a worker accepts. Every worker (and every zygote, which forks workers) inherits them at the same
descriptor numbers, named in its WorkerSpec. The master itself never accepts on them.

`/readyz` is answered by whichever worker holds the connection, from what the master last told it
on the worker link (a STATE frame): ready while at least one worker is ready and no stop (nor a
--drain-delay before one) has begun. A frame goes to every local worker when that changes, and to
each worker as it becomes ready.
"""

from __future__ import annotations

import os
import socket
import stat

from .. import wire
from ..httpdoor import open_listener, parse_bind

READY, NOT_READY = b"1", b"0"


class FrontDoor:
    def __init__(self, binds: list[str]) -> None:
        self.binds = list(binds)
        self.sockets: list[socket.socket] = []
        self._unix_paths: list[tuple[str, int]] = []   # (path, inode) of the socket files made here
        self.ready: bool | None = None                  # what the workers were last told

    def open(self) -> None:
        """Listen on every --http-bind; BindError (one line for the user) when one cannot be."""
        for bind in self.binds:
            sock = open_listener(bind)
            self.sockets.append(sock)
            family, address = parse_bind(bind)
            if family == socket.AF_UNIX:
                assert isinstance(address, str)
                self._unix_paths.append((address, os.stat(address).st_ino))

    @property
    def fds(self) -> list[int]:
        return [s.fileno() for s in self.sockets]

    def close(self) -> None:
        """On the final stop: close the sockets and remove the socket files this master made (only those)."""
        for sock in self.sockets:
            sock.close()
        self.sockets = []
        for path, inode in self._unix_paths:
            try:
                st = os.stat(path)
                if stat.S_ISSOCK(st.st_mode) and st.st_ino == inode:
                    os.unlink(path)
            except OSError:
                pass
        self._unix_paths = []


def state_frames(ident: bytes, ready: bool) -> list[bytes]:
    """The frames telling one worker whether the instance is ready."""
    return [ident, wire.STATE, READY if ready else NOT_READY]


__all__ = ["FrontDoor", "state_frames", "READY", "NOT_READY"]
