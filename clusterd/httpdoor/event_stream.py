"""One streaming response (Server-Sent Events) on a connection the HTTP/1.1 protocol handed over.

A page hook that streams returns ``Takeover(open)``; once the answers before it are out, the
connection's transport is switched to an ``EventStream``, which writes the response head and then
whatever its owner writes, until the client goes away or the door closes it (drain, stop). Nothing
the client sends afterwards is read. A client that does not read is cut off once its unsent bytes
pass ``MAX_BUFFERED``, so a stalled browser costs bounded memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from . import responses

if TYPE_CHECKING:
    from .door_state import DoorState

MAX_BUFFERED = 1024 * 1024
SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
            b"X-Accel-Buffering: no\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n")
# What an EventSource waits before it reconnects (to another worker, when this one stopped).
RETRY = b"retry: 2000\n\n"


class Takeover(NamedTuple):
    """What a streaming page hook returns: ``open(stream)`` is called with the stream, head sent."""
    open: Callable[["EventStream"], None]


class EventStream(asyncio.Protocol):
    """The connection from the response head on: ``write(chunk)`` until ``closed``.

    ``on_close`` (set by the owner) is called once when the stream ends, whoever ended it."""

    def __init__(self, door: "DoorState", transport: asyncio.Transport) -> None:
        self.door = door
        self.transport: asyncio.Transport | None = transport
        self.on_close: Callable[[EventStream], None] | None = None

    @property
    def closed(self) -> bool:
        return self.transport is None

    def start(self, extra_headers: bytes = b"") -> None:
        """Switch the transport to this protocol and send the head."""
        transport = self.transport
        assert transport is not None
        transport.set_protocol(self)
        self.door._streams.add(self)
        transport.write(SSE_HEAD + responses.date_line() + extra_headers + b"\r\n" + RETRY)

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        if transport.get_write_buffer_size() > MAX_BUFFERED:
            self.abort()  # the client stopped reading
            return
        transport.write(data)

    def close(self) -> None:
        """End the response (what was written still goes out)."""
        if self.transport is not None:
            self.transport.close()
            self._gone()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
            self._gone()

    def _gone(self) -> None:
        if self.transport is None:
            return
        self.transport = None
        self.door._streams.discard(self)
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close(self)

    # asyncio.Protocol
    def data_received(self, data: bytes) -> None:
        pass  # a stream reads nothing more; the client only listens

    def eof_received(self) -> Any:
        return False  # the client closed its side: the transport closes, connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()


__all__ = ["EventStream", "MAX_BUFFERED", "Takeover"]
