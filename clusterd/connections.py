"""What the master's connection gate (limits.ClientGate) and the fdgate process share: counting a client
socket's connections from its monitor's events, recognising a socket of an endpoint, and the socket
filter with which a flooded tcp listener is paused.

Kept small and apart from limits.py: fdgate imports only this, so the gate process starts quickly.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import struct

import zmq

ACCEPTED = int(zmq.EVENT_ACCEPTED)
DISCONNECTED = int(zmq.EVENT_DISCONNECTED)
ACCEPT_FAILED = int(zmq.EVENT_ACCEPT_FAILED)
SO_ATTACH_FILTER = 26      # setsockopt: fdgate pauses a flooded listener with a socket filter ...
SO_DETACH_FILTER = 27      # ... and lifts the pause by removing it (so does the master, should fdgate die)


class ConnectionCounts:
    """The connections of one client socket per endpoint, from its monitor's events: the master's gate
    and the fdgate process count them alike."""

    def __init__(self) -> None:
        self.open: dict[int, str] = {}          # fd -> the endpoint it was accepted on
        self.counts: dict[str, int] = {}

    def accepted(self, fd: int, endpoint: str) -> int:
        """Count one accepted connection; how many the endpoint holds now."""
        self.open[fd] = endpoint
        held = self.counts[endpoint] = self.counts.get(endpoint, 0) + 1
        return held

    def disconnected(self, fd: int) -> str | None:
        """Count one connection gone; its endpoint (None for one accepted before we counted)."""
        endpoint = self.open.pop(fd, None)
        if endpoint is not None:
            self.counts[endpoint] -= 1
        return endpoint


def monitor_event(frames: list[bytes]) -> tuple[int, int, str] | None:
    """One socket monitor message, [event id (2 bytes) + value (4 bytes), endpoint, ...]: (event, value,
    endpoint), or None when malformed."""
    if len(frames) < 2 or len(frames[0]) < 6:
        return None
    event, value = struct.unpack("=HI", frames[0][:6])
    return event, value, frames[1].decode("utf-8", "replace")


def same_place(local: object, endpoint: str) -> bool:
    """Whether a socket's local address belongs to an endpoint (the one it was accepted on, or bound to).

    For tcp the port must match, and the host too unless the endpoint binds every address (a
    connection accepted there has the address the client dialled) or names a host by name."""
    if isinstance(local, (bytes, str)):
        path = local.decode() if isinstance(local, bytes) else local
        return endpoint.startswith("ipc://") and endpoint[len("ipc://"):] == path
    if isinstance(local, tuple) and endpoint.startswith("tcp://"):
        host, _, port = endpoint[len("tcp://"):].rpartition(":")
        if port != str(local[1]):
            return False
        host = host.strip("[]")
        try:
            bound = ipaddress.ip_address(host)
        except ValueError:
            return True  # a name, or a wildcard other than an address: the port decides
        if bound.is_unspecified:
            return True
        try:
            return ipaddress.ip_address(str(local[0]).split("%")[0]) == bound
        except ValueError:
            return False
    return False


def lift_listener_pauses(endpoints: list[str]) -> int:
    """Detach the socket filter fdgate attached to this process's listening sockets of these tcp
    endpoints (fdgate.ListenerPauses); how many were found."""
    found = 0
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return 0
    for fd in fds:
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            continue
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) and any(
                    same_place(sock.getsockname(), endpoint) for endpoint in endpoints):
                found += 1
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
        except OSError:
            pass
        finally:
            sock.detach()
    return found


__all__ = ["ACCEPTED", "ACCEPT_FAILED", "DISCONNECTED", "SO_ATTACH_FILTER", "SO_DETACH_FILTER", "ConnectionCounts",
           "lift_listener_pauses", "monitor_event", "same_place"]
