"""The HTTP/1.1 and WebSocket front door a worker serves on an inherited listening socket.

    door = HttpDoor(dispatch, probes=Probes(readyz=...), max_message_size=..., token=..., cors_origin=...)
    await door.serve(listening_socket)     # once per socket
    ...
    await door.drain(timeout)              # graceful: stop accepting, finish calls, close idle conns

Standalone: imports nothing else of clusterd. How it joins the rest:

- master: ``open_listener(bind)`` for each ``--http-bind`` before the first worker starts; keep the
  sockets for the master's life; spawn workers (and the zygote) with their fds in ``pass_fds`` and
  the numbers in the worker spec; close the unix socket file on final stop.
- worker: ``adopt(fd)``; after the hello, ``await door.serve(sock)``; on the stop frame,
  ``await door.drain(graceful_timeout)`` before the link's own drain.
- dispatch: the worker's JSON-RPC handling of one payload, answering at once where it can (sync
  methods, errors) and returning a coroutine for async methods and calls forwarded to the master.
"""

from .event_stream import EventStream, Takeover
from .listeners import BindError, adopt, open_listener, parse_bind
from .server import DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_STREAMS, Dispatch, HttpDoor, Page, Probes

__all__ = ["BindError", "DEFAULT_MAX_MESSAGE_SIZE", "DEFAULT_MAX_STREAMS", "Dispatch", "EventStream", "HttpDoor",
           "Page", "Probes", "Takeover", "adopt", "open_listener", "parse_bind"]
