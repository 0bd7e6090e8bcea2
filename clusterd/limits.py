"""Open files and client connections: the master never runs out of file descriptors.

libzmq's ipc listener aborts the whole process when accept() meets EMFILE, and its tcp listener retries
in a busy loop; so the master must never get there. At start the soft RLIMIT_NOFILE is raised to the
hard one (as nginx's worker_rlimit_nofile and systemd services do); each client endpoint (control.sock
and every --bind) then holds at most --max-clients connections, chosen so that the sum leaves fds for
the worker link, the workers' pipes and the master itself, plus headroom for connections libzmq accepts
before the master has seen them. A connection past the cap is shut down as soon as its ACCEPTED event
arrives (a socket monitor), by a process of its own (fdgate.py) so that a busy master loop cannot delay
it, and the cap being reached is logged once per episode. A burst that outruns that process makes
it pause the endpoint's listener in the kernel for a moment (fdgate.ListenerPauses); should it die
with a pause on, the master lifts it (connections.lift_listener_pauses).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import resource
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import zmq

from .connections import (
    ACCEPT_FAILED,
    ACCEPTED,
    DISCONNECTED,
    ConnectionCounts,
    lift_listener_pauses,
    monitor_event,
    same_place,
)
from .ops import log

RESERVE_BASE = 64          # the master's own fds: interpreter, loop, zmq context and sockets, logs, psutil
RESERVE_PER_WORKER = 8     # per worker, twice over for a rolling reload: its ipc link, pipes, zygote
HEADROOM = 4               # 1/HEADROOM of the client budget is kept free for accepts not yet refused
DEFAULT_MAX_CLIENTS = 10000
_EVENTS = ACCEPTED | DISCONNECTED | ACCEPT_FAILED


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

    It reads the socket's monitor (ACCEPTED/DISCONNECTED carry the connection's fd), bound at an ipc
    address of the instance directory for the fdgate process (GateWatch), which shuts down connections
    past the cap at once and passes each event on here. The fd is libzmq's: it is only shut down (never
    closed), so libzmq sees the peer go away and closes it itself.
    """

    def __init__(self, sock: zmq.Socket, cap: int, address: str, label: Callable[[str], str] = str) -> None:
        self.cap = cap
        self._label = label
        self.address = address
        self._counted = ConnectionCounts()
        self.open = self._counted.open          # fd -> the endpoint it was accepted on
        self.counts = self._counted.counts      # endpoint -> connections held
        self.refusing: set[str] = set()
        self.paused: set[str] = set()           # tcp endpoints whose listener fdgate has paused
        self._pause_told: set[str] = set()      # logged once per refusing episode
        self.refused = 0
        self._accept_failed_logged = False
        self.delivered = 0   # bytes of complete messages the master read (for the MessageGuard)
        self.on_accept: Callable[[], None] | None = None
        self.sock = sock
        sock.monitor(address, _EVENTS)

    def on_events(self, frames: list[bytes]) -> None:
        """One monitor message (monitor_event). A connection past the cap is shut down here too: fdgate
        has done it already, or it is not running."""
        parsed = monitor_event(frames)
        if parsed is None:
            return
        event, value, endpoint = parsed
        if event == ACCEPTED:
            held = self._counted.accepted(value, endpoint)
            if held > self.cap:
                self._refuse(value, endpoint, len(frames) > 2 and frames[2] == b"shut")
            elif self.on_accept is not None:
                self.on_accept()
        elif event == DISCONNECTED:
            gone_from = self._counted.disconnected(value)
            if gone_from is not None:
                held = self.counts[gone_from]
                if gone_from in self.refusing and held < self.cap:
                    self.refusing.discard(gone_from)
                    self._pause_told.discard(gone_from)
                    log.event("max-clients", f"{self._label(gone_from)}: accepting clients again ({held} connected)")
        elif event == ACCEPT_FAILED and not self._accept_failed_logged:
            self._accept_failed_logged = True
            log.event("accept-failed", f"{self._label(endpoint)}: accept failed "
                      f"(errno {value}); lower --max-clients or raise the open-file limit", level=logging.ERROR)

    def _refuse(self, fd: int, endpoint: str, done: bool) -> None:
        self.refused += 1
        if endpoint not in self.refusing:
            self.refusing.add(endpoint)
            log.event("max-clients", f"{self._label(endpoint)}: {self.cap} clients connected (--max-clients): "
                      "closing new connections until some leave", level=logging.WARNING)
        if done:
            return
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            return  # already closed by libzmq: its DISCONNECTED event follows
        try:
            # the fd may have been closed and reused since the event: only a connection of a client
            # endpoint of ours (same family and local port or path) is ever shut down
            if sock.family in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX) and sock.type == socket.SOCK_STREAM \
                    and same_place(sock.getsockname(), endpoint):
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
            if same_place(sock.getsockname(), endpoint):
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            sock.detach()

    def on_pause(self, endpoint: str, paused: bool) -> None:
        """fdgate paused (or lifted the pause of) the listener of one of our tcp endpoints."""
        if not paused:
            self.paused.discard(endpoint)
            return
        self.paused.add(endpoint)
        if endpoint not in self._pause_told:
            self._pause_told.add(endpoint)
            log.event("max-clients", f"{self._label(endpoint)}: connections past the cap arrive faster than they are "
                      "closed: new handshakes are paused in the kernel for a moment at a time, until some clients "
                      "leave", level=logging.WARNING)

    def document(self) -> dict:
        return {"max_per_endpoint": self.cap, "connected": sum(self.counts.values()), "refused": self.refused,
                "paused": bool(self.paused)}


class GateWatch:
    """Brings the gates' monitor events to the fdgate process, which enforces the caps whatever the
    master is doing, and to the master's loop (status counts, and the caps again as a backstop).

    libzmq monitors only over inproc: for each gate a zmq proxy reads its monitor in a thread of its own,
    in C without the GIL (so neither a busy loop nor a long C call in the master delays it), publishes
    each event on an ipc socket of the instance directory (0600) that fdgate subscribes to, and copies it
    to an inproc socket the master's loop reads. The monitor's reader never goes away while the master
    lives: libzmq's I/O thread would block on a monitor without a peer. A PUB never blocks: if fdgate
    dies, events to it are dropped, the master's loop still enforces the caps and its guard goes back
    to polling. If fdgate cannot start, the master reads the monitors itself (logged).
    """

    def __init__(self, ctx: zmq.Context, directory: Path, bind_ipc: Callable[[zmq.Socket, str], None],
                 gates: list[ClientGate], rss_step: int) -> None:
        """bind_ipc(sock, name) binds a socket as a file of the instance directory (0600, ours)."""
        self.ctx = ctx
        self.gates = gates
        self.rss_step = rss_step
        self.on_rss_growth: Callable[[], None] | None = None   # the MessageGuard's wake
        self.proc: subprocess.Popen | None = None
        self.enforcing = False
        self.readers: list[tuple[zmq.Socket, Callable[[list[bytes]], None]]] = []
        self._relays: list[tuple[threading.Thread, zmq.Socket]] = []
        self._exit_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        monitors = [self._pair(gate.address, connect=True) for gate in gates]
        if not gates:
            return
        events = ctx.socket(zmq.PULL)
        events.setsockopt(zmq.RCVHWM, 0)
        events.setsockopt(zmq.LINGER, 0)
        bind_ipc(events, "gate.sock")
        outs = []
        for i in range(len(gates)):
            out = ctx.socket(zmq.PUB)
            out.setsockopt(zmq.SNDHWM, 0)
            out.setsockopt(zmq.LINGER, 0)
            bind_ipc(out, f"gate-{i}.sock")
            outs.append(out)
        if self._start(events, directory):
            self.readers.append((events, self._on_event))
            for gate, monitor, out in zip(gates, monitors, outs):
                address = f"inproc://clusterd-gate-copy-{id(out):x}"
                copy_in = self._pair(address, connect=False)
                self._relay(monitor, out, self._pair(address, connect=True))
                self.readers.append((copy_in, gate.on_events))
            return
        self.close_process()
        events.close(linger=0)
        for out in outs:
            out.close(linger=0)
        log.event("max-clients", "the connection gate process did not start: --max-clients is enforced by "
                  "the master's loop (a busy loop delays it)", level=logging.WARNING)
        self.readers.extend(zip(monitors, (gate.on_events for gate in gates)))

    def _pair(self, address: str, connect: bool) -> zmq.Socket:
        pair = self.ctx.socket(zmq.PAIR)
        pair.setsockopt(zmq.SNDHWM, 0)  # events are small; libzmq must never block on them
        pair.setsockopt(zmq.RCVHWM, 0)
        pair.setsockopt(zmq.LINGER, 0)
        pair.connect(address) if connect else pair.bind(address)
        return pair

    def _start(self, events: zmq.Socket, directory: Path) -> bool:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "clusterd.fdgate", str(os.getpid()), str(self.gates[0].cap), str(self.rss_step),
                 f"ipc://{directory / 'gate.sock'}",
                 *(f"ipc://{directory / f'gate-{i}.sock'}" for i in range(len(self.gates)))],
                stdin=subprocess.DEVNULL, env=env, close_fds=True)
        except OSError:
            return False
        try:  # Yama (ptrace_scope 1) lets only an ancestor take our fds unless we name the process
            ctypes.CDLL(None).prctl(0x59616D61, self.proc.pid, 0, 0, 0)  # PR_SET_PTRACER
        except (OSError, AttributeError):
            pass
        if not events.poll(READY_TIMEOUT_MS):
            return False
        ready = events.recv_multipart()
        self.enforcing = ready[-1] == b"1"
        if not self.enforcing:
            log.event("max-clients", "the connection gate process cannot take the master's fds (pidfd_getfd "
                      "refused): --max-clients is enforced by the master's loop (a busy loop delays it)",
                      level=logging.WARNING)
        return True

    def _relay(self, monitor: zmq.Socket, out: zmq.Socket, copy: zmq.Socket) -> None:
        control = self.ctx.socket(zmq.PAIR)
        address = f"inproc://clusterd-gate-relay-{id(out):x}"
        control.bind(address)
        steer = self.ctx.socket(zmq.PAIR)
        steer.connect(address)

        def run() -> None:
            try:
                zmq.proxy_steerable(monitor, out, copy, steer)
            except zmq.ZMQError:
                pass
            finally:
                for sock in (monitor, out, copy, steer):
                    sock.close(linger=0)
        thread = threading.Thread(target=run, name="clusterd-gate-relay", daemon=True)
        thread.start()
        self._relays.append((thread, control))

    def watch_exit(self, loop: asyncio.AbstractEventLoop, on_exit: Callable[[], None]) -> None:
        """Should fdgate ever die, on_exit() is called (told by a pidfd, no polling)."""
        if self.proc is None:
            return
        try:
            self._exit_fd = os.pidfd_open(self.proc.pid)
        except (OSError, AttributeError):
            return
        self._loop = loop

        def exited() -> None:
            self._stop_exit_watch()
            code = self.proc.wait() if self.proc is not None else None
            self.proc = None
            log.event("max-clients", f"the connection gate process exited (status {code}): --max-clients is "
                      "now enforced by the master's loop alone (a busy loop delays it)", level=logging.ERROR)
            self.lift_pauses()
            on_exit()
        loop.add_reader(self._exit_fd, exited)

    def _stop_exit_watch(self) -> None:
        if self._exit_fd is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._exit_fd)
            os.close(self._exit_fd)
            self._exit_fd = None

    def _on_event(self, frames: list[bytes]) -> None:
        """[b"rss"]: the master's RSS grew by rss_step more; [b"pause" | b"resume", endpoint]: fdgate
        paused or lifted the listener of a flooded tcp endpoint."""
        if frames[0] == b"rss" and self.on_rss_growth is not None:
            self.on_rss_growth()
        elif frames[0] in (b"pause", b"resume") and len(frames) > 1:
            endpoint = frames[1].decode("utf-8", "replace")
            for gate in self.gates:
                if endpoint in gate.counts:
                    gate.on_pause(endpoint, frames[0] == b"pause")

    def lift_pauses(self) -> None:
        """fdgate is gone: lift the pauses it left on our listeners (nobody else would)."""
        paused = [endpoint for gate in self.gates for endpoint in gate.paused]
        for gate in self.gates:
            gate.paused.clear()
        if paused:
            lift_listener_pauses(paused)

    def close_process(self) -> None:
        """Stop monitoring, the relays (their sockets closed by their threads) and the fdgate process."""
        self._stop_exit_watch()
        for gate in self.gates:
            try:
                gate.sock.disable_monitor()  # first: libzmq must not send events to a monitor with no reader
            except zmq.ZMQError:
                pass
        for thread, control in self._relays:
            try:
                control.send(b"TERMINATE", zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            thread.join(2)
            control.close(linger=0)
        self._relays = []
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None


READY_TIMEOUT_MS = 10000   # a python start on a loaded machine


__all__ = ["raise_open_files", "client_budget", "max_clients", "ClientGate", "GateWatch"]
