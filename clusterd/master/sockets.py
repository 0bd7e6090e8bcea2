"""The master's sockets, each with its reader on the loop (DESIGN.md 7):

    control.sock   ROUTER, ipc, 0600     the CLI and admin clients (`clusterd.*` control commands)
    --bind ADDR    ROUTER                 the public front door: clients' JSON-RPC calls
    workers.sock   ROUTER, ipc, 0600     local workers' heartbeats (and inproc, for --isolation thread)
    links          a socket pair per local worker process: its calls and answers (local_links.py)
    --worker-bind  ROUTER, CURVE          agents on other hosts and their workers
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import Callable
from typing import Any

import zmq

from .. import limits
from ..message_guard import FRAME_OVERHEAD, UNFINISHED_FRAMES, MessageGuard
from ..ops import log
from ..settings import Config
from ..zmqloop import Outbox, SocketReader
from .local_links import LocalLinks

ClientHandler = Callable[[list[bytes], zmq.Socket, str], None]
WorkerHandler = Callable[[list[bytes], zmq.Socket], None]
Undeliverable = Callable[[bytes, list[bytes]], None]
BindIpc = Callable[[zmq.Socket, str], None]


class Sockets:
    def __init__(self, loop: asyncio.AbstractEventLoop, ctx: zmq.Context, config: Config) -> None:
        self.loop = loop
        self.ctx = ctx
        self.config = config
        self.readers: dict[zmq.Socket, SocketReader] = {}
        # the worker sockets' outboxes: what goes to a worker leaves once per drain or loop turn
        self.outboxes: dict[zmq.Socket, Outbox] = {}
        self._holds: tuple[Outbox, ...] = ()
        self.control: zmq.Socket | None = None
        self.public: zmq.Socket | None = None
        self.workers: zmq.Socket | None = None
        self.remote: zmq.Socket | None = None
        self.links: LocalLinks | None = None  # local worker processes' links (not with --isolation thread)
        self.authenticator: Any = None
        self._made: list[zmq.Socket] = []
        # what one client connection can make the master hold is bounded (SECURITY.md, "Bytes per client")
        self.gates: dict[zmq.Socket, limits.ClientGate] = {}
        self.open_files = limits.raise_open_files()
        self.max_clients = limits.DEFAULT_MAX_CLIENTS
        self.guard: MessageGuard | None = None
        self.watch: limits.GateWatch | None = None

    def open(self, bind_ipc: BindIpc, on_client: ClientHandler, on_worker: WorkerHandler,
             undeliverable: Undeliverable) -> None:
        """bind_ipc(sock, name) binds a socket as a file of the instance's directory; undeliverable
        (ident, items) hears of items for a worker whose connection is gone."""
        cfg = self.config
        self.max_clients = limits.max_clients(cfg.max_clients, self.open_files, 1 + len(cfg.binds), cfg.workers)
        self.control = self._router_socket(client=True)
        if cfg.binds:
            self.public = self._router_socket(client=True)
        # the gates' enforcer runs before the first bind: every connection is counted
        unfinished = UNFINISHED_FRAMES * (cfg.max_message_size or 16 * 2 ** 20)
        self.watch = limits.GateWatch(self.ctx, cfg.instance_dir, bind_ipc, list(self.gates.values()), unfinished)
        for sock, handler in self.watch.readers:
            self._made.append(sock)
            self._read(sock, handler)
        bind_ipc(self.control, "control.sock")
        for addr in cfg.binds:
            self.public.bind(addr)
            if addr.startswith("ipc://"):
                _warn_if_others_connect(addr[len("ipc://"):])
        self.workers = self._router_socket(client=False)
        self.workers.setsockopt(zmq.ROUTER_MANDATORY, 1)
        bind_ipc(self.workers, "workers.sock")
        if cfg.isolation == "thread":
            from ..worker.threads import THREAD_ENDPOINT
            self.workers.bind(THREAD_ENDPOINT)  # thread workers share the context, as inproc requires
        if cfg.worker_binds:
            # workers from agents on other hosts: a socket of its own, CURVE-encrypted with --curve-dir
            from .remote import configure_remote_socket
            self.remote = self._router_socket(client=False)
            self.authenticator = configure_remote_socket(self.remote, self.ctx, cfg)
        # every reader holds the worker outboxes while it drains: a drain's calls and answers for a
        # worker (from clients or from workers) leave together when it ends
        for sock in (self.workers, self.remote):
            if sock is not None:
                self.outboxes[sock] = Outbox(self.loop, sock, undeliverable)
        if cfg.isolation != "thread":
            self.links = LocalLinks(self.loop, on_worker, undeliverable)
            self.outboxes[self.links] = self.links.outbox  # type: ignore[index]  # keyed like a socket
        self._holds = tuple(self.outboxes.values())
        if self.links is not None:
            self.links.holds = self._holds
        if self.remote is not None:
            self._read(self.remote, lambda frames, sock=self.remote: on_worker(frames, sock))
        self._read(self.control, self._client_handler(self.control, "admin", on_client))
        if self.public is not None:
            self._read(self.public, self._client_handler(self.public, "client", on_client))
        self._read(self.workers, lambda frames, sock=self.workers: on_worker(frames, sock))
        woken = self.watch.proc is not None
        self.guard = MessageGuard(self.loop, list(self.gates.values()), unfinished, woken)
        self.watch.on_rss_growth = self.guard.wake
        self.watch.watch_exit(self.loop, self._gate_gone)

    def _gate_gone(self) -> None:
        """fdgate died: the guard polls while clients are connected, as without it."""
        if self.guard is not None:
            self.guard.woken = False
            for gate in self.gates.values():
                gate.on_accept = self.guard.arm
            self.guard.arm()

    def _client_handler(self, sock: zmq.Socket, source: str, on_client: ClientHandler) -> Callable[[list[bytes]], None]:
        gate = self.gates[sock]
        overhead = FRAME_OVERHEAD

        def handle(frames: list[bytes]) -> None:
            # bytes of whole messages received, for the guard against messages that never end
            gate.delivered += len(frames[-1]) + overhead * len(frames) + (
                sum(map(len, frames[1:-1])) if len(frames) > 2 else 0)
            on_client(frames, sock, source)
        return handle

    def _read(self, sock: zmq.Socket, handler: Callable[[list[bytes]], None]) -> None:
        self.readers[sock] = SocketReader(self.loop, sock, handler, self.outboxes.get(sock), self._holds)

    def client_sockets(self) -> list[zmq.Socket]:
        return [sock for sock in (self.control, self.public) if sock is not None]

    def _router_socket(self, client: bool) -> zmq.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        self._made.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        if client:
            # a send past the high-water mark fails with EAGAIN (ROUTER_MANDATORY) instead of queueing,
            # and the client's calls get -32005 while its queue is full (router.py)
            sock.setsockopt(zmq.SNDHWM, self.client_send_hwm())
            sock.setsockopt(zmq.RCVHWM, self.config.max_client_inflight or 100000)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            if self.config.max_message_size:
                sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_size)
            self._open_gate(sock)  # before any bind: every connection is counted
        else:
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
        return sock

    def client_send_hwm(self) -> int:
        """Answers queued per client connection: its calls' answers and as many refusals (-32005), plus
        slack for libzmq's I/O thread; 100000 when calls in flight are unlimited."""
        inflight = self.config.max_client_inflight
        return 2 * inflight + 64 if inflight else 100000

    def _open_gate(self, sock: zmq.Socket) -> None:
        """Cap the connections of a client socket per endpoint (--max-clients) so that fds never run out."""
        address = f"inproc://clusterd-monitor-{id(sock):x}"
        self.gates[sock] = limits.ClientGate(sock, self.max_clients, address, _endpoint_label)

    def clients_document(self) -> dict:
        """The `clients` part of the status document."""
        gates = self.gates
        return {"control": gates[self.control].document() if self.control in gates else None,
                "bind": gates[self.public].document() if self.public in gates else None,
                "unfinished_closed": self.guard.dropped if self.guard is not None else 0}

    def close(self, term: bool = True) -> None:
        """Close every socket made, even when a later bind failed; term=False leaves the context
        (an abandoned thread worker still holds sockets: term() would wait for ever)."""
        if self.guard is not None:
            self.guard.close()
        if self.watch is not None:
            self.watch.close_process()
        for reader in self.readers.values():
            reader.close()
        if self.links is not None:
            self.links.close()
        for sock in self._made:
            sock.close(linger=200)
        if self.authenticator is not None:
            self.authenticator.stop()
        if term:
            self.ctx.term()


def _warn_if_others_connect(path: str) -> None:
    """Linux keeps no byte count per unix-socket connection, so the unfinished-message guard cannot
    tell which ipc peer sends a message that never ends (SECURITY.md): such a --bind is for trusted
    local peers only, and its file mode is what keeps the others out."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        log.event("ipc-bind-open", f"--bind ipc://{path} can be connected to by other users (mode "
                  f"{stat.S_IMODE(mode):o}): the master's memory per client is not bounded for ipc peers that "
                  f"never finish a message; `chmod 600 {path}` (or a private directory) unless they are trusted",
                  level=logging.WARNING)


def _endpoint_label(endpoint: str) -> str:
    return "control.sock" if endpoint.endswith("/control.sock") else endpoint


__all__ = ["Sockets"]
