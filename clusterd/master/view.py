"""The router as its helpers see it: what admin, batch, local, reload, remote and status use of it.

They import this, not the router, so the imports go one way (router -> helpers -> view); the
router satisfies it (a typing Protocol: nothing is inherited).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol

import psutil
import zmq

from ..runtime_dir import RuntimeDir
from ..settings import Config
from .pool import Call, Worker
from .states import ClusterState
from .supervisor import Supervisor


class MasterView(Protocol):
    config: Config
    loop: asyncio.AbstractEventLoop
    state: ClusterState
    supervisor: Supervisor
    version: str | None
    started_at: float
    process: psutil.Process
    queue: Any                    # the CallQueue (waiting.py): calls waiting for a ready worker
    reloads: Any                  # the ReloadManager (reload.py)
    agents: Any                   # the AgentRegistry (remote.py), with --worker-bind
    rsock: zmq.Socket | None      # the socket agents and their workers connect to
    local: Any                    # the LocalMethods (local.py)
    telemetry: Any                # the Telemetry (ops/telemetry.py): metrics, per-method statistics
    tracing: Any                  # the Tracing (ops/tracing.py), or None: OpenTelemetry off
    admin: Any                    # the Admin commands (admin.py)
    dir: RuntimeDir
    token: str                    # in every worker's identity
    worker_endpoint: str
    control: zmq.Socket
    wsock: zmq.Socket
    links: Any                    # the LocalLinks (local_links.py), or None with --isolation thread
    stopped: asyncio.Event
    interrupted: bool             # a Ctrl-C asked for the stop
    keeper: Any                   # the DirKeeper (dir_keeper.py)
    endpoint: Any                 # the user's MasterEndpoint
    worker_methods: dict[str, dict]
    client_calls: dict[zmq.Socket, dict[bytes, int]]
    readers: dict[zmq.Socket, Any]   # the SocketReader of each socket
    inflight_limit: int
    backlogs: Any                 # the Backlogs (backlog.py)
    refused_busy: int
    sockets: Any                  # the Sockets (sockets.py)
    log_ring: Any                 # the LogRing (log_ring.py): the recent log for `clusterd logs`
    master_code: Any              # the MasterCode (master_code.py): has the master's own code changed
    worker_identity: Any          # privileges.WorkerIdentity with --user/--group, else None

    drain_delay_started: bool
    front: Any                    # the FrontDoor (front.py): --http-bind sockets and what workers were told

    def set_state(self, state: ClusterState) -> None: ...

    def begin_drain_delay(self) -> None: ...

    def instance_ready(self) -> bool: ...

    def publish_readiness(self, worker: Worker | None = None) -> None: ...

    def update_status_line(self) -> None: ...

    def request_stop(self, graceful: bool = True) -> None: ...

    def spawn_task(self, coro: Coroutine[Any, Any, Any]) -> None: ...

    def send(self, sock: zmq.Socket, envelope: list[bytes], payload: bytes, counted: bool = False) -> bool: ...

    def stalled(self, sock: zmq.Socket, ident: bytes) -> bool: ...

    def to_worker(self, frames: list[bytes], sock: zmq.Socket | None = None) -> None: ...

    def new_call(self, payload: bytes, rid: Any, meta: dict, sock: zmq.Socket | None = None,
                 envelope: list[bytes] | None = None, future: asyncio.Future | None = None) -> Call: ...

    def dispatch(self, call: Call, exclude: Worker | None = None) -> None: ...

    def send_call(self, worker: Worker, call: Call) -> None: ...

    def reply_error(self, call: Call, code: int, message: str | None = None) -> None: ...

    def busy_message(self) -> str: ...

    def release_calls(self, counts: dict[bytes, int], ident: bytes, n: int = 1) -> None: ...

    def client_inflight(self) -> int: ...

    def flush_worker_messages(self) -> None: ...


__all__ = ["MasterView"]
