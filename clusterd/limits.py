"""Open files and client connections: the master never runs out of file descriptors.

libzmq's ipc listener aborts the whole process when accept() meets EMFILE, and its tcp listener retries
in a busy loop; so the master must never get there. At start the soft RLIMIT_NOFILE is raised to the
hard one (as nginx's worker_rlimit_nofile and systemd services do); each client endpoint (control.sock
and every --bind) then holds at most --max-clients connections, chosen so that the sum leaves fds for
the worker link, the workers' pipes and the master itself, plus headroom for connections libzmq accepts
before the master has seen them. A connection past the cap is shut down as soon as its ACCEPTED event
arrives (a socket monitor), and the cap being reached is logged once per episode.
"""

from __future__ import annotations

import logging
import resource
import socket
import struct
from collections.abc import Callable

import zmq

from . import log

RESERVE_BASE = 64          # the master's own fds: interpreter, loop, zmq context and sockets, logs, psutil
RESERVE_PER_WORKER = 8     # per worker, twice over for a rolling reload: its ipc link, pipes, zygote
HEADROOM = 4               # 1/HEADROOM of the client budget is kept free for accepts not yet refused
DEFAULT_MAX_CLIENTS = 10000

_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_ACCEPT_FAILED
_ACCEPTED = int(zmq.EVENT_ACCEPTED)
_DISCONNECTED = int(zmq.EVENT_DISCONNECTED)
_ACCEPT_FAILED = int(zmq.EVENT_ACCEPT_FAILED)


def raise_open_files() -> int:
    """Raise the soft limit of open files to the hard limit; return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def client_budget(open_files: int, endpoints: int, workers: int) -> int:
    """Connections one client endpoint may hold so that all of them together never exhaust open_files."""
    spare = open_files - RESERVE_BASE - 2 * RESERVE_PER_WORKER * workers
    return max(1, spare * (HEADROOM - 1) // HEADROOM // max(1, endpoints))


def max_clients(wanted: int, open_files: int, endpoints: int, workers: int) -> int:
    """The cap per endpoint: --max-clients (0 = derived), never above what the open-file limit allows."""
    ceiling = client_budget(open_files, endpoints, workers)
    if not wanted:
        return min(DEFAULT_MAX_CLIENTS, ceiling)
    if wanted > ceiling:
        log.event("max-clients", f"--max-clients {wanted} exceeds what the open-file limit ({open_files}) allows "
                  f"for {endpoints} client endpoints and {workers} workers: using {ceiling}", level=logging.WARNING)
        return ceiling
    return wanted


class ClientGate:
    """Counts the connections of one client socket per endpoint and shuts down those past the cap.

    It reads the socket's monitor (ACCEPTED/DISCONNECTED carry the connection's fd). The fd is libzmq's:
    the gate only shuts it down (never closes it), so libzmq sees the peer go away and closes it itself.
    """

    def __init__(self, sock: zmq.Socket, cap: int, label: Callable[[str], str] = str) -> None:
        self.cap = cap
        self._label = label
        self.open: dict[int, str] = {}          # fd -> the endpoint it was accepted on
        self.counts: dict[str, int] = {}
        self.refusing: set[str] = set()
        self.refused = 0
        self._accept_failed_logged = False
        address = f"inproc://clusterd-monitor-{id(sock):x}"
        sock.monitor(address, _EVENTS)
        self.monitor = sock.context.socket(zmq.PAIR)
        self.monitor.setsockopt(zmq.RCVHWM, 0)  # events are small; libzmq must never block on them
        self.monitor.setsockopt(zmq.LINGER, 0)
        self.monitor.connect(address)

    def on_events(self, frames: list[bytes]) -> None:
        """One monitor message: [event id (2 bytes) + value (4 bytes), endpoint]."""
        if len(frames) < 2 or len(frames[0]) < 6:
            return
        event, value = struct.unpack("=HI", frames[0][:6])
        if event == _ACCEPTED:
            endpoint = frames[1].decode("utf-8", "replace")
            self.open[value] = endpoint
            held = self.counts.get(endpoint, 0) + 1
            self.counts[endpoint] = held
            if held > self.cap:
                self._refuse(value, endpoint, held)
        elif event == _DISCONNECTED:
            endpoint = self.open.pop(value, None)
            if endpoint is not None:
                held = self.counts[endpoint] - 1
                self.counts[endpoint] = held
                if endpoint in self.refusing and held < self.cap:
                    self.refusing.discard(endpoint)
                    log.event("max-clients", f"{self._label(endpoint)}: accepting clients again ({held} connected)")
        elif event == _ACCEPT_FAILED and not self._accept_failed_logged:
            self._accept_failed_logged = True
            log.event("accept-failed", f"{self._label(frames[1].decode('utf-8', 'replace'))}: accept failed "
                      f"(errno {value}); lower --max-clients or raise the open-file limit", level=logging.ERROR)

    def _refuse(self, fd: int, endpoint: str, held: int) -> None:
        self.refused += 1
        if endpoint not in self.refusing:
            self.refusing.add(endpoint)
            log.event("max-clients", f"{self._label(endpoint)}: {self.cap} clients connected (--max-clients): "
                      "closing new connections until some leave", level=logging.WARNING)
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            return  # already closed by libzmq: its DISCONNECTED event follows
        try:
            # the fd may have been closed and reused since the event: only a connection of a client
            # endpoint of ours (same family and local port or path) is ever shut down
            if sock.family in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX) and sock.type == socket.SOCK_STREAM \
                    and _same_place(sock.getsockname(), endpoint):
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.detach()

    def document(self) -> dict:
        return {"max_per_endpoint": self.cap, "connected": sum(self.counts.values()), "refused": self.refused}


def _same_place(local: object, endpoint: str) -> bool:
    """Whether a socket's local address belongs to the endpoint it was accepted on."""
    if isinstance(local, (bytes, str)):
        path = local.decode() if isinstance(local, bytes) else local
        return endpoint.startswith("ipc://") and endpoint[len("ipc://"):] == path
    if isinstance(local, tuple) and endpoint.startswith("tcp://"):
        return endpoint.rsplit(":", 1)[-1] == str(local[1])
    return False


__all__ = ["raise_open_files", "client_budget", "max_clients", "ClientGate"]
