"""The link between the master and a worker process on its host: a unix socket pair per worker.

Over ZeroMQ every message crosses two I/O threads: the sender's thread wakes its I/O thread, which
writes the socket; the receiver's I/O thread wakes, then wakes the receiver. On a small machine those
wake-ups, not the work, set the pace of a call. The master therefore makes one socket pair per local
worker, keeps one end and lets the worker inherit the other: a send is one system call and wakes only
the reader (the seed's Node cluster does the same with its IPC pipe). Workers on other hosts and
thread workers keep ZeroMQ.

Messages keep ZeroMQ's shape, a list of frames, so one set of handlers serves both kinds of link.
Each frame travels as a 4-byte little-endian header, its length with the top bit set when more frames
of the same message follow, then its bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from .ops.log import RateLimited
from .zmqloop import Outbox

MORE = 1 << 31
MAX_FRAME = MORE - 1
HEADER = 4
READ_SIZE = 64 * 1024  # per connection: the master keeps one buffer per local worker
_header = struct.Struct("<I").unpack_from  # a frame's header, read in place (no slice per frame)
CLOSE_LINGER_S = 2.0  # how long a closing end keeps trying to hand over what it still holds


def encode(frames: list[bytes]) -> bytes:
    """One message, ready to write."""
    last = len(frames) - 1
    parts = []
    for i, frame in enumerate(frames):
        parts.append((len(frame) | MORE if i < last else len(frame)).to_bytes(HEADER, "little"))
        parts.append(frame)
    return b"".join(parts)


class StreamConnection:
    """One end of a link: reads messages for `handler`, writes whole messages without blocking.

    handler(frames) gets each message as a list of frames, after `prefix` when one is given (the
    master prefixes the worker's routing id, as its ZeroMQ ROUTER would). `holds` are outboxes held
    while a read's messages are handled, so what they answer leaves together (zmqloop.py). on_closed
    runs once, when the peer is gone or close() is called. Nothing a handler raises stops the reading.
    """

    __slots__ = ("loop", "sock", "fd", "handler", "prefix", "holds", "on_closed", "closed", "_chunks", "_have",
                 "_need", "_frames", "_out", "_faults", "_buffer", "_view")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 handler: Callable[[list[bytes]], None], prefix: bytes | None = None,
                 holds: tuple[Outbox, ...] = (), on_closed: Callable[["StreamConnection"], None] | None = None) -> None:
        self.loop = loop
        self.sock = sock
        sock.setblocking(False)
        self.fd = sock.fileno()
        self.handler = handler
        self.prefix = prefix
        self.holds = holds
        self.on_closed = on_closed
        self.closed = False
        self._chunks: list[bytes] = []  # bytes received and not yet parsed
        self._have = 0
        self._need = HEADER                # bytes the next frame needs before it can be parsed
        self._frames: list[bytes] = [prefix] if prefix is not None else []
        self._out = bytearray()            # what the kernel did not take yet
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)
        self._faults = RateLimited()
        loop.add_reader(self.fd, self._on_readable)

    # -- reading
    def _on_readable(self) -> None:
        self._read_once()

    def read_now(self) -> None:
        """Handle every message already received (the master reads them before judging a worker)."""
        while not self.closed and self._read_once():
            pass

    def _read_once(self) -> bool:
        """One read into the connection's buffer (a fresh object per read, as recv() makes, cost an mmap,
        an mremap and a munmap per message at 256 KiB); False when nothing more is to be read now."""
        try:
            size = self.sock.recv_into(self._buffer)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            size = 0
        if not size:
            self.close(linger=False)
            return False
        self._received(self._view[:size].tobytes())
        return True

    def _received(self, data: bytes) -> None:
        self._have += len(data)
        if self._have < self._need:
            self._chunks.append(data)  # a big frame still arriving: joined once, when complete
            return
        if self._chunks:
            self._chunks.append(data)
            data = b"".join(self._chunks)
            self._chunks = []
        for outbox in self.holds:
            outbox.hold()
        try:
            self._parse(data)
        finally:
            for outbox in self.holds:
                outbox.release()

    def _parse(self, data: bytes) -> None:
        end = len(data)
        pos = 0
        frames = self._frames
        handler = self.handler
        prefix = self.prefix
        while end - pos >= HEADER:
            head = _header(data, pos)[0]
            start = pos + HEADER
            stop = start + (head & MAX_FRAME)
            if stop > end:
                break
            frames.append(data[start:stop])
            pos = stop
            if not head & MORE:
                try:
                    handler(frames)
                except Exception:
                    self._faults.exception("a link message handler failed; the link is still read")
                frames = [prefix] if prefix is not None else []
                if self.closed:
                    return
        self._frames = frames
        rest = data[pos:] if pos < end else b""
        self._have = len(rest)
        self._need = HEADER if len(rest) < HEADER else HEADER + (_header(rest, 0)[0] & MAX_FRAME)
        if rest:
            self._chunks.append(rest)

    # -- writing
    def send(self, data: bytes) -> bool:
        """Queue one or more encoded messages; False when the link is closed (the peer is gone)."""
        if self.closed:
            return False
        if self._out:
            self._out += data
            return True
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close(linger=False)
            return False
        if sent < len(data):
            self._out += memoryview(data)[sent:]
            self.loop.add_writer(self.fd, self._on_writable)
        return True

    def send_message(self, frames: list[bytes]) -> bool:
        return self.send(encode(frames))

    def _on_writable(self) -> None:
        try:
            sent = self.sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close(linger=False)
            return
        del self._out[:sent]
        if not self._out:
            self.loop.remove_writer(self.fd)

    # -- closing
    def close(self, linger: bool = True) -> None:
        """Stop reading; with linger, first hand the kernel what is still queued (bounded in time)."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.fd)
        if self._out:
            self.loop.remove_writer(self.fd)
            if linger:
                self._flush_blocking()
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.on_closed is not None:
            self.on_closed(self)

    def _flush_blocking(self) -> None:
        deadline = time.monotonic() + CLOSE_LINGER_S
        with contextlib.suppress(OSError):
            while self._out:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self.sock.settimeout(left)
                sent = self.sock.send(self._out)
                del self._out[:sent]


class StreamOutbox(Outbox):
    """zmqloop.Outbox for stream links: one message per peer per loop turn or drain.

    route(peer) names the connection of a peer (None when it has none); on_failure(peer, frames) is
    told when a peer's message cannot be sent, as a ROUTER_MANDATORY send failing on a gone peer.
    """

    __slots__ = ("route",)

    def __init__(self, loop: asyncio.AbstractEventLoop, route: Callable[[Any], StreamConnection | None],
                 on_failure: Callable[[Any, list[bytes]], None] | None = None) -> None:
        super().__init__(loop, None, on_failure)  # type: ignore[arg-type]  # no ZeroMQ socket
        self.route = route

    def send_message(self, peer: Any, frames: list[bytes]) -> bool:
        connection = self.route(peer)
        return connection is not None and connection.send(encode(frames))


__all__ = ["MORE", "StreamConnection", "StreamOutbox", "encode"]
