"""The master's sockets, each with its reader on the loop (DESIGN.md 7):

    control.sock   ROUTER, ipc, 0600     the CLI and admin clients (`clusterd.*` control commands)
    --bind ADDR    ROUTER                 the public front door: clients' JSON-RPC calls
    workers.sock   ROUTER, ipc, 0600     local workers (and inproc, for --isolation thread)
    --worker-bind  ROUTER, CURVE          agents on other hosts and their workers
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import zmq

from ..config import Config
from ..zmqloop import SocketReader

ClientHandler = Callable[[list[bytes], zmq.Socket, str], None]
WorkerHandler = Callable[[list[bytes], zmq.Socket], None]
BindIpc = Callable[[zmq.Socket, str], None]


class Sockets:
    def __init__(self, loop: asyncio.AbstractEventLoop, ctx: zmq.Context, config: Config) -> None:
        self.loop = loop
        self.ctx = ctx
        self.config = config
        self.readers: dict[zmq.Socket, SocketReader] = {}
        self.control: zmq.Socket | None = None
        self.public: zmq.Socket | None = None
        self.workers: zmq.Socket | None = None
        self.remote: zmq.Socket | None = None
        self.authenticator: Any = None
        self._made: list[zmq.Socket] = []

    def open(self, bind_ipc: BindIpc, on_client: ClientHandler, on_worker: WorkerHandler) -> None:
        """bind_ipc(sock, name) binds a socket as a file of the instance's directory."""
        cfg = self.config
        self.control = self._router_socket(client=True)
        bind_ipc(self.control, "control.sock")
        if cfg.binds:
            self.public = self._router_socket(client=True)
            for addr in cfg.binds:
                self.public.bind(addr)
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
            self._read(self.remote, lambda frames, sock=self.remote: on_worker(frames, sock))
        self._read(self.control, lambda frames, sock=self.control: on_client(frames, sock, "admin"))
        if self.public is not None:
            self._read(self.public, lambda frames, sock=self.public: on_client(frames, sock, "client"))
        self._read(self.workers, lambda frames, sock=self.workers: on_worker(frames, sock))

    def _read(self, sock: zmq.Socket, handler: Callable[[list[bytes]], None]) -> None:
        self.readers[sock] = SocketReader(self.loop, sock, handler)

    def client_sockets(self) -> list[zmq.Socket]:
        return [sock for sock in (self.control, self.public) if sock is not None]

    def _router_socket(self, client: bool) -> zmq.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        self._made.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0 if not client else 100000)
        sock.setsockopt(zmq.RCVHWM, 0 if not client else 100000)
        if client and self.config.max_message_size:
            sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_size)
        return sock

    def close(self, term: bool = True) -> None:
        """Close every socket made, even when a later bind failed; term=False leaves the context
        (an abandoned thread worker still holds sockets: term() would wait for ever)."""
        for reader in self.readers.values():
            reader.close()
        for sock in self._made:
            sock.close(linger=200)
        if self.authenticator is not None:
            self.authenticator.stop()
        if term:
            self.ctx.term()


__all__ = ["Sockets"]
