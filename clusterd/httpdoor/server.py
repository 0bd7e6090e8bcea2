"""HttpDoor: JSON-RPC over HTTP/1.1 and WebSocket on sockets someone else created and listens on.

The master creates the listening sockets and keeps them open across every worker restart; each
worker passes its inherited copy to ``HttpDoor.serve`` and the kernel spreads connections among the
workers. The door knows nothing of JSON-RPC beyond content types: ``dispatch(payload)`` gets the
request bytes and returns the response bytes, or None when there is nothing to answer
(notifications), which HTTP turns into 204, or an awaitable of one of those.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .door_state import Dispatch, DoorState
from .event_stream import EventStream, Takeover
from .http11 import HttpConnection
from .responses import JSON, TEXT

__all__ = ["DEFAULT_IDLE_TIMEOUT", "DEFAULT_MAX_MESSAGE_SIZE", "DEFAULT_MAX_STREAMS", "Dispatch", "EventStream",
           "HttpDoor", "Page", "Probes", "Takeover"]

DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024
# An HTTP connection with no call in flight and no byte received for this long is closed (a request
# half sent counts as idle: slow clients cannot hold connections forever). Longer than the 60 s idle
# timeout of common load balancers, so they, not we, close their pooled connections.
DEFAULT_IDLE_TIMEOUT = 75.0
# Event streams (the dashboard's) open at once on one door; more get 503.
DEFAULT_MAX_STREAMS = 16
DASHBOARD_EVENTS = b"/dashboard/events"


class Page(NamedTuple):
    """What a probe or page hook returns (or an awaitable of it). ``headers``: raw lines, each ending in CRLF."""
    status: int
    content_type: bytes
    body: bytes
    headers: bytes = b""


def _flag_page(ok: bool, what: str) -> Page:
    return Page(200, TEXT, b"ok\n") if ok else Page(503, TEXT, f"not {what}\n".encode())


@dataclass
class Probes:
    """The non-RPC paths. livez/readyz say yes or no; the others return a body, or are absent (404).

    ``status`` returns the status document as JSON bytes, ``metrics`` Prometheus text, ``dashboard``
    an HTML page; each may be a plain function or a coroutine function, and may return a whole
    ``Page`` instead of a body. ``dashboard_files`` serves GET /dashboard/<name>, and
    ``dashboard_events`` the page's event stream at GET /dashboard/events (it returns a ``Takeover``).
    With a token, /livez, /readyz and the dashboard's paths stay open (the page shows what /status
    does, without the token a browser could not send).
    """
    livez: Callable[[], bool] = lambda: True
    readyz: Callable[[], bool] = lambda: True
    status: Callable[[], Any] | None = None
    metrics: Callable[[], Any] | None = None
    dashboard: Callable[[], Any] | None = None
    dashboard_files: Mapping[str, Callable[[], Any]] = field(default_factory=dict)
    dashboard_events: Callable[[], Takeover] | None = None

    def open_paths(self) -> frozenset[bytes]:
        """The paths served without the bearer token."""
        paths = {b"/livez", b"/readyz"}
        if self.dashboard is not None:
            paths.add(b"/dashboard")
            paths.update(b"/dashboard/" + name.encode() for name in self.dashboard_files)
            if self.dashboard_events is not None:
                paths.add(DASHBOARD_EVENTS)
        return frozenset(paths)

    def pages(self) -> dict[bytes, Callable[[], Any]]:
        livez, readyz = self.livez, self.readyz
        pages: dict[bytes, Callable[[], Any]] = {
            b"/livez": lambda: _flag_page(livez(), "live"),
            b"/readyz": lambda: _flag_page(readyz(), "ready"),
        }
        for path, hook, content_type in ((b"/status", self.status, JSON),
                                         (b"/metrics", self.metrics, b"text/plain; version=0.0.4; charset=utf-8"),
                                         (b"/dashboard", self.dashboard, b"text/html; charset=utf-8")):
            if hook is not None:
                pages[path] = _page_hook(hook, content_type)
        if self.dashboard is not None:
            for name, hook in self.dashboard_files.items():
                pages[b"/dashboard/" + name.encode()] = _page_hook(hook, b"application/octet-stream")
            if self.dashboard_events is not None:
                pages[DASHBOARD_EVENTS] = self.dashboard_events
        return pages


def _page_hook(hook: Callable[[], Any], content_type: bytes) -> Callable[[], Any]:
    def page() -> Any:
        result = hook()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            return _page_later(result, content_type)
        return _as_page(result, content_type)
    return page


async def _page_later(pending: Awaitable[Any], content_type: bytes) -> Page:
    return _as_page(await pending, content_type)


def _as_page(result: Any, content_type: bytes) -> Page:
    if isinstance(result, Page):
        return result
    return Page(200, content_type, result.encode() if isinstance(result, str) else result)


class HttpDoor(DoorState):
    """Serve JSON-RPC on HTTP POST / and /rpc, WebSocket on GET / and /ws, probes beside them."""

    def __init__(self, dispatch: Dispatch, *, probes: Probes | None = None,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, token: str | None = None,
                 cors_origin: str | None = None, idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 ws_dispatch: Dispatch | None = None, max_streams: int = DEFAULT_MAX_STREAMS) -> None:
        self.dispatch = dispatch
        self.ws_dispatch = ws_dispatch or dispatch  # WebSocket messages: the same, unless told apart
        self.idle_timeout = idle_timeout
        self.max_message_size = max_message_size
        self.token = token
        self.bearer = b"Bearer " + token.encode() if token is not None else None
        self.cors_origin = cors_origin.encode() if cors_origin is not None else None
        self.cors_headers = b""
        self.preflight_headers = b""
        if self.cors_origin is not None:
            self.cors_headers = b"Access-Control-Allow-Origin: " + self.cors_origin + b"\r\n"
            if self.cors_origin != b"*":
                self.cors_headers += b"Vary: Origin\r\n"
            self.preflight_headers = (b"Access-Control-Allow-Methods: POST, OPTIONS\r\n"
                                      b"Access-Control-Allow-Headers: Content-Type, Authorization\r\n"
                                      b"Access-Control-Max-Age: 600\r\n")
        self.allow_header = b"Allow: POST, OPTIONS\r\n" if self.cors_origin is not None else b"Allow: POST\r\n"
        probes = probes or Probes()
        self.page_hooks = probes.pages()
        self.open_paths = probes.open_paths()
        self.max_streams = max_streams
        self.draining = False
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by serve()
        self._servers: list[asyncio.base_events.Server] = []
        self._connections: set[Any] = set()   # HttpConnection, not yet upgraded
        self._sessions: set[Any] = set()      # websocket.WebSocketSession
        self._streams: set[EventStream] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._in_flight = 0
        self.served = 0   # calls answered (or failed) since the door opened
        self.recycle_at = 0
        self.limit_reached: Callable[[], None] | None = None
        self._idle: asyncio.Event | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def serve(self, sock: socket.socket) -> None:
        """Start accepting on ``sock`` (listening already; TCP or unix). Returns once accepting.

        The door owns ``sock`` from now on and closes it on drain or close: pass a worker's own
        inherited copy, never the master's."""
        self.loop = asyncio.get_running_loop()
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.idle_timeout / 2, self._close_idle)
        if sock.family == socket.AF_UNIX:
            server = await self.loop.create_unix_server(lambda: HttpConnection(self), sock=sock)
        else:
            server = await self.loop.create_server(lambda: HttpConnection(self), sock=sock)
        self._servers.append(server)

    @property
    def in_flight(self) -> int:
        """Calls dispatched and not yet answered."""
        return self._in_flight

    @property
    def open_connections(self) -> int:
        return len(self._connections) + len(self._sessions) + len(self._streams)

    async def drain(self, timeout: float | None = None, *, cut_off: bool = True) -> bool:
        """Stop accepting, answer every call already read, close connections as they go idle.

        True when everything closed within ``timeout``; otherwise False, and the rest is cut off
        (unless ``cut_off`` is false: the caller then answers what is left and drains again).
        The listening sockets stay open in the process that created them (the master), so other
        workers keep accepting.
        """
        self.draining = True
        for server in self._servers:
            server.close()
        self._close_streams()
        for conn in list(self._connections):
            conn.close_when_idle()
        for session in list(self._sessions):
            session.close_when_idle()
        self._idle = asyncio.Event()
        self._connection_gone()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            if cut_off:
                self.close()
            return False

    def close(self) -> None:
        """Stop at once: stop accepting, cut every connection."""
        self.draining = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for server in self._servers:
            server.close()
        self._close_streams()
        for conn in list(self._connections):
            conn.abort()
        for session in list(self._sessions):
            session.abort()

    def _close_streams(self) -> None:
        """An event stream never ends by itself: a stopping worker ends it (the browser reconnects,
        to another worker), so it never holds a drain up."""
        for stream in list(self._streams):
            stream.close()

    def _close_idle(self) -> None:
        """Every idle_timeout / 2: close the HTTP connections idle for longer than idle_timeout."""
        horizon = self.loop.time() - self.idle_timeout
        for conn in list(self._connections):
            try:
                conn.close_if_idle_since(horizon)
            except Exception:  # one broken connection must not stop the sweep
                conn.abort()
        self._sweeper = self.loop.call_later(self.idle_timeout / 2, self._close_idle)
