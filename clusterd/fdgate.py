"""The connection gate's enforcer: a small process of its own, so that --max-clients holds while the
master's loop (or its GIL: a long C call in a sync master method) is busy.

libzmq accepts connections in its own I/O thread whatever the master does; if connections past the cap
were only shut down from the master's loop, a master busy for seconds could run out of fds, and libzmq
aborts the whole process when its ipc listener (control.sock, workers.sock) then meets EMFILE. This
process reads the client sockets' monitors (relayed to ipc files of the instance directory by
limits.GateWatch), counts the connections per endpoint and shuts down each one past the cap as soon
as it is accepted: it takes a
copy of the master's fd with pidfd_getfd(2) (Linux 5.6+, same uid) and shuts the connection down,
then libzmq, seeing the peer gone, closes its fd in its I/O thread, with no help from the master.
The master's loop sees the same events (its status counts) and shuts the same connections down again
when it gets to them: a backstop, harmless when done already.

It also watches the master's RSS, every WATCH_S while client connections are open, and tells the
master each time it has grown by STEP bytes more: the master's guard against messages that never end
(message_guard.MessageGuard) then looks, instead of polling all the time.

    python -m clusterd.fdgate MASTER_PID CAP STEP EVENTS_ADDRESS MONITOR_ADDRESS...
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable

import zmq

from .connections import (
    ACCEPTED,
    DISCONNECTED,
    SO_ATTACH_FILTER,
    SO_DETACH_FILTER,
    ConnectionCounts,
    monitor_event,
    same_place,
)

_SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture
READY_TIMEOUT_MS = 5000
WATCH_MS = 50
GATE_NICE = -10
PAUSE_MIN = 8          # connections past the cap before a tcp endpoint's listener is paused ...
PAUSE_FRACTION = 16    # ... or a sixteenth of the cap, when that is more
PAUSE_MAX_S = 1.0      # a pause is lifted after this long at most (paused again if the flood goes on)
_BPF_RET_K = 0x06      # a classic BPF program of one instruction, "return 0": drop the packet


class RssWatch:
    """The master's resident memory, from /proc; says when it has grown by step since its low point."""

    def __init__(self, master: int, step: int) -> None:
        self.step = step
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._statm = os.open(f"/proc/{master}/statm", os.O_RDONLY | os.O_CLOEXEC)
        self._mark = self._rss()

    def _rss(self) -> int:
        return int(os.pread(self._statm, 128, 0).split()[1]) * self._page

    def grew(self) -> bool:
        rss = self._rss()
        if rss < self._mark:
            self._mark = rss
            return False
        if rss - self._mark > self.step:
            self._mark = rss  # told once per step of growth
            return True
        return False


class FdTaker:
    """Copies of the master's fds, through a pidfd (None when the kernel or a policy refuses)."""

    def __init__(self, master: int) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        try:
            self._pidfd: int | None = os.pidfd_open(master)
        except (OSError, AttributeError):
            self._pidfd = None
        self.works = self._pidfd is not None and self._probe()

    def _probe(self) -> bool:
        fd = self.take(2)
        if fd is None or fd < 0:
            return False
        os.close(fd)
        return True

    def close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def take(self, fd: int) -> int | None:
        """A copy of the master's fd; -1 if it is closed; None if copies are refused (EPERM, ENOSYS)."""
        got = self._libc.syscall(_SYS_PIDFD_GETFD, self._pidfd, fd, 0)
        if got >= 0:
            return got
        return -1 if ctypes.get_errno() == 9 else None  # EBADF: libzmq closed it already


def shut(taker: FdTaker, fd: int, endpoint: str) -> bool:
    """Shut down the master's connection fd (accepted on endpoint); False when it could not be done here."""
    copy = taker.take(fd)
    if copy is None:
        return False
    if copy < 0:
        return True
    try:
        sock = socket.socket(fileno=copy)
    except OSError:  # the number was reused by something that is not a socket: not ours to touch
        os.close(copy)
        return True
    try:
        # the fd may have been closed and reused since the event: only a connection of this endpoint
        if sock.type == socket.SOCK_STREAM and same_place(sock.getsockname(), endpoint):
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()
    return True


def _connect_all(sockets: list[zmq.Socket], addresses: list[str]) -> bool:
    """Each monitor connection is up before the master binds: no accept goes unseen."""
    watches = [sock.get_monitor_socket(zmq.EVENT_CONNECTED) for sock in sockets]
    for sock, address in zip(sockets, addresses):
        sock.connect(address)
    for sock, watch in zip(sockets, watches):
        try:
            if not watch.poll(READY_TIMEOUT_MS):
                return False
            watch.recv_multipart()
        finally:
            sock.disable_monitor()
            watch.close(linger=0)
    return True


def main(argv: list[str]) -> int:
    master, cap, step, events_address, monitors = int(argv[0]), int(argv[1]), int(argv[2]), argv[3], argv[4:]
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: never outlive the master
    if os.getppid() != master:
        return 0
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)  # a signal to the whole group is the master's to handle
    run_first()
    ctx = zmq.Context()
    out = ctx.socket(zmq.PUSH)
    out.setsockopt(zmq.SNDHWM, 0)
    out.setsockopt(zmq.LINGER, 0)
    out.connect(events_address)
    ins = []
    for _ in monitors:
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.LINGER, 0)
        ins.append(sock)
    taker = FdTaker(master)
    if not _connect_all(ins, monitors):
        return 1
    rss = RssWatch(master, step)
    out.send_multipart([b"ready", b"1" if taker.works else b"0"])
    poller = zmq.Poller()
    for sock in ins:
        poller.register(sock, zmq.POLLIN)
    counts = [EndpointCounts(cap) for _ in ins]
    pauses = ListenerPauses(master, taker, lambda kind, endpoint: out.send_multipart([kind, endpoint.encode()]))
    while True:
        ready = poller.poll(WATCH_MS if any(c.any_open() for c in counts) else None)
        pauses.expire(time.monotonic())
        for sock, _ in ready:
            gate = counts[ins.index(sock)]
            past: dict[int, str] = {}
            while True:  # everything queued, in one wake: a flood arrives faster than one event per poll
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                gate.on_event(frames, past)
            for endpoint, state in gate.changed():  # first stop more handshakes, then end what got in
                if state is Flood.PAUSE:
                    pauses.pause(endpoint)
                else:
                    pauses.resume(endpoint)
            if taker.works:
                for fd, endpoint in past.items():
                    shut(taker, fd, endpoint)
        if rss.grew():
            out.send_multipart([b"rss"])


class Flood(enum.Enum):
    PAUSE = "pause"
    RESUME = "resume"


class EndpointCounts:
    """The connections of one client socket, per endpoint, as its monitor tells them."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.pause_past = max(PAUSE_MIN, cap // PAUSE_FRACTION)
        self.counted = ConnectionCounts()
        self.held = self.counted.counts
        self.touched: set[str] = set()

    def any_open(self) -> bool:
        return any(self.held.values())

    def on_event(self, frames: list[bytes], past: dict[int, str]) -> None:
        """Count one event; an accepted connection past the cap goes into past (fd -> endpoint)."""
        parsed = monitor_event(frames)
        if parsed is None:
            return
        event, fd, endpoint = parsed
        if event == ACCEPTED:
            if self.counted.accepted(fd, endpoint) > self.cap:
                past[fd] = endpoint
                self.touched.add(endpoint)
        elif event == DISCONNECTED:
            past.pop(fd, None)  # gone already: its fd number may be reused by the next accept
            gone_from = self.counted.disconnected(fd)
            if gone_from is not None:
                self.touched.add(gone_from)

    def changed(self) -> list[tuple[str, Flood]]:
        """Endpoints flooded past the cap by pause_past (pause their listener), or back under it (resume)."""
        out = []
        for endpoint in self.touched:
            held = self.held.get(endpoint, 0)
            if held - self.cap >= self.pause_past:
                out.append((endpoint, Flood.PAUSE))
            elif held < self.cap:
                out.append((endpoint, Flood.RESUME))
        self.touched.clear()
        return out


class ListenerPauses:
    """Stops the handshakes of a flooded tcp endpoint in the kernel: a socket filter on its listening
    socket drops every packet that reaches it, so libzmq cannot accept connections faster than this
    process shuts them down (each accept takes a master fd until then: a burst past the headroom would
    exhaust them). Connections already made are not touched; a client meanwhile waits in connect()
    (SYN retries), as with a full backlog. Lifted once the endpoint is back under its cap, and after
    PAUSE_MAX_S in any case (a flood still going on pauses it again at once): a miscount can never
    close an endpoint for good. tell(b"pause" | b"resume", endpoint) reports each change to the master,
    which lifts what is left should this process die (connections.lift_listener_pauses)."""

    def __init__(self, master: int, taker: FdTaker, tell: Callable[[bytes, str], None] = lambda kind, e: None) -> None:
        self.master = master
        self.taker = taker
        self.tell = tell
        self.listeners: dict[str, socket.socket | None] = {}
        self.paused: dict[str, float] = {}   # endpoint -> when (monotonic)
        self._drop_all = (ctypes.c_ubyte * 8).from_buffer_copy(struct.pack("=HBBI", _BPF_RET_K, 0, 0, 0))
        self._program = struct.pack("HP", 1, ctypes.addressof(self._drop_all))  # struct sock_fprog

    def pause(self, endpoint: str) -> None:
        if endpoint in self.paused:
            return
        listener = self._listener(endpoint)
        if listener is None:
            return
        try:
            listener.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, self._program)
        except OSError:
            return
        self.paused[endpoint] = time.monotonic()
        self.tell(b"pause", endpoint)

    def resume(self, endpoint: str) -> None:
        if self.paused.pop(endpoint, None) is None:
            return
        listener = self.listeners.get(endpoint)
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
        self.tell(b"resume", endpoint)

    def expire(self, now: float) -> None:
        for endpoint, since in list(self.paused.items()):
            if now - since >= PAUSE_MAX_S:
                self.resume(endpoint)

    def close(self) -> None:
        for endpoint in list(self.paused):
            self.resume(endpoint)
        for listener in self.listeners.values():
            if listener is not None:
                listener.close()
        self.listeners.clear()

    def _listener(self, endpoint: str) -> socket.socket | None:
        """A copy of the master's listening socket of a tcp endpoint (found once, among its fds)."""
        if endpoint in self.listeners:
            return self.listeners[endpoint]
        found = None
        if endpoint.startswith("tcp://") and self.taker.works:
            try:
                fds = [int(name) for name in os.listdir(f"/proc/{self.master}/fd")]
            except OSError:
                fds = []
            for fd in fds:
                copy = self.taker.take(fd)
                if copy is None or copy < 0:
                    continue
                try:
                    sock = socket.socket(fileno=copy)
                except OSError:
                    os.close(copy)
                    continue
                try:
                    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                    if listening and sock.type == socket.SOCK_STREAM and same_place(sock.getsockname(), endpoint):
                        found = sock
                        break
                except OSError:
                    pass
                sock.close()
        self.listeners[endpoint] = found
        return found


def run_first() -> None:
    """Ask the scheduler to run this process before ordinary ones (allowed for root or CAP_SYS_NICE): on
    a loaded machine a gate that waits its turn lets a flood reach the fd limit."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, GATE_NICE)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
