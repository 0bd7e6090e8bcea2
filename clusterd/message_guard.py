"""MessageGuard: libzmq never holds more than a bound of messages that never end.

The limits on connections (limits.py) keep the master's fds; this keeps its memory: a client that
sends frame after frame of one multipart message without its last frame is cut off.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import struct
import termios

from .limits import ClientGate
from .ops import log

GUARD_INTERVAL_S = 0.05
UNFINISHED_FRAMES = 16       # the guard's limit, in frames of --max-message-size
FRAME_OVERHEAD = 9           # most a ZMTP frame header takes on the wire
_TCPI_BYTES_RECEIVED = 128   # offset of tcpi_bytes_received (u64) in Linux's struct tcp_info (4.1+)


class MessageGuard:
    """Bounds what libzmq holds of messages that never end.

    ZMQ_MAXMSGSIZE limits frames, not messages, and libzmq keeps every frame of a multipart message
    (invisible to the master, not counted by the high-water mark) until its last one arrives. The
    fdgate process watches the master's RSS while client connections are open and wakes the guard
    (wake()) each time it has grown by `limit` more; the guard then reads it every GUARD_INTERVAL_S
    until it is calm again, so a master whose memory does not grow does no work here (without fdgate,
    it reads it every GUARD_INTERVAL_S while client connections are open). Once it
    has grown by more than `limit` bytes, the guard takes a baseline: per connection, what libzmq has
    read from it (TCP_INFO minus what the kernel still queues), and the bytes of complete messages the
    master has received. At each turn while the RSS stays up, if the connections have sent more than
    `limit` bytes since the baseline that did not arrive as complete messages (at two turns in a row),
    the one that sent the most is shut down (libzmq then frees its unfinished message).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, gates: list[ClientGate], limit: int,
                 woken: bool = False) -> None:
        """woken: the fdgate process calls wake() when the RSS grows (else: polled while clients are on)."""
        self.loop = loop
        self.woken = woken
        self._high = False
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
        if not woken:
            for gate in gates:
                gate.on_accept = self.arm

    def wake(self) -> None:
        """The RSS grew by `limit` more (fdgate): look until it is calm again."""
        self._high = True
        self.arm()

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
        if self._high if self.woken else any(gate.open for gate in self.gates):
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
        self._high = rss - self._calm_rss > self.limit
        if not self._high:
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
            self._calm_rss, self._base, self._high = rss, None, False
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


__all__ = ["FRAME_OVERHEAD", "UNFINISHED_FRAMES", "MessageGuard"]
