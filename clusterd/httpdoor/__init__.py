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

from typing import Any

from .listeners import BindError, adopt, open_listener, parse_bind

_SERVED = {"EventStream": "event_stream", "Takeover": "event_stream", "DEFAULT_MAX_MESSAGE_SIZE": "server",
           "DEFAULT_MAX_STREAMS": "server", "Dispatch": "server", "HttpDoor": "server", "Page": "server",
           "Probes": "server"}


def __getattr__(name: str) -> Any:
    """The server's names load on first use: the master only opens the listening sockets, and the
    parsers (httptools, picows) would cost it memory for nothing."""
    module = _SERVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = ["BindError", "DEFAULT_MAX_MESSAGE_SIZE", "DEFAULT_MAX_STREAMS", "Dispatch", "EventStream", "HttpDoor",
           "Page", "Probes", "Takeover", "adopt", "open_listener", "parse_bind"]
