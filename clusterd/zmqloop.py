"""Driving plain (non-asyncio) ZeroMQ sockets from an asyncio loop without a future per message.

The loop watches the socket's ZMQ_FD; when it signals, every queued message is drained at once.
ZMQ_FD is edge-triggered: a send on a socket can swallow the notice of a message that arrived
meanwhile, so whoever sends on a socket calls wake() on its reader, which schedules one more drain
(at most one per loop turn).

A send is the dearest step of a small message: its last frame wakes ZeroMQ's I/O thread (a system
call and, on a busy machine, a context switch). An Outbox therefore gathers the frames meant for
one peer and sends them as one multipart message: at the end of the drain that produced them, or
on the next loop turn when they were produced elsewhere (a task), or as soon as PIPELINE_FRAMES of
them wait. The receiver reads each frame of
such a message as one item (worker link frames name their own kind in their first byte).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import zmq
from zmq.backend import Socket as _Backend

from .ops.log import RateLimited

BATCH = 512
# A peer's frames leave once this many wait, without waiting for the end of the turn: the peer (a
# process on another core) works on them while this side produces the rest. Sent only at the end of
# the turn, 64 calls in flight had the master and a worker take turns on one core instead of using
# two: 93k -> 140k master->worker calls/s with this (`clusterd bench --links`).
PIPELINE_FRAMES = 16
FLUSH_BATCHES = 8  # a flush handles at most this many batches now; the rest is read on later loop turns

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


class Outbox:
    """Frames waiting to leave on one socket, grouped by peer: one multipart message per peer.

    For a ROUTER, peer is the routing id (sent first); for a DEALER, peer is None. on_failure(peer,
    frames) is told when a peer's message cannot be sent (ROUTER_MANDATORY: that peer is gone).
    """

    __slots__ = ("loop", "sock", "pending", "holding", "_scheduled", "on_failure", "after_send", "_ready")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: zmq.Socket,
                 on_failure: Callable[[Any, list[bytes]], None] | None = None) -> None:
        self.loop = loop
        self.sock = sock
        self.pending: dict[Any, list[bytes]] = {}
        self.holding = 0         # drains running that send this outbox when they end
        self._scheduled = False
        self.on_failure = on_failure
        self.after_send: Callable[[], None] | None = None  # the socket's reader.rearm
        # the callbacks the loop runs before it polls again (asyncio's own loop); when none is
        # waiting, nobody else can add a frame this turn and a frame leaves at once
        self._ready = getattr(loop, "_ready", (None,))

    def add(self, peer: Any, frame: bytes) -> None:
        frames = self.pending.get(peer)
        if frames is None:
            self.pending[peer] = [frame]
            if not self.holding and not self._scheduled:
                if not self._ready:
                    self.flush()  # nothing else runs before the loop polls: no frame to wait for
                    return
                self._scheduled = True
                self.loop.call_soon(self.flush)
        else:
            frames.append(frame)
            if len(frames) >= PIPELINE_FRAMES:
                self._send_now(peer)

    def _send_now(self, peer: Any) -> None:
        """A peer's frames leave before the turn ends: it starts on them while we produce the rest."""
        self._deliver(peer, self.pending.pop(peer))
        if self.after_send is not None:
            self.after_send()

    def _deliver(self, peer: Any, frames: list[bytes]) -> None:
        if not self.send_message(peer, frames) and self.on_failure is not None:
            self.on_failure(peer, frames)

    def add_alone(self, peer: Any, frame: bytes) -> None:
        """add() for a frame its sender knows to be alone (its only call in flight): sent at once when
        nothing else waits and no drain runs, without a loop turn (on uvloop, whose queue of ready
        callbacks add() cannot see, that turn is one more poll per call)."""
        if self.holding or self.pending:
            self.add(peer, frame)
            return
        self.pending[peer] = [frame]
        self.flush()

    def hold(self) -> None:
        """A drain starts: what it adds leaves together when it ends (release)."""
        self.holding += 1

    def release(self) -> None:
        self.holding -= 1
        if not self.holding:
            self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if not self.pending:
            return
        pending = self.pending
        self.pending = {}
        for peer, frames in pending.items():
            self._deliver(peer, frames)
        if self.after_send is not None:
            self.after_send()

    def send_message(self, peer: Any, frames: list[bytes]) -> bool:
        """One peer's frames as one message; False when that peer cannot be reached."""
        sock = self.sock
        try:
            if peer is not None:
                _send(sock, peer, SNDMORE)
            send_frames(sock, frames)
        except zmq.ZMQError:
            return False
        return True


class SocketReader:
    """Calls handler(frames) for each message arriving on sock; sends its outboxes after each drain.

    Nothing a handler raises stops the reader: the handler answers what it can, the reader logs the
    rest (rate-limited) and reads on."""

    __slots__ = ("loop", "sock", "handler", "_fd", "_scheduled", "closed", "_recv", "_faults", "_draining",
                 "outbox", "holds")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: zmq.Socket,
                 handler: Callable[[list[bytes]], None], outbox: Outbox | None = None,
                 holds: tuple[Outbox, ...] = ()) -> None:
        """outbox: this socket's own; holds: the outboxes (its own and others) a drain's handlers
        add to, each sent once when the drain ends."""
        self.loop = loop
        self.sock = sock
        self.handler = handler
        self.outbox = outbox
        if outbox is not None:
            outbox.after_send = self.rearm
        self.holds = holds or ((outbox,) if outbox is not None else ())
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
        holds = self.holds
        for outbox in holds:
            outbox.hold()
        try:
            self._drain_batch()
        finally:
            self._draining = False
            for outbox in holds:
                outbox.release()

    def _drain_batch(self) -> bool:
        """Read up to BATCH messages; True if the socket may hold more."""
        sock = self.sock
        handler = self.handler
        recv = self._recv
        for i in range(BATCH):
            # the socket's signal promises a message (usually): the first recv just tries; after it,
            # asking ZMQ_EVENTS costs less than the zmq.Again a recv on an empty socket raises
            try:
                if i and not _get(sock, _EVENTS) & _POLLIN:
                    return
                frames = recv(sock)
            except zmq.Again:
                return False
            except zmq.ZMQError as exc:
                if self.closed or exc.errno in (zmq.ETERM, zmq.ENOTSOCK):
                    self.close()
                    return False
                # whatever else libzmq reports for one message, the next ones are still read
                self._faults.exception("reading a message failed; the socket is still read")
                continue
            try:
                handler(frames)
            except Exception:
                self._faults.exception("a message handler failed; the socket is still read")
            if self.closed:
                return False
        if not self._scheduled:  # more may be queued: continue on the next loop turn, after other events
            self._scheduled = True
            self.loop.call_soon(self._drain)
        return True

    def flush(self) -> None:
        """Handle the messages already queued, now: before judging what has not arrived. Bounded: a peer
        that sends as fast as they are read cannot keep the caller (the health check, the deadline
        sweep) here; what is left is read on the next loop turns."""
        if self.closed or self._draining:
            return
        self._draining = True
        holds = self.holds
        for outbox in holds:
            outbox.hold()
        try:
            for _ in range(FLUSH_BATCHES):
                if self.closed or not _get(self.sock, _EVENTS) & _POLLIN or not self._drain_batch():
                    break
        finally:
            self._draining = False
            for outbox in holds:
                outbox.release()

    def wake(self) -> None:
        if not self._scheduled and not self.closed:
            self._scheduled = True
            self.loop.call_soon(self._check)

    def rearm(self) -> None:
        """Right after a send: ask ZMQ_EVENTS now (re-arms ZMQ_FD), drain soon if a message is waiting."""
        if not self._scheduled and not self.closed and _get(self.sock, _EVENTS) & _POLLIN:
            self._scheduled = True
            self.loop.call_soon(self._drain)

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
