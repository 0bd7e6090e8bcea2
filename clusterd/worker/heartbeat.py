"""The worker's heartbeat thread: proves to the master that the worker is alive, and the reverse.

It runs beside the worker's main thread on its own socket, so a worker busy for minutes in a
pure-Python call still beats. It reports the main thread as stalled only when that thread makes no
progress at all: not idle in the event loop, burning no CPU and not moving through bytecode (a
deadlock, a blocking call that never returns). A process stopped with SIGSTOP, or stuck in C code
that holds the GIL, cannot beat at all; the master notices either way.
"""

from __future__ import annotations

import asyncio.runners
import os
import selectors
import sys
import threading
import time
from collections.abc import Callable

import psutil
import zmq

from .. import protocol, wire
from ..ops.method_stats import DeltaTracker, MethodStats

# Where an idle main thread waits: asyncio's loop in its selector; uvloop's in C, below the frame that
# started the loop (asyncio.run's Runner.run), which never waits there otherwise.
_IDLE_CODES = {getattr(selectors, name).select.__code__
               for name in ("EpollSelector", "PollSelector", "SelectSelector") if hasattr(selectors, name)}
_IDLE_CODES |= {asyncio.runners.run.__code__, asyncio.runners.Runner.run.__code__}


class MainThreadWatch:
    """Tells whether the main thread has made progress since the last look."""

    def __init__(self, ident: int | None = None) -> None:
        self.ident = ident if ident is not None else threading.main_thread().ident
        try:
            self._clock = time.pthread_getcpuclockid(self.ident)
        except (AttributeError, OSError):
            self._clock = None
        self._last_cpu = self._cpu()
        self._last_spot: tuple | None = None
        self.stalled_since: float | None = None

    def _cpu(self) -> float:
        if self._clock is None:
            return 0.0
        try:
            return time.clock_gettime(self._clock)
        except OSError:
            return 0.0

    def stalled_for(self, now: float) -> float:
        frame = sys._current_frames().get(self.ident)
        cpu = self._cpu()
        progressed = cpu - self._last_cpu > 0.001
        self._last_cpu = cpu
        if frame is None or frame.f_code in _IDLE_CODES:
            progressed = True
        else:
            spot = (id(frame), frame.f_lasti)
            if spot != self._last_spot:
                progressed = True
            self._last_spot = spot
        del frame
        if progressed:
            self.stalled_since = None
            return 0.0
        if self.stalled_since is None:
            self.stalled_since = now
        return now - self.stalled_since


class MasterWatch:
    """Tells a paused master (SIGSTOP, a debugger) from a gone one, for a worker on the master's host:
    the time the master spends stopped is not counted as its silence."""

    def __init__(self, pid: int) -> None:
        try:
            self._proc: psutil.Process | None = psutil.Process(pid)
        except psutil.Error:
            self._proc = None

    def paused(self) -> bool:
        if self._proc is None:
            return False
        try:
            return self._proc.is_running() and self._proc.status() in _PAUSED
        except psutil.Error:
            return False


_PAUSED = (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)


class MasterSeen:
    """When the heartbeat thread last heard the master (time.monotonic()): the HTTP door's /livez.

    The master answers beats from its event loop, so a recent answer means that loop is alive (a
    paused master is not dead for the worker, but it is not live for a probe either)."""

    def __init__(self) -> None:
        self.at = time.monotonic()
        # what the beats carry besides "stalled": the HTTP door's figures, for the status document
        self.figures: Callable[[], dict] | None = None

    def within(self, seconds: float) -> bool:
        return time.monotonic() - self.at < seconds


def start(context: zmq.Context, endpoint: str, ident: bytes, interval: float, timeout: float,
          configure=None, watch: int | None = None, stop: threading.Event | None = None,
          master_pid: int | None = None, stats: MethodStats | None = None,
          seen: MasterSeen | None = None) -> threading.Thread:
    """Start beating to the master; exit the process when the master has been silent for timeout.

    A thread worker (--isolation thread) passes the thread to watch and a `stop` event: it shares its
    process with the master, so it never exits the process, and the beats end when `stop` is set.
    A worker on the master's host passes master_pid: while that process is stopped, its silence does
    not count (a paused master is not a dead one, and finished calls must outlive the pause).
    `stats` are the calls the worker's own HTTP/WS door answers: each beat carries what changed since
    the last beat that left, and the master adds it to the instance's metrics.
    """
    thread = threading.Thread(target=_run, name="clusterd-heartbeat", daemon=True,
                              args=(context, endpoint, ident, interval, timeout, configure, watch, stop,
                                    master_pid, stats, seen or MasterSeen()))
    thread.start()
    return thread


def _run(context: zmq.Context, endpoint: str, ident: bytes, interval: float, timeout: float,
         configure, watch_ident: int | None = None, stop: threading.Event | None = None,
         master_pid: int | None = None, stats: MethodStats | None = None, seen: MasterSeen | None = None) -> None:
    sock = context.socket(zmq.DEALER)
    try:
        _beat(sock, endpoint, ident, interval, timeout, configure, watch_ident, stop, master_pid, stats,
              seen or MasterSeen())
    except zmq.ContextTerminated:
        pass  # a thread worker's master is closing the shared context: nothing left to beat to
    finally:
        sock.close(linger=0)  # a shared context (thread workers) can only terminate once it is closed


def _beat(sock: zmq.Socket, endpoint: str, ident: bytes, interval: float, timeout: float, configure,
          watch_ident: int | None, stop: threading.Event | None, master_pid: int | None,
          stats: MethodStats | None = None, seen: MasterSeen | None = None) -> None:
    seen = seen or MasterSeen()
    sock.setsockopt(zmq.ROUTING_ID, wire.HEARTBEAT_PREFIX + ident)
    sock.setsockopt(zmq.LINGER, 0)
    if configure is not None:
        configure(sock)
    sock.connect(endpoint)
    watch = MainThreadWatch(watch_ident)
    master = MasterWatch(master_pid) if master_pid is not None and stop is None else None
    step = interval if stop is None else min(interval, 0.1)
    last_answer = time.monotonic()
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    tracker = DeltaTracker(stats) if stats is not None else None
    while stop is None or not stop.is_set():
        now = time.monotonic()
        stalled = watch.stalled_for(now)
        beat: dict = {"stalled": round(stalled, 3)}
        delta = tracker.delta() if tracker is not None else None
        if delta is not None:
            beat["stats"] = delta
        if seen.figures is not None:
            beat["http"] = seen.figures()
        try:
            sock.send_multipart([wire.BEAT, protocol.dumps(beat)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        else:
            if tracker is not None:
                tracker.commit()
        deadline = now + interval
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if stop is not None and stop.is_set():
                return
            if poller.poll(min(left, step) * 1000):
                try:
                    while True:
                        sock.recv_multipart(zmq.NOBLOCK)
                        last_answer = seen.at = time.monotonic()
                except zmq.Again:
                    pass
        if master is not None and time.monotonic() - last_answer > interval and master.paused():
            last_answer = time.monotonic()  # stopped, not gone: the pause is not the master's silence
        if stop is None and time.monotonic() - last_answer > timeout:
            # The master is gone (or cut off): a worker must never outlive it.
            os._exit(3)
