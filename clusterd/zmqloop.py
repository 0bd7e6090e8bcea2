"""Driving plain (non-asyncio) ZeroMQ sockets from an asyncio loop without a future per message.

The loop watches the socket's ZMQ_FD; when it signals, every queued message is drained at once.
ZMQ_FD is edge-triggered: a send on a socket can swallow the notice of a message that arrived
meanwhile, so whoever sends on a socket calls wake() on its reader, which schedules one more drain
(at most one per loop turn).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import zmq
from zmq.backend import Socket as _Backend

from .ops.log import RateLimited

BATCH = 512

# pyzmq's send_multipart/recv_multipart combine flags as enum.IntFlag objects, which costs more than
# the send itself for small messages; these go straight to the socket with plain integers.
SNDMORE = int(zmq.SNDMORE)
NOBLOCK = int(zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_send = _Backend.send
_recv = _Backend.recv
_get = _Backend.get


def send_frames(sock: zmq.Socket, frames: list[bytes], flags: int = 0) -> None:
    """send_multipart without the enum overhead (flags: 0 or NOBLOCK)."""
    more = SNDMORE | flags
    last = len(frames) - 1
    for i in range(last):
        _send(sock, frames[i], more)
    _send(sock, frames[last], flags)


def recv_routed(sock: zmq.Socket) -> list[bytes]:
    """recv_frames for a ROUTER: its first frame (the sender's identity) always has a successor."""
    parts = [_recv(sock, NOBLOCK), _recv(sock, NOBLOCK)]
    while _get(sock, _RCVMORE):
        parts.append(_recv(sock, NOBLOCK))
    return parts


def recv_frames(sock: zmq.Socket) -> list[bytes]:
    """recv_multipart(NOBLOCK) without the enum overhead; raises zmq.Again when nothing is queued."""
    parts = [_recv(sock, NOBLOCK)]
    while _get(sock, _RCVMORE):
        parts.append(_recv(sock, NOBLOCK))
    return parts


class SocketReader:
    """Calls handler(frames) for each message arriving on sock.

    Nothing a handler raises stops the reader: the handler answers what it can, the reader logs the
    rest (rate-limited) and reads on."""

    __slots__ = ("loop", "sock", "handler", "_fd", "_scheduled", "closed", "_recv", "_faults", "_draining")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: zmq.Socket,
                 handler: Callable[[list[bytes]], None]) -> None:
        self.loop = loop
        self.sock = sock
        self.handler = handler
        self._fd = sock.getsockopt(zmq.FD)
        self._recv = recv_routed if sock.type == zmq.ROUTER else recv_frames
        self._scheduled = False
        self.closed = False
        self._faults = RateLimited()
        self._draining = False
        loop.add_reader(self._fd, self._drain)
        self.wake()

    def _drain(self) -> None:
        self._scheduled = False
        if self.closed or self._draining:
            return
        self._draining = True
        try:
            self._drain_batch()
        finally:
            self._draining = False

    def _drain_batch(self) -> None:
        sock = self.sock
        handler = self.handler
        recv = self._recv
        for _ in range(BATCH):
            try:
                frames = recv(sock)
            except zmq.Again:
                return
            except zmq.ZMQError:
                if self.closed:
                    return
                raise
            try:
                handler(frames)
            except Exception:
                self._faults.exception("a message handler failed; the socket is still read")
            if self.closed:
                return
        if not self._scheduled:  # more may be queued: continue on the next loop turn, after other events
            self._scheduled = True
            self.loop.call_soon(self._drain)

    def flush(self) -> None:
        """Handle every message already queued, now: before judging what has not arrived."""
        if self.closed or self._draining:
            return
        self._draining = True
        try:
            while not self.closed and _get(self.sock, _EVENTS) & _POLLIN:
                self._drain_batch()
        finally:
            self._draining = False

    def wake(self) -> None:
        if not self._scheduled and not self.closed:
            self._scheduled = True
            self.loop.call_soon(self._check)

    def _check(self) -> None:
        """After a send: asking ZMQ_EVENTS re-arms ZMQ_FD; drain only if a message slipped in."""
        self._scheduled = False
        if not self.closed and _get(self.sock, _EVENTS) & _POLLIN:
            self._drain()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.loop.remove_reader(self._fd)
            except (ValueError, OSError):
                pass
