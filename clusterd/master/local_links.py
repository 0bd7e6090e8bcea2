"""The master's ends of its local worker processes' links (streamlink.py): one socket pair each.

The master makes the pair when it starts a worker, keeps one end and hands the other to the worker
(inherited, or passed to the zygote that forks it). Only that worker holds it, so a message on it is
that worker's: no identity to check, no file in the runtime directory. Messages reach the same
handler as the workers socket's, as [ident, frame, ...], with this object in place of the socket;
the worker's ``sock`` is this object too, and its outbox (``Sockets.outboxes[links]``) routes by ident.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from ..streamlink import StreamConnection, StreamOutbox
from ..zmqloop import Outbox


class LocalLinks:
    """Every local worker's link, by routing id."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_message: Callable[[list[bytes], Any], None],
                 undeliverable: Callable[[bytes, list[bytes]], None]) -> None:
        self.loop = loop
        self.on_message = on_message
        self.connections: dict[bytes, StreamConnection] = {}
        self.outbox = StreamOutbox(loop, self.connections.get, undeliverable)
        self.holds: tuple[Outbox, ...] = (self.outbox,)  # Sockets sets every worker outbox here

    def open(self, ident: bytes) -> socket.socket:
        """A new worker's link: keeps our end; the other is for the worker (close it once it is passed)."""
        self.drop(ident)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        handler = self.on_message
        self.connections[ident] = StreamConnection(self.loop, ours, lambda frames: handler(frames, self), prefix=ident,
                                                   holds=self.holds, on_closed=self._closed)
        return theirs

    def _closed(self, connection: StreamConnection) -> None:
        if self.connections.get(connection.prefix) is connection:
            del self.connections[connection.prefix]

    def drop(self, ident: bytes) -> None:
        """The worker is gone: handle what it sent last, then close our end."""
        connection = self.connections.pop(ident, None)
        if connection is not None:
            connection.read_now()
            connection.close(linger=False)

    def read_now(self) -> None:
        """Handle every message the workers already sent."""
        for connection in list(self.connections.values()):
            connection.read_now()

    def close(self) -> None:
        for connection in list(self.connections.values()):
            connection.close()
        self.connections.clear()


__all__ = ["LocalLinks"]
