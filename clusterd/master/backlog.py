"""Answers a client has not taken yet (SECURITY.md, "Bytes per client").

A client's answers go to its connection's queue in libzmq, up to the send high-water mark. When that
queue is full (the client does not read), a send fails at once (EAGAIN, ZMQ_ROUTER_MANDATORY): the
answer is then kept here, in a small backlog of that client, instead of being dropped. An answer to a
counted call stays counted in that client's calls in flight until it is handed to libzmq, so the
backlog holds at most --max-client-inflight such answers; refusals (-32005) and batch answers are kept
up to a bound of their own (UNCOUNTED_EXTRA plus --max-client-inflight of them, and --max-message-size
bytes), past which they are dropped and counted. While a client has a backlog its new calls are refused
with -32005, the backlog is retried whenever that client sends again and on a short timer, and the
timer runs only while some backlog exists.
"""

from __future__ import annotations

import asyncio
from collections import deque

import zmq

from .. import log
from ..zmqloop import NOBLOCK, send_frames
from .view import MasterView

RETRY_S = 0.05
UNCOUNTED_EXTRA = 64
_EAGAIN = zmq.EAGAIN


class _Backlog:
    __slots__ = ("items", "uncounted", "uncounted_bytes")

    def __init__(self) -> None:
        self.items: deque[tuple[list[bytes], bytes, bool]] = deque()
        self.uncounted = 0
        self.uncounted_bytes = 0


class Backlogs:
    def __init__(self, router: MasterView) -> None:
        self.router = router
        self.by_client: dict[tuple[zmq.Socket, bytes], _Backlog] = {}
        self.dropped = 0   # refusals and batch answers past the bound: never delivered
        self._timer: asyncio.TimerHandle | None = None
        limit = router.config.max_client_inflight
        self.max_uncounted = (limit or 100000) + UNCOUNTED_EXTRA
        self.max_uncounted_bytes = router.config.max_message_size or 16 * 2 ** 20
        self._faults = log.RateLimited()

    def keep(self, sock: zmq.Socket, envelope: list[bytes], payload: bytes, counted: bool) -> None:
        """Keep an answer the client's queue has no room for (a counted one always)."""
        key = (sock, envelope[0])
        backlog = self.by_client.get(key)
        if backlog is None:
            backlog = self.by_client[key] = _Backlog()
        if not counted:
            if backlog.uncounted >= self.max_uncounted or (
                    backlog.uncounted and backlog.uncounted_bytes + len(payload) > self.max_uncounted_bytes):
                self.dropped += 1
                self._faults.warning("a client that does not read its answers has more refusals waiting "
                                     "than the bound allows: one dropped")
                return
            backlog.uncounted += 1
            backlog.uncounted_bytes += len(payload)
        backlog.items.append((envelope, payload, counted))
        if self._timer is None:
            self._timer = self.router.loop.call_later(RETRY_S, self._turn)

    def retry(self, sock: zmq.Socket, ident: bytes) -> bool:
        """Hand the client's kept answers to libzmq while its queue has room; True once none is left."""
        key = (sock, ident)
        backlog = self.by_client.get(key)
        if backlog is None:
            return True
        items = backlog.items
        counts = self.router.client_calls.get(sock)
        while items:
            envelope, payload, counted = items[0]
            try:
                send_frames(sock, envelope + [payload], NOBLOCK)
            except zmq.ZMQError as exc:
                if exc.errno == _EAGAIN:
                    return False
                # the client is gone: what it was owed is dropped, its calls no longer count
            items.popleft()
            if counted:
                if counts is not None:
                    self.router.release_calls(counts, ident)
            else:
                backlog.uncounted -= 1
                backlog.uncounted_bytes -= len(payload)
        del self.by_client[key]
        self.router.readers[sock].wake()
        return True

    def _turn(self) -> None:
        self._timer = None
        for sock, ident in list(self.by_client):
            try:
                self.retry(sock, ident)
            except Exception:  # a periodic task never stops
                self._faults.exception("retrying a client's kept answers failed")
                self.by_client.pop((sock, ident), None)
        if self.by_client:
            self._timer = self.router.loop.call_later(RETRY_S, self._turn)

    def held(self) -> int:
        return sum(len(b.items) for b in self.by_client.values())

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


__all__ = ["Backlogs"]
