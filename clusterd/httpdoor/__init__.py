"""The HTTP/1.1 and WebSocket front door a worker serves on an inherited listening socket.

    door = HttpDoor(dispatch, probes=Probes(readyz=...), max_message_size=..., token=..., cors_origin=...)
    await door.serve(listening_socket)     # once per socket
    ...
    await door.drain(timeout)              # graceful: stop accepting, finish calls, close idle conns

Standalone: imports nothing else of clusterd.
"""

from .listeners import BindError, adopt, open_listener, parse_bind
from .server import DEFAULT_MAX_MESSAGE_SIZE, Dispatch, HttpDoor, Page, Probes

__all__ = ["BindError", "DEFAULT_MAX_MESSAGE_SIZE", "Dispatch", "HttpDoor", "Page", "Probes", "adopt", "open_listener",
           "parse_bind"]
