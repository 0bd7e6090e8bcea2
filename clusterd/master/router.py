"""The master's sockets and the routing of every call between clients, master and workers.

The per-call path is kept short: a client's request is decoded once (to learn its method and id),
then its original bytes go to a worker with a routing token; the worker's answer bytes go back to
the client untouched. No future, task or timer is created per forwarded call.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from time import perf_counter
from typing import Any

import psutil
import zmq

from .. import protocol, wire
from ..endpoint import Dispatcher, encode_response, method_table, start_task
from ..ops import log, systemd
from ..ops.telemetry import Telemetry
from ..ops.tracing import Tracing
from ..protocol import NO_ID, RPCError
from ..runtime_dir import RuntimeDir
from ..settings import Config
from ..wire import ANSWER, CALL, TOKEN_SIZE
from ..worker.handles import OnExit, OnLine, Spawner
from ..worker.spawn import make_spawner
from ..worker_log import CallErrors
from ..zmqloop import NOBLOCK, Outbox, SocketReader, send_frames
from .admin import Admin
from .backlog import Backlogs
from .batch import Batches
from .dir_keeper import DirKeeper
from .endpoint import WorkersProxy, internal_methods, outcome
from .front import FrontDoor
from .instance_life import InstanceLife
from .local import DOORS, LocalMethods, calling_door, master_lacks
from .local_links import LocalLinks
from .pool import Call, Worker
from .reload import ReloadManager
from .sockets import Sockets
from .states import ClusterState, WorkerState
from .status import status_document
from .supervisor import Supervisor
from .waiting import CallQueue, Deadlines
from .worker_events import WorkerEvents
from .worker_messages import WorkerMessages

_BODY = 1 + wire.TOKEN_SIZE  # where an answer frame's response starts, after its kind and token
REFUSALS = frozenset({protocol.NO_WORKER, protocol.SHUTTING_DOWN, protocol.TOO_BUSY})
# Enum members as module constants: on the per-call path a global lookup, not an Enum class attribute
_STOPPING = ClusterState.STOPPING
_READY = WorkerState.READY


class Router(InstanceLife, WorkerMessages):
    """Implements the workers proxy's caller (WorkerCaller); WorkerEvents is its SupervisorHost."""

    STALLED = "Too many answers not taken by this client: read them first"

    def __init__(self, config: Config, master_cls: type, worker_cls: type,
                 notifier: systemd.Notifier | None = None, version: str | None = None) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.started_at = time.time()
        self.state = ClusterState.STARTING
        self.notifier = notifier
        self.version = version
        self.graceful = True
        self.interrupted = False  # a Ctrl-C (SIGINT) asked for the stop: a second one hurries it
        self.ctx = zmq.Context()
        self.sockets = Sockets(self.loop, self.ctx, config)
        self.dir = RuntimeDir(config.instance_dir)
        self.worker_endpoint = f"ipc://{config.instance_dir / 'workers.sock'}"
        # in every worker identity: a worker of another master (a shared or recreated runtime dir) is refused
        self.token = secrets.token_hex(4)
        self.keeper = DirKeeper(self)
        self.shared: Any = None
        self.agents: Any = None        # the AgentRegistry, with --worker-bind
        self.rsock: zmq.Socket | None = None
        self.links: LocalLinks | None = None  # local worker processes' links (local_links.py)
        self.front = FrontDoor(config.http_binds)
        self.drain_delay_started = False  # --drain-delay: /readyz says 503 while calls are still served
        self.endpoint = master_cls()
        self.endpoint.name = config.name
        self.endpoint.pid = os.getpid()
        self.endpoint._caller = self
        self.endpoint.workers = WorkersProxy(self)
        self.dispatcher = Dispatcher(self.endpoint, config.debug)
        self.dispatcher.report = CallErrors(log.logger).report  # a master method that raises is logged
        self.worker_identity = config.worker_identity  # --user/--group: who the workers run as
        self.log_ring: Any = None      # set by the runner: the recent log for `clusterd logs`
        self.master_code: Any = None   # set by the runner: tells when the master's own code changed
        self.worker_methods: dict[str, dict] = {name: m.describe() for name, m in method_table(worker_cls).items()}
        self.supervisor = Supervisor(config, WorkerEvents(self), self._make_spawner)
        self.reloads = ReloadManager(self)
        self.admin = Admin(self)
        self.local = LocalMethods(self, self.dispatcher, self.admin.handlers,
                                  internal_methods(self.endpoint.workers, self))
        self.batches = Batches(self)
        self.queue = CallQueue(self)
        self.deadlines = Deadlines(self)
        self._token = 0
        self.stopped = asyncio.Event()
        self.hurried = asyncio.Event()  # stop at once: what a graceful stop still waits for is cut short
        self._tasks: set[asyncio.Task] = set()
        self.readers: dict[zmq.Socket, SocketReader] = {}
        self.outboxes: dict[zmq.Socket, Outbox] = {}  # the worker sockets' (Sockets.outboxes)
        # calls in flight per client, by client socket then ROUTER identity (--max-client-inflight)
        self.client_calls: dict[zmq.Socket, dict[bytes, int]] = {}
        self.inflight_limit = config.max_client_inflight or 1 << 62
        # answers of clients whose queue is full (they do not read): kept, and their calls get -32005
        self.backlogs = Backlogs(self)
        self.refused_busy = 0  # calls refused with -32005 (too many in flight, or answers not taken)
        self.process = psutil.Process()
        self.process.cpu_percent(None)
        self._faults = log.RateLimited()
        self.telemetry = Telemetry(lambda: status_document(self), _clusterd_version(), config.metrics_bind,
                                   config.dashboard)
        self.local.internal["clusterd.metrics"] = self._metrics_for_worker
        if self.telemetry.feed is not None:
            self.local.internal["clusterd.dashboard_after"] = self._dashboard_for_worker
        self.record = self.telemetry.record   # the per-call path: record(method, door, outcome, seconds)
        self.tracing: Tracing | None = None    # set once the master's services ran (ops/tracing.py)

    def _make_spawner(self, on_line: OnLine, on_exit: OnExit) -> Spawner:
        identity = self.worker_identity
        return make_spawner(self.loop, self.config, self.ctx, self.child_environ(), on_line, on_exit,
                            identity.popen_kwargs() if identity is not None else None,
                            pass_fds=lambda: self.front.fds)

    def child_environ(self) -> dict[str, str]:
        """The environment a worker process starts with (the user's own with --user)."""
        env = systemd.child_environ(os.environ)
        return self.worker_identity.environ(env) if self.worker_identity is not None else env

    # ------------------------------------------------------------------ sockets
    def open_sockets(self) -> None:
        socks = self.sockets
        socks.open(self.keeper.bind_ipc, self.on_client_message, self._on_worker_message, self._undeliverable)
        self.outboxes = socks.outboxes
        self.keeper.start()
        self.readers = socks.readers
        self.control, self.public, self.wsock, self.rsock = socks.control, socks.public, socks.workers, socks.remote
        self.links = socks.links
        self.client_calls = {sock: {} for sock in socks.client_sockets()}
        if self.rsock is not None:
            from .remote import AgentRegistry
            self.agents = AgentRegistry(self)

    def close_sockets(self) -> None:
        self.keeper.close()
        self.backlogs.close()
        if self.agents is not None:
            self.agents.close()
        self.sockets.close(term=not self.supervisor.spawner.alive())

    # ------------------------------------------------------------------ client requests
    def on_client_message(self, frames: list[bytes], sock: zmq.Socket, source: str) -> None:
        payload = frames[-1]
        envelope = frames[:-1]
        try:
            try:
                obj = protocol.fast_loads(payload)
            except ValueError:
                obj = protocol.loads(payload)  # numbers past a double's range: only the exact parse reads them
            else:
                if type(obj) is not dict or type(obj.get("id")) is float or obj.get("method") in self.local:
                    obj = protocol.loads(payload)  # a batch, a big-integer id, or params the master itself reads
        except ValueError as exc:
            self.telemetry.count("rejected", "malformed")
            return self.send(sock, envelope, protocol.dumps(protocol.parse_error(exc)))
        try:
            if type(obj) is dict:
                req = protocol.parse_request(obj)
                if type(req) is dict:
                    self.telemetry.count("rejected", "malformed")
                    return self.send(sock, envelope, protocol.dumps(req))
                self.route(req, payload, sock, envelope, source)
            elif type(obj) is list:
                self.batches.answer(obj, sock, envelope, source)
            else:
                self.send(sock, envelope, protocol.encode_error(None, protocol.INVALID_REQUEST))
        except Exception:  # a fault of ours: the client still gets an answer, the socket is still read
            self._faults.exception("handling a client's message failed")
            self.send(sock, envelope, protocol.encode_error(None, protocol.INTERNAL_ERROR))

    def route(self, req: protocol.Request, payload: bytes, sock: zmq.Socket, envelope: list[bytes],
              source: str) -> None:
        """Send one request where it belongs: the master itself, an admin method, or a worker."""
        method = req.method
        if method in self.local:
            if not self._run_inline(req, sock, envelope, source):
                request = protocol.loads(payload) if self.tracing is not None else None
                self.spawn_task(self.local.answer(req, sock, envelope, source, request))
            return
        door = DOORS.get(source)
        if source == "worker":
            # a worker's self.master.call is never forwarded back to a worker (DESIGN.md 2)
            if req.id is not NO_ID:
                self.send(sock, envelope, protocol.dumps(master_lacks(req)))
                if door is not None:
                    self.telemetry.record_code(method, door, protocol.METHOD_NOT_FOUND, 0.0)
            return
        meta = self.worker_methods.get(method)
        if meta is None:
            if req.id is not NO_ID:
                self.send(sock, envelope, protocol.dumps(protocol.method_not_found(req.id, method)))
                self.telemetry.record_code(method, door, protocol.METHOD_NOT_FOUND, 0.0)
            return
        if self.state is _STOPPING:
            if req.id is not NO_ID:
                self.send(sock, envelope, protocol.encode_error(req.id, protocol.SHUTTING_DOWN))
                self.telemetry.refused(method, door, protocol.SHUTTING_DOWN)
            return
        if req.id is NO_ID:
            worker = self.supervisor.balancer.pick()
            if worker is not None:
                self.to_worker([worker.ident, wire.NOTIFY, payload], worker.sock)
            return
        counts = self.client_calls.get(sock)
        if counts is not None:  # a client's call (not a worker's): bounded per client
            if self.backlogs.by_client and self.stalled(sock, envelope[0]):
                # its answers are not taken: this call is refused until its kept answers are all out
                self.refused_busy += 1
                self.send(sock, envelope, protocol.encode_error(req.id, protocol.TOO_BUSY, self.STALLED))
                self.telemetry.refused(method, door, protocol.TOO_BUSY)
                return
            held = counts.get(envelope[0], 0)
            if held >= self.inflight_limit:
                self.refused_busy += 1
                self.send(sock, envelope, protocol.encode_error(req.id, protocol.TOO_BUSY, self.busy_message()))
                self.telemetry.refused(method, door, protocol.TOO_BUSY)
                return
            counts[envelope[0]] = held + 1
        call = self.new_call(payload, req.id, meta, sock, envelope)
        call.method, call.door = method, door
        if self.tracing is not None:
            self._trace(call)
        self.dispatch(call)

    def _trace(self, call: Call) -> None:
        """A span for a call the master passes to a worker; the worker's span becomes its child."""
        request = protocol.loads(call.payload)
        span = self.tracing.start(call.method, request, door=call.door)
        call.payload = protocol.dumps(self.tracing.inject(request, span))
        self.tracing.open(call, span)

    def new_call(self, payload: bytes, rid: Any, meta: dict, sock: zmq.Socket | None = None,
                 envelope: list[bytes] | None = None, future: asyncio.Future | None = None) -> Call:
        call = Call(payload, rid, sock, envelope, future)
        call.idempotent = meta.get("idempotent", False)
        call.timeout = meta.get("timeout") or self.config.call_timeout
        call.started = perf_counter()
        return call

    def stalled(self, sock: zmq.Socket, ident: bytes) -> bool:
        """Whether a client still has answers it has not taken (retried first: it is sending again)."""
        return (sock, ident) in self.backlogs.by_client and not self.backlogs.retry(sock, ident)

    def busy_message(self) -> str:
        return f"Too many calls in flight from this client (at most {self.config.max_client_inflight})"

    @staticmethod
    def release_calls(counts: dict[bytes, int], ident: bytes, n: int = 1) -> None:
        """Calls of a client were answered (or dropped): they no longer count against its limit."""
        left = counts.get(ident, 0) - n
        if left > 0:
            counts[ident] = left
        else:
            counts.pop(ident, None)

    def client_inflight(self) -> int:
        return sum(sum(c.values()) for c in self.client_calls.values())

    def dispatch(self, call: Call, exclude: Worker | None = None) -> None:
        worker = self.supervisor.balancer.pick(exclude)
        if worker is None:
            self.queue.add(call)
        else:
            self.send_call(worker, call)

    def send_call(self, worker: Worker, call: Call) -> None:
        self._token += 1
        token = self._token.to_bytes(TOKEN_SIZE, "little")  # wire.token_bytes, inlined: per call
        call.token = token
        call.worker = worker
        worker.calls[token] = call
        if call.timeout:
            call.deadline = self.loop.time() + call.timeout
            self.deadlines.arm(call.timeout)
        self.outboxes[worker.sock].add(worker.ident, CALL + token + call.payload)  # wire.call_frame

    def _undeliverable(self, ident: bytes, items: list[bytes]) -> None:
        """A worker's connection is gone (ROUTER_MANDATORY): the calls it never got go elsewhere."""
        worker = self.supervisor.by_ident.get(ident)
        if worker is None:
            return  # gone already: its calls were answered or retried when it exited
        self.supervisor.balancer.remove(worker)
        for item in items:
            if item[:1] == CALL:
                call = worker.calls.pop(item[1:_BODY], None)
                if call is not None:
                    self.dispatch(call, exclude=worker)

    def flush_worker_messages(self) -> None:
        """Handle every message workers already sent: before judging them by what has not arrived."""
        for sock in (getattr(self, "wsock", None), self.rsock):
            reader = self.readers.get(sock) if sock is not None else None
            if reader is not None:
                reader.flush()
        links = getattr(self, "links", None)
        if links is not None:
            links.read_now()

    def to_worker(self, frames: list[bytes], sock: zmq.Socket | None = None) -> None:
        sock = sock or self.wsock
        if frames[0] in self.supervisor.by_ident or sock is self.links:  # to a worker: one item, after the others
            self.outboxes[sock].add(frames[0], b"".join(frames[1:]))
            return
        try:
            send_frames(sock, frames)
        except zmq.ZMQError:
            pass  # that worker's connection is gone; its exit is handled on its own
        self.readers[sock].wake()

    def send(self, sock: zmq.Socket, envelope: list[bytes], payload: bytes, counted: bool = False) -> bool:
        """Send an answer; False when it was kept in the client's backlog (backlog.py), where an answer
        to a counted call still counts in that client's calls in flight."""
        outbox = self.outboxes.get(sock)
        if outbox is not None:  # the answer to a worker's own request (or a forwarded one): one item, gathered
            outbox.add(envelope[0], (envelope[1] if len(envelope) > 1 else ANSWER) + payload)
            return True
        backlogs = self.backlogs
        if backlogs.by_client and (sock, envelope[0]) in backlogs.by_client:
            backlogs.keep(sock, envelope, payload, counted)  # after what it already waits for
            return not counted
        try:
            send_frames(sock, envelope + [payload], NOBLOCK)
        except zmq.ZMQError as exc:
            # the client is gone (EHOSTUNREACH: dropped) or does not take its answers (EAGAIN: its queue
            # is at the high-water mark): the answer is kept, and its calls get -32005 meanwhile
            if exc.errno == zmq.EAGAIN and sock in self.client_calls:
                backlogs.keep(sock, envelope, payload, counted)
                self.readers[sock].wake()
                return not counted
        self.readers[sock].wake()
        return True

    def reply(self, call: Call, payload: bytes) -> None:
        """Answer a call with the master's own response (the worker's answers go by _on_answer)."""
        if call.future is None:
            counts = self.client_calls.get(call.sock)
            if self.send(call.sock, call.envelope, payload, counts is not None) and counts is not None:
                self.release_calls(counts, call.envelope[0])
        elif not call.future.done():
            call.future.set_result(payload)

    def reply_error(self, call: Call, code: int, message: str | None = None) -> None:
        if self.tracing is not None:
            self.tracing.close(call, code)
        if call.door is not None:
            self.telemetry.record_code(call.method, call.door, code, perf_counter() - call.started)
            if code in REFUSALS and call.token == b"":   # it never reached a worker
                self.telemetry.count("refused", code)
        self.reply(call, protocol.encode_error(call.rid, code, message))

    # ------------------------------------------------------------------ WorkerCaller
    def ready_workers(self) -> list[Worker]:
        return [s.active for _i, s in sorted(self.supervisor.slots.items())
                if s.active is not None and s.active.state is WorkerState.READY]

    def start_worker_call(self, method: str, params: list | dict, worker: Worker | None = None) -> asyncio.Future:
        """Send a call from the master (or on behalf of a worker) to a worker: a future of its answer
        bytes (one future and one item per call, no task)."""
        if self.state is ClusterState.STOPPING and worker is None:
            raise RPCError(protocol.SHUTTING_DOWN)
        fut = self.loop.create_future()
        request = protocol.make_request(method, params, 0)
        if self.tracing is not None:
            self.tracing.inject(request)   # the worker's span is a child of the master's current one
        call = self.new_call(protocol.dumps(request), 0, self.worker_methods.get(method) or {}, future=fut)
        call.method, call.door = method, calling_door.get()
        call.idempotent = call.idempotent and worker is None
        if worker is None:
            self.dispatch(call)
        else:
            self.send_call(worker, call)
        return fut

    async def call_worker(self, method: str, params: list | dict, worker: Worker | None = None) -> Any:
        """A call from the master (or on behalf of a worker) to a worker; its result, or RemoteError."""
        return outcome(await self.start_worker_call(method, params, worker))

    def _run_inline(self, req: protocol.Request, sock: zmq.Socket, envelope: list[bytes], source: str) -> bool:
        """Run a plain-def master method right here, in the drain that read it (no task), counted as
        LocalMethods counts it; False when the method is not one (or a span is wanted: tracing)."""
        method = self.dispatcher.methods.get(req.method)
        if method is None or method.is_async or self.tracing is not None:
            return False
        started = perf_counter()
        prepared = self.dispatcher.prepare(req)
        if type(prepared) is dict:
            response = prepared
        else:
            response = self.dispatcher.run_sync(prepared[0], req.params, req.id, method.name)
        if req.id is not NO_ID:
            door = DOORS.get(source)
            if door is not None:
                error = response.get("error")
                self.telemetry.record_code(req.method, door, error.get("code") if error else None,
                                           perf_counter() - started)
            self.send(sock, envelope, encode_response(response, self.config.debug))
        return True

    async def _metrics_for_worker(self, accept: str = "") -> dict:
        """clusterd.metrics (workers only): the instance's Prometheus text, for a worker's HTTP door."""
        body, content_type = self.telemetry.exporter.render(accept)
        return {"content_type": content_type, "text": body.decode()}

    async def _dashboard_for_worker(self, seq: int | None = None) -> dict:
        """clusterd.dashboard_after (workers only): the dashboard's messages after seq, for the page
        a worker serves on the HTTP port (a long poll: see DashboardFeed.relay)."""
        if seq is not None and type(seq) is not int:
            raise RPCError(protocol.INVALID_PARAMS, "seq must be an integer or null")
        return await self.telemetry.feed.relay(seq)

    def spawn_task(self, coro) -> None:
        """A coroutine run as a task (started eagerly on Python 3.12+: done on return when it never awaits)."""
        task = start_task(self.loop, coro)
        if not task.done():
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


def _clusterd_version() -> str:
    from .. import __version__
    return __version__


__all__ = ["Router"]
