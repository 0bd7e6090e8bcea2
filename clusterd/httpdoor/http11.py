"""One HTTP/1.1 connection: httptools parses, this protocol routes, answers in request order.

A request is routed as soon as its head is parsed, so an oversized body gets its 413 before it is
read, and refused requests never reach the dispatcher. Pipelined requests are served concurrently
and answered in the order they came (RFC 9112 section 9.3.2).
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
from collections.abc import Awaitable
from enum import Enum
from typing import TYPE_CHECKING, Any

import httptools

from . import responses, tokens
from .door_state import CLOSE_LINGER_S, DRAIN_FRESH_S, DRAIN_QUIET_S
from .event_stream import EventStream, Takeover

if TYPE_CHECKING:
    from .door_state import DoorState

log = logging.getLogger(__name__)

RPC_PATHS = (b"/", b"/rpc")
WS_PATHS = (b"/", b"/ws")
JSON_TYPES = (b"application/json", b"application/json-rpc", b"application/jsonrequest")
MAX_HEAD_BYTES = 64 * 1024  # request line and headers; httptools itself sets no limit
MAX_PIPELINED = 64  # requests in flight on one connection before it stops reading
# An oversized body is read and dropped (so the client sees the 413, not a reset) up to this much.
DISCARD_LIMIT = 16 * 1024 * 1024


class Route(Enum):
    """What the request in progress will get once its body is complete."""
    RPC = "rpc"
    HOOK = "hook"            # a probe or page hook
    REFUSED = "refused"      # answered already or to be answered with a canned response
    UPGRADE = "upgrade"      # WebSocket: handled when the parser stops at the upgrade
    ANSWERED = "answered"    # 413 went out early; the rest of the body is dropped
    IGNORED = "ignored"      # began after the connection decided to close


def _media_type(value: bytes) -> bytes:
    return value.split(b";", 1)[0].strip().lower()


class HttpConnection(asyncio.Protocol):
    """Parser callbacks (on_*) fill the request in progress; ``on_message_complete`` acts on it."""

    def __init__(self, door: "DoorState") -> None:
        self.door = door
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.next_seq = 0          # sequence number of the next complete request
        self.next_write = 0        # sequence number whose answer goes out next
        self.held: dict[int, bytes] = {}
        self.in_message = False
        self.in_head = False       # between the first byte of a request and the end of its headers
        self.head_bytes = 0        # bytes received while in a head, after the chunk it began in
        self.closing = False       # no more requests are read; close when all answers are out
        self.paused = False
        self.last_active = door.loop.time()
        self.fresh = True          # nothing received yet
        self.linger: asyncio.TimerHandle | None = None  # set once the write side is shut: see _close_now
        self._start_message()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.door._connections.add(self)
        if self.door.draining:
            self.close_when_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.linger is not None:
            self.linger.cancel()
        if self.transport is not None:
            self.transport = None
            self.door._connections.discard(self)
            self.door._connection_gone()

    def data_received(self, data: bytes) -> None:
        self.last_active = self.door.loop.time()
        self.fresh = False
        if self.closing and not self.in_message:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade(data[upgrade.args[0]:])
        except httptools.HttpParserError:
            self.in_message = False
            self._answer_now(responses.response(400, b"bad request\n", keep_alive=False), close=True)
            return
        if self.in_head:
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self.in_message = False
                self._answer_now(responses.response(431, b"request head too large\n", keep_alive=False), close=True)

    # httptools callbacks
    def _start_message(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.body_size = 0
        self.route = Route.REFUSED
        self.refusal = b""
        self.refusal_body = b""
        self.hook: Any = None

    def on_message_begin(self) -> None:
        self.in_message = True
        self.in_head = True
        self.head_bytes = 0
        self._start_message()
        if self.closing:
            self.route = Route.IGNORED

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.route is Route.IGNORED:
            return
        door = self.door
        method = self.parser.get_method()
        path = self.url.split(b"?", 1)[0]
        headers = self.headers
        if path in RPC_PATHS and method == b"POST":
            if door.token is not None and not self._authorized():
                self._refuse(401, b"missing or wrong bearer token\n", b'WWW-Authenticate: Bearer\r\n')
            elif b"content-type" in headers and _media_type(headers[b"content-type"]) not in JSON_TYPES:
                self._refuse(415, b"the body must be JSON (Content-Type: application/json)\n")
            elif int(headers.get(b"content-length", b"0") or 0) > door.max_message_size:
                self._too_large()
            else:
                self.route = Route.RPC
                if headers.get(b"expect", b"").lower() == b"100-continue":
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]
        elif (method == b"GET" and path in WS_PATHS and self.parser.should_upgrade()
              and headers.get(b"upgrade", b"").lower() == b"websocket"):
            if door.token is not None and not (self._authorized() or self._authorized_by_protocol()):
                self._refuse(401, b"missing or wrong bearer token\n", b'WWW-Authenticate: Bearer\r\n')
            elif door.cors_origin not in (None, b"*") and headers.get(b"origin", door.cors_origin) != door.cors_origin:
                self._refuse(403, b"origin not allowed\n")
            else:
                self.route = Route.UPGRADE
        elif path in RPC_PATHS and method == b"OPTIONS" and door.cors_origin is not None:
            self._refuse(204, b"", door.preflight_headers)
        elif path in RPC_PATHS or (path in WS_PATHS and method != b"GET"):
            self._refuse(405, b"use POST for JSON-RPC, or GET with Upgrade: websocket\n", door.allow_header)
        elif path in WS_PATHS:
            self._refuse(426, b"WebSocket upgrade required\n", b"Upgrade: websocket\r\nConnection: Upgrade\r\n")
        else:
            hook = door.page_hooks.get(path)
            if hook is None:
                self._refuse(404, b"not found\n")
            elif method not in (b"GET", b"HEAD"):
                self._refuse(405, b"use GET\n", b"Allow: GET, HEAD\r\n")
            elif door.token is not None and path not in door.open_paths and not self._authorized():
                self._refuse(401, b"missing or wrong bearer token\n", b'WWW-Authenticate: Bearer\r\n')
            else:
                self.route = Route.HOOK
                self.hook = hook

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.route is Route.RPC:
            if self.body_size > self.door.max_message_size:
                self._too_large()
            else:
                self.body.append(body)
        elif self.body_size > DISCARD_LIMIT:
            self._close_now()

    def on_message_complete(self) -> None:
        self.in_message = False
        route = self.route
        if route is Route.UPGRADE:
            return  # the parser stops right after this; data_received takes over
        if route is Route.ANSWERED or route is Route.IGNORED:
            self._close_if_done()
            return
        seq = self.next_seq
        self.next_seq = seq + 1
        keep_alive = self.parser.should_keep_alive() and not self.door.draining and not self.closing
        if not keep_alive:
            self.closing = True
        if route is Route.RPC:
            payload = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            self.body = []
            self._start_rpc(seq, payload, keep_alive)
            if self.next_seq - self.next_write >= MAX_PIPELINED and not self.paused:
                self.paused = True
                self.transport.pause_reading()  # type: ignore[union-attr]
        elif route is Route.HOOK:
            self._serve_hook(seq, self.hook, keep_alive)
        else:
            self._answer(seq, self.refusal + (b"" if keep_alive else b"Connection: close\r\n") + b"\r\n"
                         + self.refusal_body)

    # routes
    def _start_rpc(self, seq: int, payload: bytes, keep_alive: bool) -> None:
        door = self.door
        door._call_started()
        try:
            answer = door.dispatch(payload)
        except Exception:
            log.exception("dispatch failed on an HTTP request")
            door._call_finished()
            self._answer(seq, responses.response(500, b"internal error\n", keep_alive=keep_alive))
            return
        if answer is None or isinstance(answer, bytes):
            door._call_finished()
            self._answer_rpc(seq, answer, keep_alive)
            return
        task = door.loop.create_task(self._finish_rpc(seq, answer, keep_alive))
        door._tasks.add(task)
        task.add_done_callback(door._tasks.discard)

    async def _finish_rpc(self, seq: int, pending: Awaitable[bytes | None], keep_alive: bool) -> None:
        try:
            answer = await pending
        except Exception:
            log.exception("dispatch failed on an HTTP request")
            self._answer(seq, responses.response(500, b"internal error\n", keep_alive=keep_alive))
            return
        finally:
            self.door._call_finished()
        self._answer_rpc(seq, answer, keep_alive)

    def _answer_rpc(self, seq: int, answer: bytes | None, keep_alive: bool) -> None:
        door = self.door
        if keep_alive and door.draining:
            keep_alive = False
            self.closing = True
        if answer is None:
            self._answer(seq, responses.no_content(keep_alive, door.cors_headers))
        else:
            self._answer(seq, responses.json_ok(answer, keep_alive, door.cors_headers))

    def _serve_hook(self, seq: int, hook: Any, keep_alive: bool) -> None:
        head_only = self.parser.get_method() == b"HEAD"
        try:
            result = hook()
        except Exception:
            log.exception("HTTP hook %r failed", hook)
            self._answer(seq, responses.response(500, b"internal error\n", keep_alive=keep_alive))
            return
        if inspect.isawaitable(result):
            task = self.door.loop.create_task(self._await_hook(seq, result, keep_alive, head_only))
            self.door._tasks.add(task)
            task.add_done_callback(self.door._tasks.discard)
        elif type(result) is Takeover:
            self._stream(seq, result, head_only)
        else:
            self._answer(seq, self._hook_response(result, keep_alive, head_only))

    async def _await_hook(self, seq: int, pending: Any, keep_alive: bool, head_only: bool) -> None:
        try:
            result = await pending
        except Exception:
            log.exception("HTTP hook failed")
            self._answer(seq, responses.response(500, b"internal error\n", keep_alive=keep_alive))
            return
        self._answer(seq, self._hook_response(result, keep_alive, head_only))

    @staticmethod
    def _hook_response(result: Any, keep_alive: bool, head_only: bool) -> bytes:
        """A hook returns a ``Page`` (status, content type, body[, header lines])."""
        status, content_type, body = result[:3]
        extra = result[3] if len(result) > 3 else b""
        whole = responses.response(status, body, content_type, keep_alive=keep_alive, extra=extra)
        if head_only:
            return whole[: len(whole) - len(body)]
        return whole

    def _stream(self, seq: int, takeover: Takeover, head_only: bool) -> None:
        """Hand the connection to an event stream (it ends the connection): only as the last
        answer due, and within the door's bound on open streams."""
        door = self.door
        if head_only:
            self._answer(seq, responses.response(405, b"use GET\n", extra=b"Allow: GET\r\n"))
        elif seq != self.next_write or self.next_seq != seq + 1:
            self.closing = True
            self._answer(seq, responses.response(400, b"a stream may not follow pipelined requests\n",
                                                 keep_alive=False))
        elif len(door._streams) >= door.max_streams and not door.draining:
            self.closing = True
            self._answer(seq, responses.response(503, b"too many event streams open\n", keep_alive=False,
                                                 extra=b"Retry-After: 5\r\n"))
        elif self.transport is not None:
            if self.paused:
                self.transport.resume_reading()  # the stream must see the client leave
            stream = EventStream(door, self.transport)
            self.transport = None
            self.closing = True
            self.next_write = self.next_seq
            door._connections.discard(self)
            stream.start()
            door._connection_gone()
            if door.draining:
                stream.close()  # the client retries (SSE "retry"), on a worker that is not stopping
            else:
                takeover.open(stream)

    # refusals
    def _refuse(self, status: int, body: bytes, extra: bytes = b"") -> None:
        """Remember a canned answer; it goes out once the (ignored) body has been read."""
        self.route = Route.REFUSED
        head = [b"HTTP/1.1 %d %s\r\n" % (status, responses.HTTPStatus(status).phrase.encode()),
                responses.date_line(), extra, self.door.cors_headers]
        if status != 204:
            head.append(b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body))
        self.refusal = b"".join(head)
        self.refusal_body = body if status != 204 else b""

    def _too_large(self) -> None:
        """413 at once, then read and drop the rest of the body, then close."""
        self.route = Route.ANSWERED
        self.body = []
        seq = self.next_seq
        self.next_seq = seq + 1
        self.closing = True
        self._answer(seq, responses.response(413, b"message larger than max_message_size\n", keep_alive=False,
                                             extra=self.door.cors_headers))

    def _authorized(self) -> bool:
        given = self.headers.get(b"authorization", b"")
        return hmac.compare_digest(given, self.door.bearer)  # type: ignore[arg-type]

    def _authorized_by_protocol(self) -> bool:
        """Browsers cannot set Authorization on a WebSocket: ``Sec-WebSocket-Protocol: bearer.<token>``."""
        given = tokens.protocol_token(self.headers.get(b"sec-websocket-protocol", b""))
        return given is not None and tokens.same(given, self.door.token.encode())  # type: ignore[union-attr]

    # WebSocket
    def _upgrade(self, rest: bytes) -> None:
        transport = self.transport
        if self.route is not Route.UPGRADE or transport is None:
            # Another protocol's upgrade (h2c...): answered as plain HTTP/1.1, then closed.
            self.closing = True
            self._close_if_done()
            return
        if self.next_write != self.next_seq:
            self._answer_now(responses.response(400, b"upgrade while answers are pending\n", keep_alive=False),
                             close=True)
            return
        from . import websocket
        head = [b"GET " + self.url + b" HTTP/1.1\r\n"]
        head.extend(name + b": " + value + b"\r\n" for name, value in self.headers.items())
        head.append(b"\r\n")
        self.transport = None
        self.door._connections.discard(self)
        websocket.take_over(self.door, transport, b"".join(head), rest)

    # answers, in request order
    def _answer(self, seq: int, data: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        if seq != self.next_write:
            self.held[seq] = data
            return
        transport.write(data)
        seq += 1
        held = self.held
        while held:
            data = held.pop(seq, None)
            if data is None:
                break
            transport.write(data)
            seq += 1
        self.next_write = seq
        if self.paused and self.next_seq - seq < MAX_PIPELINED // 2:
            self.paused = False
            transport.resume_reading()
        if self.closing:
            self._close_if_done()

    def _answer_now(self, data: bytes, close: bool) -> None:
        if self.transport is not None:
            self.transport.write(data)
        if close:
            self._close_now()

    def _close_if_done(self) -> None:
        if self.next_write == self.next_seq and not self.in_message and self.transport is not None:
            self._close_now()

    def _close_now(self) -> None:
        """No more requests; close once what is written is out, without ever resetting the connection.

        The write side is shut (FIN after the last answer), then whatever the client still sends is
        read and dropped until it closes too, for at most CLOSE_LINGER_S: a socket closed with unread
        bytes makes the kernel send RST, and an RST can destroy an answer the client has not read yet.
        """
        self.closing = True
        transport = self.transport
        if transport is None or self.linger is not None:
            return
        if not transport.can_write_eof():
            transport.close()
            return
        if self.paused:
            self.paused = False
            transport.resume_reading()
        transport.write_eof()
        self.linger = self.door.loop.call_later(CLOSE_LINGER_S, transport.close)

    def close_when_idle(self) -> None:
        """Drain: a busy connection closes after its last answer (sent with ``Connection: close``).

        One between requests is closed only once it has been quiet for DRAIN_QUIET_S (DRAIN_FRESH_S
        when it has sent nothing yet): a keep-alive client may have sent its next request already,
        and closing under it would lose it; that request is answered with ``Connection: close``
        instead. Whatever is closed unanswered was never read, so never run: a client may send it
        again on a new connection.
        """
        if self.next_write != self.next_seq or self.in_message:
            self.closing = True
            return
        quiet_for = self.door.loop.time() - self.last_active  # one idle for long closes at once
        self.door.loop.call_later(max(0.0, self._quiet_needed() - quiet_for), self._close_if_still_idle)

    def _quiet_needed(self) -> float:
        return DRAIN_FRESH_S if self.fresh else DRAIN_QUIET_S

    def _close_if_still_idle(self) -> None:
        if self.transport is None or self.closing or self.next_write != self.next_seq or self.in_message:
            return  # closed, or closing after the answer it is writing
        quiet_for = self.door.loop.time() - self.last_active
        needed = self._quiet_needed()
        if quiet_for < needed:  # bytes came lately (a request's start): wait for quiet again
            self.door.loop.call_later(needed - quiet_for, self._close_if_still_idle)
        else:
            self._close_now()

    def close_if_idle_since(self, horizon: float) -> None:
        """Close if nothing is in flight and nothing arrived since ``horizon`` (loop time)."""
        if self.last_active < horizon and self.next_write == self.next_seq:
            self._close_now()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
