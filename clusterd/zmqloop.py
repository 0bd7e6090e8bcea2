"""Driving plain (non-asyncio) ZeroMQ sockets from an asyncio loop without a future per message.

The loop watches the socket's ZMQ_FD; when it signals, every queued message is drained at once.
ZMQ_FD is edge-triggered: a send on a socket can swallow the notice of a message that arrived
meanwhile, so whoever sends on a socket calls wake() on its reader, which schedules one more drain
(at most one per loop turn).
"""

from __future__ import annotations

import asyncio
from typing import Callable

import zmq

BATCH = 512


class SocketReader:
    """Calls handler(frames) for each message arriving on sock."""

    __slots__ = ("loop", "sock", "handler", "_fd", "_scheduled", "closed")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: zmq.Socket,
                 handler: Callable[[list[bytes]], None]) -> None:
        self.loop = loop
        self.sock = sock
        self.handler = handler
        self._fd = sock.getsockopt(zmq.FD)
        self._scheduled = False
        self.closed = False
        loop.add_reader(self._fd, self._drain)
        self.wake()

    def _drain(self) -> None:
        self._scheduled = False
        if self.closed:
            return
        recv = self.sock.recv_multipart
        handler = self.handler
        for _ in range(BATCH):
            try:
                frames = recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                if self.closed:
                    return
                raise
            handler(frames)
            if self.closed:
                return
        self.wake()  # more may be queued: continue on the next loop turn, after other events

    def wake(self) -> None:
        if not self._scheduled and not self.closed:
            self._scheduled = True
            self.loop.call_soon(self._drain)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.loop.remove_reader(self._fd)
            except (ValueError, OSError):
                pass
