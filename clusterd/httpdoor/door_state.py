"""What an HTTP connection and a WebSocket session share with the door that accepted them.

The door's settings and its call/connection bookkeeping live here, below both protocols and the
door itself, so that http11 and websocket need nothing of server (and server needs them): the import
graph stays one way. ``HttpDoor`` is a ``DoorState``; the connections read these plain attributes
directly, with no extra call per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

# The answer, or None for nothing to answer, or an awaitable of either (run in its own task). Answer
# at once when you can (sync methods, errors found before any await): it saves a task per call, and
# keeps asyncio.timeout()/TaskGroup usable in what runs in the task.
Dispatch = Callable[[bytes], "bytes | None | Awaitable[bytes | None]"]

# A draining door closes a connection with no call in flight once it has been quiet this long: a
# request already on its way is read and answered first, and the close goes out with its answer.
DRAIN_QUIET_S = 0.25
# ... and a connection that has sent nothing yet, this long: it was opened to send a request (a probe,
# a first call), which a loaded client may take a moment to write after its connect() returned.
DRAIN_FRESH_S = 2.0
# After its last answer (HTTP: FIN; WebSocket: Close), a closing connection reads and drops what the
# client still sends until the client closes too, for at most this long: closing a socket with
# unread bytes makes the kernel send RST, which can destroy an answer the client has not read yet.
CLOSE_LINGER_S = 1.0


class DoorState:
    """The door as its connections see it: settings read per request, and the counts they keep."""

    dispatch: Dispatch
    ws_dispatch: Dispatch
    max_message_size: int
    token: str | None
    bearer: bytes | None
    cors_origin: bytes | None
    cors_headers: bytes
    preflight_headers: bytes
    allow_header: bytes
    page_hooks: dict[bytes, Callable[[], Any]]
    open_paths: frozenset[bytes]   # served without the bearer token: the probes, the dashboard
    max_streams: int
    draining: bool
    loop: asyncio.AbstractEventLoop
    served: int
    recycle_at: int          # --max-requests of this worker: limit_reached() when served reaches it (0: never)
    limit_reached: Callable[[], None] | None
    _connections: set[Any]   # http11.HttpConnection, not yet upgraded
    _sessions: set[Any]      # websocket.WebSocketSession
    _streams: set[Any]       # event_stream.EventStream
    _tasks: set[asyncio.Task[Any]]
    _in_flight: int
    _idle: asyncio.Event | None

    # bookkeeping called by connections
    def _call_started(self) -> None:
        self._in_flight += 1

    def _call_finished(self) -> None:
        self._in_flight -= 1
        self.served += 1
        if self.served == self.recycle_at:
            self._reached_limit()

    def _reached_limit(self) -> None:
        try:
            self.limit_reached()  # type: ignore[misc]
        except Exception:  # a report that fails must not fail the call that made it
            logging.getLogger(__name__).exception("reporting the door's --max-requests failed")

    def _connection_gone(self) -> None:
        if self._idle is not None and not self._connections and not self._sessions:
            self._idle.set()
