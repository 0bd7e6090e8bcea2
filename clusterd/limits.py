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

import asyncio
import fcntl
import logging
import os
import resource
import socket
import struct
import termios
from collections.abc import Callable

import zmq

from .ops import log

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
        self.delivered = 0   # bytes of complete messages the master read (for the MessageGuard)
        self.on_accept: Callable[[], None] | None = None
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
            elif self.on_accept is not None:
                self.on_accept()
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

    def shut_down(self, fd: int) -> None:
        """End one connection of ours (libzmq closes it when it sees the end)."""
        endpoint = self.open.get(fd)
        if endpoint is None:
            return
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            return
        try:
            if _same_place(sock.getsockname(), endpoint):
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.detach()

    def document(self) -> dict:
        return {"max_per_endpoint": self.cap, "connected": sum(self.counts.values()), "refused": self.refused}


GUARD_INTERVAL_S = 0.05
UNFINISHED_FRAMES = 16       # the guard's limit, in frames of --max-message-size
FRAME_OVERHEAD = 9           # most a ZMTP frame header takes on the wire
_TCPI_BYTES_RECEIVED = 128   # offset of tcpi_bytes_received (u64) in Linux's struct tcp_info (4.1+)


class MessageGuard:
    """Bounds what libzmq holds of messages that never end.

    ZMQ_MAXMSGSIZE limits frames, not messages, and libzmq keeps every frame of a multipart message
    (invisible to the master, not counted by the high-water mark) until its last one arrives. While
    client tcp connections are open, the guard reads the master's RSS every GUARD_INTERVAL_S. Once it
    has grown by more than `limit` bytes, the guard takes a baseline: per connection, what libzmq has
    read from it (TCP_INFO minus what the kernel still queues), and the bytes of complete messages the
    master has received. At each turn while the RSS stays up, if the connections have sent more than
    `limit` bytes since the baseline that did not arrive as complete messages (at two turns in a row),
    the one that sent the most is shut down (libzmq then frees its unfinished message).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, gates: list[ClientGate], limit: int) -> None:
        self.loop = loop
        self.gates = gates
        self.limit = limit
        self.dropped = 0
        self._handle: asyncio.TimerHandle | None = None
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._statm = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        self._calm_rss = self._rss()
        self._base: dict[int, int] | None = None   # fd -> bytes read, at the baseline
        self._base_delivered = 0
        self._over = 0
        for gate in gates:
            gate.on_accept = self.arm

    def arm(self) -> None:
        if self._handle is None:
            self._handle = self.loop.call_later(GUARD_INTERVAL_S, self._turn)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        os.close(self._statm)

    def _rss(self) -> int:
        return int(os.pread(self._statm, 128, 0).split()[1]) * self._page

    def _turn(self) -> None:
        self._handle = None
        log.survive("the unfinished-message guard", self._check)
        if any(gate.open for gate in self.gates):
            self._handle = self.loop.call_later(GUARD_INTERVAL_S, self._turn)

    def _delivered(self) -> int:
        return sum(gate.delivered for gate in self.gates)

    def _reads(self) -> dict[int, tuple[int, ClientGate]]:
        reads = {}
        for gate in self.gates:
            for fd in list(gate.open):
                n = _bytes_read(fd)
                if n is not None:
                    reads[fd] = (n, gate)
        return reads

    def _check(self) -> None:
        rss = self._rss()
        if rss - self._calm_rss <= self.limit:
            self._calm_rss = min(self._calm_rss, rss)
            self._base = None
            return
        reads = self._reads()
        if self._base is None:
            self._base = {fd: n for fd, (n, _) in reads.items()}
            self._base_delivered = self._delivered()
            return
        sent = {fd: n - self._base[fd] for fd, (n, _) in reads.items() if fd in self._base}
        unfinished = sum(sent.values()) - (self._delivered() - self._base_delivered)
        if unfinished <= 0:  # all that arrived was whole messages: the memory is the calls' own
            self._calm_rss, self._base = rss, None
            return
        if unfinished <= self.limit or not sent:
            self._over = 0
            return
        # whole messages read by libzmq but not yet by the master also count here for a moment: only
        # bytes that stay unfinished over two turns in a row are a message that does not end
        self._over += 1
        if self._over < 2:
            return
        self._over = 0
        fd = max(sent, key=sent.__getitem__)
        self.dropped += 1
        log.event("unfinished-message", f"a client connection sent {sent[fd] // 2**20} MiB without finishing "
                  "its message: closed", level=logging.WARNING)
        reads[fd][1].shut_down(fd)
        self._base = None


def _bytes_read(fd: int) -> int | None:
    """Bytes libzmq has read from a tcp connection: received by the kernel minus still queued there."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return None
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        if len(info) < _TCPI_BYTES_RECEIVED + 8:
            return None
        received = struct.unpack_from("=Q", info, _TCPI_BYTES_RECEIVED)[0]
        queued = struct.unpack("=i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
        return received - queued
    except OSError:
        return None
    finally:
        sock.detach()


def _same_place(local: object, endpoint: str) -> bool:
    """Whether a socket's local address belongs to the endpoint it was accepted on."""
    if isinstance(local, (bytes, str)):
        path = local.decode() if isinstance(local, bytes) else local
        return endpoint.startswith("ipc://") and endpoint[len("ipc://"):] == path
    if isinstance(local, tuple) and endpoint.startswith("tcp://"):
        return endpoint.rsplit(":", 1)[-1] == str(local[1])
    return False


__all__ = ["raise_open_files", "client_budget", "max_clients", "ClientGate", "MessageGuard"]
