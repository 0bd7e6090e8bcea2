"""JSON-RPC over WebSocket: picows takes over a connection the HTTP side has already accepted for upgrade.

picows (Cython) parses and writes frames several times faster than the pure-Python stacks (see
bench_refs.py). Its own server only answers plain HTTP with ``Connection: close``, so the HTTP side
(httptools) owns the socket and hands it to picows at the Upgrade; picows then sends the 101 itself
from the replayed request head. Every text (or binary) message is one dispatch task; answers are
sent as they finish, in any order. A dispatcher that answers at once (bytes or None) costs no task;
an awaitable answer runs in its own task.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)
from picows.picows import WSAutoPingStrategy, WSProtocol

from .door_state import CLOSE_LINGER_S, DRAIN_QUIET_S

if TYPE_CHECKING:
    from .door_state import DoorState

log = logging.getLogger(__name__)
# picows logs every accepted connection at INFO; a worker serving thousands of them should not.
_picows_log = logging.getLogger("clusterd.httpdoor.picows")
_picows_log.setLevel(logging.WARNING)

HANDSHAKE_TIMEOUT_S = 5.0
INTERNAL_ERROR = b'{"jsonrpc":"2.0","error":{"code":-32603,"message":"Internal error"},"id":null}'
MAX_IN_FLIGHT = 1024  # per connection: past this the connection stops reading until answers go out
_TCP_CORK = getattr(socket, "TCP_CORK", None)  # Linux


def _cork(transport: WSTransport, on: bool) -> None:
    """Hold the bytes written from now on (or let them go): the last answer and the Close leave in one
    segment, so a client reads the Close with that answer, before it sends its next call."""
    if _TCP_CORK is None:
        return
    try:
        transport.underlying_transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, _TCP_CORK, on)
    except (OSError, AttributeError):
        pass


class _UnixSocketView:
    """What picows asks of ``transport.get_extra_info('socket')``, for a unix socket (no TCP options)."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def fileno(self) -> int:
        return self._sock.fileno()

    def setsockopt(self, *args: Any) -> None:
        pass

    def getsockopt(self, *args: Any) -> int:
        return 0


class _UnixTransportView:
    """The real transport's methods, bound once, with a socket view picows can set TCP options on."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        for name in ("write", "writelines", "get_write_buffer_size", "close", "abort", "is_closing",
                     "pause_reading", "resume_reading", "set_protocol", "get_protocol"):
            setattr(self, name, getattr(transport, name))
        self._socket = _UnixSocketView(transport.get_extra_info("socket"))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self._socket
        return self._transport.get_extra_info(name, default)


class WebSocketSession(WSListener):
    """One upgraded connection: frames in, dispatch tasks, frames out."""

    def __init__(self, door: "DoorState") -> None:
        super().__init__()
        self.door = door
        self.transport: WSTransport | None = None
        self.in_flight = 0
        self._fragments: list[bytes] | None = None
        self._fragments_size = 0
        self._paused = False
        self._closing = False       # draining: the next answer (or a quiet period) brings the Close
        self._close_soon = False    # the Close is due at the end of this loop turn
        self._close_sent = False    # frames read from now on are not run: the client resends them
        self._timer: asyncio.TimerHandle | None = None

    # picows callbacks
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.door._sessions.add(self)
        if self.door.draining:
            self.close_when_idle()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.transport = None
        self.door._sessions.discard(self)
        self.door._connection_gone()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT or kind == WSMsgType.BINARY:
            if frame.fin:
                self._call(frame.get_payload_as_bytes())
            else:
                self._fragments = [frame.get_payload_as_bytes()]
                self._fragments_size = len(self._fragments[0])
        elif kind == WSMsgType.CONTINUATION:
            if self._fragments is None:
                transport.send_close(WSCloseCode.PROTOCOL_ERROR)
                transport.disconnect()
                return
            part = frame.get_payload_as_bytes()
            self._fragments_size += len(part)
            if self._fragments_size > self.door.max_message_size:
                transport.send_close(WSCloseCode.MESSAGE_TOO_BIG)
                transport.disconnect()
                return
            self._fragments.append(part)
            if frame.fin:
                payload = b"".join(self._fragments)
                self._fragments = None
                self._call(payload)
        elif kind == WSMsgType.CLOSE:
            if not self._close_sent:
                transport.send_close(frame.get_close_code())
            transport.disconnect()  # the client sends nothing after its Close: no unread byte, no RST

    # calls
    def _call(self, payload: bytes) -> None:
        if self._close_sent:
            return  # never run, never answered: the client sees our Close with it outstanding
        door = self.door
        door._call_started()
        try:
            answer = door.ws_dispatch(payload)
        except Exception:
            log.exception("dispatch failed on a WebSocket message")
            answer = INTERNAL_ERROR
        if answer is None or isinstance(answer, bytes):
            door._call_finished()
            self._send(answer)
            return
        self.in_flight += 1
        task = door.loop.create_task(self._finish(answer))
        door._tasks.add(task)
        task.add_done_callback(door._tasks.discard)
        if self.in_flight >= MAX_IN_FLIGHT and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.underlying_transport.pause_reading()

    async def _finish(self, pending: Awaitable[bytes | None]) -> None:
        try:
            answer = await pending
        except Exception:
            log.exception("dispatch failed on a WebSocket message")
            answer = INTERNAL_ERROR
        finally:
            self.in_flight -= 1
            self.door._call_finished()
        self._send(answer)
        transport = self.transport
        if transport is None:
            return
        if self._paused and self.in_flight < MAX_IN_FLIGHT // 2:
            self._paused = False
            transport.underlying_transport.resume_reading()

    def _send(self, answer: bytes | None) -> None:
        if self._closing:
            return self._send_closing(answer)
        transport = self.transport
        if answer is not None and transport is not None:
            transport.send(WSMsgType.TEXT, answer)

    # the drain
    def close_when_idle(self) -> None:
        """Drain: answer every call already read, then close with 1001 (going away).

        The Close goes out with the last answer (in the same TCP segment), so a client that calls
        one at a time reads it before it sends again. With no call running, the session waits for
        DRAIN_QUIET_S first: a call already on its way is answered, and the Close rides on its answer.
        """
        if self._closing:
            return
        self._closing = True
        if self.in_flight == 0:
            self._timer = self.door.loop.call_later(DRAIN_QUIET_S, self._close_going_away)

    def _send_closing(self, answer: bytes | None) -> None:
        transport = self.transport
        if transport is None or self._close_sent:
            return
        if self.in_flight == 0 and not self._close_soon:
            # the last answer: it and the Close leave together once this loop turn (which may
            # answer more frames of the same read) is over
            self._close_soon = True
            _cork(transport, True)
            self.door.loop.call_soon(self._close_going_away)
        if answer is not None:
            transport.send(WSMsgType.TEXT, answer)

    def _close_going_away(self) -> None:
        self._close_soon = False
        transport = self.transport
        if transport is None or self._close_sent or transport.is_disconnected:
            return
        if self.in_flight:  # calls still running: the last one's answer brings the Close
            _cork(transport, False)
            return
        self._close_sent = True
        transport.send_close(WSCloseCode.GOING_AWAY, b"server draining")
        _cork(transport, False)
        # wait for the client's Close (it ends the session), then close the TCP connection
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.door.loop.call_later(CLOSE_LINGER_S, transport.disconnect)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.disconnect(graceful=False)


def _session_factory(door: "DoorState") -> Any:
    """A session per upgrade; when the client offered subprotocols, the 101 names one of them (see tokens.py)."""
    from .tokens import chosen_protocol

    def make(request: Any) -> Any:
        offered = request.headers.get("Sec-WebSocket-Protocol")
        chosen = chosen_protocol(offered.encode()) if offered else None
        if chosen is None:
            return WebSocketSession(door)
        response = WSUpgradeResponse.create_101_response({"Sec-WebSocket-Protocol": chosen.decode()})
        return WSUpgradeResponseWithListener(response, WebSocketSession(door))
    return make


def take_over(door: "DoorState", transport: asyncio.Transport, request_head: bytes, rest: bytes) -> None:
    """Switch ``transport`` to WebSocket: picows replays the upgrade request and answers it (101)."""
    proto = WSProtocol(
        None, None, False,                   # host:port and path are for clients
        _session_factory(door),
        _picows_log,
        True,                                # disconnect when a listener callback raises
        HANDSHAKE_TIMEOUT_S,
        False, 20, 20, WSAutoPingStrategy.PING_WHEN_IDLE,  # no server-side pings
        True,                                # answer pings
        door.max_message_size,
        None,                                # extra response headers
        16 * 1024,                           # initial read buffer
    )
    if transport.get_extra_info("socket").family == socket.AF_UNIX:
        transport = _UnixTransportView(transport)  # type: ignore[assignment]
    transport.set_protocol(proto)
    proto.connection_made(transport)
    data = request_head + rest
    while data:
        buf = proto.get_buffer(len(data))
        n = min(len(buf), len(data))
        buf[:n] = data[:n]
        proto.buffer_updated(n)
        data = data[n:]
