"""MasterEndpoint, and the master's event loop: sockets, routing of calls, admin methods.

The per-call path is kept short: a client's request is decoded once (to learn its method and id),
then its original bytes go to a worker with a routing token; the worker's answer bytes go back to
the client untouched. No future, task or timer is created per forwarded call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import zmq

from . import limits, log, protocol, systemd
from .config import Config
from .endpoint import Dispatcher, encode_response, method_table
from .pool import Call, Worker, WorkerState
from .protocol import NO_ID, RemoteError, RPCError
from .runtime_dir import InstanceBusy, RuntimeDir, RuntimeDirError
from .supervisor import Supervisor
from .worker_log import CallErrors
from .zmqloop import NOBLOCK, SocketReader, send_frames


@dataclass(frozen=True)
class WorkerInfo:
    """What the master's hooks learn about a worker."""

    slot: int
    pid: int | None
    generation: int
    host: str | None = None
    agent: str | None = None


class WorkersProxy:
    """`self.workers` on the master: call one, a given one, all, or share one execution."""

    def __init__(self, router: "Router") -> None:
        self._router = router
        self._shared: dict[tuple[str, bytes], asyncio.Future] = {}

    async def call(self, method: str, *params: Any) -> Any:
        return await self._router.call_worker(method, list(params))

    async def call_slot(self, slot: int, method: str, *params: Any) -> Any:
        worker = self._router.supervisor.slots.get(slot)
        target = worker.active if worker is not None else None
        if target is None or target.state is not WorkerState.READY:
            raise RPCError(protocol.NO_WORKER, f"No worker ready in slot {slot}")
        return await self._router.call_worker(method, list(params), target)

    async def broadcast(self, method: str, *params: Any) -> dict[int, Any]:
        """Every ready worker: {slot: result, or the RPCError it raised}."""
        targets = [s.active for s in self._router.supervisor.slots.values()
                   if s.active is not None and s.active.state is WorkerState.READY]
        results = await asyncio.gather(*(self._router.call_worker(method, list(params), w) for w in targets),
                                       return_exceptions=True)
        out: dict[int, Any] = {}
        for worker, result in zip(targets, results):
            if isinstance(result, BaseException) and not isinstance(result, RPCError):
                result = RPCError(protocol.INTERNAL_ERROR, str(result))
            out[worker.slot] = result
        return out

    async def call_shared(self, method: str, *params: Any) -> Any:
        """Concurrent identical calls share one execution; a later call starts a fresh one."""
        key = (method, protocol.dumps(list(params)))
        fut = self._shared.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._router.call_worker(method, list(params)))
            self._shared[key] = fut
            fut.add_done_callback(lambda _f: self._shared.pop(key, None))
        return await asyncio.shield(fut)


class MasterEndpoint:
    """Subclass this; mark the methods callers may reach with @rpc."""

    workers: WorkersProxy
    name: str
    pid: int

    async def start_services(self) -> None:
        """Runs before the workers start."""

    async def stop_services(self) -> None:
        """Runs after every worker exited."""

    async def on_worker_ready(self, worker: WorkerInfo) -> None:
        """A worker reported ready (after its start_services)."""

    async def on_worker_exit(self, worker: WorkerInfo, exit: dict) -> None:
        """A worker exited; exit has code, signal, at and reason."""

    def shared_block(self, name: str, size: int) -> memoryview:
        """A block of shared memory every worker can attach to by name."""
        return self._router.shared.block(name, size)


class Router:
    """The master's sockets and the routing of every call between clients, master and workers."""

    STALLED = "Too many answers not taken by this client: read them first"
    ADMIN = ("clusterd.status", "clusterd.reload", "clusterd.reload_wait", "clusterd.scale", "clusterd.stop",
             "clusterd.logs")

    def __init__(self, config: Config, master_cls: type, worker_cls: type) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.started_at = time.time()
        self.state = "starting"
        self.version: str | None = None
        self.ctx = zmq.Context()
        self.dir = RuntimeDir(config.instance_dir)
        self.worker_endpoint = f"ipc://{config.instance_dir / 'workers.sock'}"
        # in every worker identity: a worker of another master (a shared or recreated runtime dir) is refused
        self.token = secrets.token_hex(4)
        self._dir_taken_by: int | None = None  # another instance took our name: our worker socket moved
        self._private_dir: Path | None = None
        self._dir_problem: str | None = None
        self._dir_timer: asyncio.TimerHandle | None = None
        self.endpoint = master_cls()
        self.endpoint.name = config.name
        self.endpoint.pid = os.getpid()
        self.endpoint._router = self
        self.endpoint.workers = WorkersProxy(self)
        self.dispatcher = Dispatcher(self.endpoint, config.debug)
        self.dispatcher.report = CallErrors(log.logger).report
        self._local = _LocalMethods(self.dispatcher.methods)
        self.worker_methods: dict[str, dict] = {name: m.describe() for name, m in method_table(worker_cls).items()}
        self.worker_identity = config.worker_identity  # --user/--group: who the workers run as
        self.supervisor = Supervisor(config, self)
        self.queue: deque[Call] = deque()
        self._queue_timer: asyncio.TimerHandle | None = None
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._token = 0
        self.stopped = asyncio.Event()
        self.hurried = asyncio.Event()  # stop at once: what a graceful stop still waits for is cut short
        self._tasks: set[asyncio.Task] = set()
        self.readers: dict[zmq.Socket, SocketReader] = {}
        self._sockets: list[zmq.Socket] = []
        # calls in flight per client, by client socket then ROUTER identity (--max-client-inflight)
        self._client_calls: dict[zmq.Socket, dict[bytes, int]] = {}
        self._inflight_limit = config.max_client_inflight or 1 << 62
        # clients whose answer queue is full (they do not read): their calls get -32005 until it drains
        self._stalled: dict[zmq.Socket, set[bytes]] = {}
        self.gates: dict[zmq.Socket, limits.ClientGate] = {}
        self.open_files = limits.raise_open_files()
        self.max_clients = limits.DEFAULT_MAX_CLIENTS
        self.reloads = None  # set by serve(): the ReloadManager
        self.log_ring = None  # set by serve(): the recent log for `clusterd logs`
        self.master_code = None  # set by serve(): MasterCode, to tell when the master's own code changed
        self.notifier = None
        self.shared = None
        self._faults = log.RateLimited()
        self._ps = psutil.Process()
        self._ps.cpu_percent(None)
        self._internal: dict[str, Callable] = {
            "clusterd.workers.call": self._w_call, "clusterd.workers.call_slot": self._w_call_slot,
            "clusterd.workers.broadcast": self._w_broadcast, "clusterd.workers.call_shared": self._w_call_shared,
            "clusterd.shared_block": self._w_shared_block,
        }

    # ------------------------------------------------------------------ sockets
    def open_sockets(self) -> None:
        cfg = self.config
        self.max_clients = limits.max_clients(cfg.max_clients, self.open_files, 1 + len(cfg.binds), cfg.workers)
        self.control = self._router_socket(client=True)
        self._bind_ipc(self.control, "control.sock")
        self.public = None
        if cfg.binds:
            self.public = self._router_socket(client=True)
            for addr in cfg.binds:
                self.public.bind(addr)
        self._client_calls = {sock: {} for sock in (self.control, self.public) if sock is not None}
        self._stalled = {sock: set() for sock in self._client_calls}
        self.wsock = self._router_socket(client=False)
        self.wsock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._bind_ipc(self.wsock, "workers.sock")
        if cfg.isolation == "thread":
            from .threads import THREAD_ENDPOINT
            self.wsock.bind(THREAD_ENDPOINT)  # thread workers share self.ctx, as inproc requires
        self._dir_timer = self.loop.call_later(cfg.heartbeat_interval, self._watch_runtime_dir)
        self.rsock = None
        if cfg.worker_binds:
            # workers from agents on other hosts: a socket of its own, CURVE-encrypted with --curve-dir
            from .remote import AgentRegistry, open_remote_socket
            self.rsock = open_remote_socket(self, cfg)
            self.agents = AgentRegistry(self)
            self.readers[self.rsock] = SocketReader(
                self.loop, self.rsock, lambda frames: self._on_worker_message(frames, self.rsock))
        self.readers[self.control] = SocketReader(self.loop, self.control, self._control_handler())
        if self.public is not None:
            self.readers[self.public] = SocketReader(self.loop, self.public, self._public_handler())
        self.wreader = self.readers[self.wsock] = SocketReader(
            self.loop, self.wsock, lambda frames: self._on_worker_message(frames, self.wsock))
        self.guard = limits.MessageGuard(self.loop, list(self.gates.values()),
                                         limits.UNFINISHED_FRAMES * (cfg.max_message_size or 16 * 2 ** 20))

    def _bind_ipc(self, sock: zmq.Socket, name: str) -> None:
        """Bind sock to <instance dir>/name, 0600, and remember that file as ours."""
        path = self.dir.path / name
        sock.bind(f"ipc://{path}")
        os.chmod(path, 0o600)
        self.dir.own(name)
        if name == "workers.sock" and self.worker_identity is not None:
            from .privileges import open_worker_link
            open_worker_link(self.dir.path, self.worker_identity)

    # ------------------------------------------------------------------ the runtime directory
    def _watch_runtime_dir(self) -> None:
        self._dir_timer = self.loop.call_later(self.config.heartbeat_interval, self._watch_runtime_dir)
        try:
            self.keep_runtime_dir()
        except Exception:  # a check must never stop the periodic task
            log.logger.exception("checking the runtime directory failed")

    def keep_runtime_dir(self) -> None:
        """Put back what vanished of our runtime directory (a tmp cleaner, an rm -r): SECURITY.md.

        Deleted files are made again and the sockets bound again at their paths. If another instance
        took the name meanwhile, its files are left alone: our workers get a private socket, so that
        new ones join us and not it, and we keep serving our binds until told to stop by a signal.
        """
        if self._dir_taken_by is not None:
            return
        lost = self.dir.lost()
        if not lost:
            return
        name = self.config.name
        if "" in lost or "lock" in lost:
            try:
                self.dir.claim(name)
            except InstanceBusy as exc:
                self._dir_taken_by = exc.pid or 0
                self._move_worker_socket()
                log.event("runtime-dir-taken", f"{name}: runtime directory {self.dir.path} was deleted and is now "
                          f"held by another instance (pid {exc.pid}); this master (pid {os.getpid()}) keeps "
                          f"serving its binds, its workers now use {self.worker_endpoint}; `clusterd "
                          f"stop/status --name {name}` reach the other instance: stop this one with "
                          f"`kill -TERM {os.getpid()}`", level=logging.WARNING)
                return
            except (RuntimeDirError, OSError) as exc:
                problem = f"{name}: runtime directory {self.dir.path} vanished and cannot be made again: {exc}"
                if problem != self._dir_problem:
                    log.event("runtime-dir-lost", problem, level=logging.WARNING)
                self._dir_problem = problem
                return
            self._dir_problem = None
            lost = ["control.sock", "workers.sock"]
            log.event("runtime-dir-recreated", f"{name}: runtime directory {self.dir.path} was deleted: made "
                      "again, with master.pid and both sockets", level=logging.WARNING)
        for item in lost:
            if item == "master.pid":
                self.dir.write_pid()
            elif item == "control.sock":
                self._bind_ipc(self.control, item)
            elif item == "workers.sock" and self._private_dir is None:
                self._bind_ipc(self.wsock, item)

    def _move_worker_socket(self) -> None:
        """Bind the workers socket in a private directory of ours, beside the one we lost."""
        self._private_dir = Path(tempfile.mkdtemp(prefix=f".{self.config.name}-{self.token}-",
                                                  dir=self.dir.path.parent))
        path = self._private_dir / "workers.sock"
        self.wsock.bind(f"ipc://{path}")
        os.chmod(path, 0o600)
        self.worker_endpoint = f"ipc://{path}"

    def _router_socket(self, client: bool) -> zmq.Socket:
        sock = self.ctx.socket(zmq.ROUTER)
        self._sockets.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        if client:
            # what one client can make the master hold is bounded by these (SECURITY.md, "Bytes per
            # client"): a send past the high-water mark fails with EAGAIN (ROUTER_MANDATORY) instead of
            # queueing, and the client's calls get -32005 while its queue is full
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
        gate = limits.ClientGate(sock, self.max_clients, self._endpoint_label)
        self.gates[sock] = gate
        self._sockets.append(gate.monitor)
        self.readers[gate.monitor] = SocketReader(self.loop, gate.monitor, gate.on_events)

    def _endpoint_label(self, endpoint: str) -> str:
        return "control.sock" if endpoint.endswith("/control.sock") else endpoint

    def _control_handler(self) -> Callable[[list[bytes]], None]:
        return self._client_handler(self.control, True)

    def _public_handler(self) -> Callable[[list[bytes]], None]:
        return self._client_handler(self.public, False)

    def _client_handler(self, sock: zmq.Socket, admin: bool) -> Callable[[list[bytes]], None]:
        gate = self.gates[sock]
        on_message = self.on_client_message
        overhead = limits.FRAME_OVERHEAD

        def handle(frames: list[bytes]) -> None:
            # bytes of whole messages received, for the guard against messages that never end
            gate.delivered += len(frames[-1]) + overhead * len(frames) + (
                sum(map(len, frames[1:-1])) if len(frames) > 2 else 0)
            on_message(frames, sock, admin)
        return handle

    def close_sockets(self) -> None:
        if self._dir_timer is not None:
            self._dir_timer.cancel()
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
        if getattr(self, "guard", None) is not None:
            self.guard.close()
        for reader in self.readers.values():
            reader.close()
        for sock in self._sockets:  # every socket made, even when a later bind failed
            sock.close(linger=200)
        if getattr(self, "authenticator", None) is not None:
            self.authenticator.stop()
        threads_alive = getattr(self.supervisor.spawner, "alive", None)
        if threads_alive is not None and threads_alive():
            return  # an abandoned (hung) thread worker still holds sockets: term() would wait for ever
        self.ctx.term()

    def child_environ(self) -> dict:
        env = systemd.child_environ(os.environ)
        return self.worker_identity.environ(env) if self.worker_identity is not None else env

    # ------------------------------------------------------------------ client requests
    def on_client_message(self, frames: list[bytes], sock: zmq.Socket, admin: bool) -> None:
        payload = frames[-1]
        envelope = frames[:-1]
        try:
            try:
                obj = protocol.fast_loads(payload)
            except ValueError:
                obj = protocol.loads(payload)  # numbers past a double's range: only the exact parse reads them
            else:
                if type(obj) is not dict or type(obj.get("id")) is float or obj.get("method") in self._local:
                    obj = protocol.loads(payload)  # a batch, a big-integer id, or params the master itself reads
        except ValueError as exc:
            return self._send(sock, envelope, protocol.dumps(protocol.parse_error(exc)))
        try:
            if type(obj) is dict:
                req = protocol.parse_request(obj)
                if type(req) is dict:
                    return self._send(sock, envelope, protocol.dumps(req))
                self.route(req, payload, sock, envelope, "admin" if admin else "client")
            elif type(obj) is list:
                self._batch(obj, sock, envelope, "admin" if admin else "client")
            else:
                self._send(sock, envelope, protocol.encode_error(None, protocol.INVALID_REQUEST))
        except Exception:  # a fault of ours: the client still gets an answer, the socket is still read
            self._faults.exception("handling a client's message failed")
            self._send(sock, envelope, protocol.encode_error(None, protocol.INTERNAL_ERROR))

    def route(self, req: protocol.Request, payload: bytes, sock: zmq.Socket, envelope: list[bytes],
              source: str) -> None:
        """Send one request where it belongs: the master itself, an admin method, or a worker."""
        method = req.method
        if method in self._local:
            self._spawn_task(self._answer_local(req, sock, envelope, source))
            return
        if source == "worker":  # a worker's self.master.call is never forwarded back to a worker (DESIGN.md 2)
            if req.id is not NO_ID:
                self._send(sock, envelope, protocol.dumps(_master_lacks(req)))
            return
        meta = self.worker_methods.get(method)
        if meta is None:
            if req.id is not NO_ID:
                self._send(sock, envelope, protocol.dumps(protocol.method_not_found(req.id, method)))
            return
        if self.state == "stopping":
            if req.id is not NO_ID:
                self._send(sock, envelope, protocol.encode_error(req.id, protocol.SHUTTING_DOWN))
            return
        if req.id is NO_ID:
            worker = self.supervisor.balancer.pick()
            if worker is not None:
                self._to_worker([worker.ident, b"n", payload], worker.sock)
            return
        counts = self._client_calls.get(sock)
        if counts is not None:  # a client's call (not a worker's): bounded per client
            held = counts.get(envelope[0], 0)
            if held >= self._inflight_limit:
                self._send(sock, envelope, protocol.encode_error(req.id, protocol.TOO_BUSY, self._busy_message()))
                return
            stalled = self._stalled[sock]
            if stalled and envelope[0] in stalled:
                # its answers are not taken: this call is refused; once that refusal finds room in the
                # client's queue (it reads again) the next call runs, else _send marks it again
                stalled.discard(envelope[0])
                self._send(sock, envelope, protocol.encode_error(req.id, protocol.TOO_BUSY, self.STALLED))
                return
            counts[envelope[0]] = held + 1
        call = Call(payload, req.id, sock, envelope, None)
        call.idempotent = meta.get("idempotent", False)
        call.timeout = meta.get("timeout") or self.config.call_timeout
        self.dispatch(call)

    def _busy_message(self) -> str:
        return f"Too many calls in flight from this client (at most {self.config.max_client_inflight})"

    @staticmethod
    def _release(counts: dict[bytes, int], ident: bytes, n: int = 1) -> None:
        """Calls of a client were answered (or dropped): they no longer count against its limit."""
        left = counts.get(ident, 0) - n
        if left > 0:
            counts[ident] = left
        else:
            counts.pop(ident, None)

    def dispatch(self, call: Call, exclude: Worker | None = None) -> None:
        worker = self.supervisor.balancer.pick(exclude)
        if worker is None:
            self._enqueue(call)
        else:
            self.send_call(worker, call)

    def send_call(self, worker: Worker, call: Call) -> None:
        self._token += 1
        token = self._token.to_bytes(8, "little")
        call.token = token
        call.worker = worker
        worker.calls[token] = call
        if call.timeout:
            call.deadline = self.loop.time() + call.timeout
            if self._sweep_handle is None:
                self._sweep_handle = self.loop.call_later(min(0.1, call.timeout), self._sweep_deadlines)
        try:
            send_frames(worker.sock, [worker.ident, b"c" + token + call.payload])
        except zmq.ZMQError:
            # its connection is already gone (ROUTER_MANDATORY): the worker never got the call
            del worker.calls[token]
            self.supervisor.balancer.remove(worker)
            self.dispatch(call, exclude=worker)
        self.readers[worker.sock].wake()

    def flush_worker_messages(self) -> None:
        """Handle every message workers already sent: before judging them by what has not arrived."""
        for sock in (getattr(self, "wsock", None), getattr(self, "rsock", None)):
            reader = self.readers.get(sock) if sock is not None else None
            if reader is not None:
                reader.flush()

    def _to_worker(self, frames: list[bytes], sock: zmq.Socket | None = None) -> None:
        sock = sock or self.wsock
        try:
            send_frames(sock, frames)
        except zmq.ZMQError:
            pass  # that worker's connection is gone; its exit is handled on its own
        self.readers[sock].wake()

    def _send(self, sock: zmq.Socket, envelope: list[bytes], payload: bytes) -> None:
        try:
            send_frames(sock, envelope + [payload], NOBLOCK)
        except zmq.ZMQError as exc:
            # the client is gone (EHOSTUNREACH) or does not take its answers (EAGAIN: its queue is at the
            # high-water mark): the answer is dropped, nothing accumulates, and a client that does not
            # read gets -32005 for its calls until its queue has room again
            if exc.errno == zmq.EAGAIN:
                stalled = self._stalled.get(sock)
                if stalled is not None:
                    if len(stalled) >= self.max_clients:
                        stalled.clear()  # idents of clients long gone: kept bounded
                    stalled.add(envelope[0])
        self.readers[sock].wake()

    def reply(self, call: Call, payload: bytes) -> None:
        if call.future is None:
            self._send(call.sock, call.envelope, payload)
            counts = self._client_calls.get(call.sock)
            if counts is not None:
                self._release(counts, call.envelope[0])
        elif not call.future.done():
            call.future.set_result(payload)

    def reply_error(self, call: Call, code: int, message: str | None = None) -> None:
        self.reply(call, protocol.encode_error(call.rid, code, message))

    # ------------------------------------------------------------------ waiting for a worker
    def _enqueue(self, call: Call) -> None:
        if self.state == "stopping":
            return self.reply_error(call, protocol.SHUTTING_DOWN)
        call.deadline = self.loop.time() + self.config.queue_timeout
        self.queue.append(call)
        if self._queue_timer is None:
            self._queue_timer = self.loop.call_at(call.deadline, self._expire_queue)

    def _expire_queue(self) -> None:
        self._queue_timer = None
        if not log.survive("expiring queued calls", self._expire_queued_calls) and self.queue \
                and self._queue_timer is None:
            self._queue_timer = self.loop.call_later(0.1, self._expire_queue)

    def _expire_queued_calls(self) -> None:
        now = self.loop.time()
        while self.queue and self.queue[0].deadline <= now:
            self.reply_error(self.queue.popleft(), protocol.NO_WORKER)
        if self.queue:
            self._queue_timer = self.loop.call_at(self.queue[0].deadline, self._expire_queue)

    def _flush_queue(self) -> None:
        while self.queue:
            worker = self.supervisor.balancer.pick()
            if worker is None:
                return
            call = self.queue.popleft()
            call.deadline = 0.0
            self.send_call(worker, call)

    # ------------------------------------------------------------------ call deadlines
    def _sweep_deadlines(self) -> None:
        """Answer calls past their deadline with -32003 and recycle the workers running them."""
        self._sweep_handle = None
        if not log.survive("the call deadline sweep", self._sweep_expired) and self._sweep_handle is None:
            self._sweep_handle = self.loop.call_later(0.1, self._sweep_deadlines)

    def _sweep_expired(self) -> None:
        self.flush_worker_messages()  # an answer already sent is delivered, not timed out
        now = self.loop.time()
        pending = False
        for worker in list(self.supervisor.by_ident.values()):
            expired = [c for c in worker.calls.values() if c.deadline and c.deadline <= now]
            for call in expired:
                del worker.calls[call.token]
                self.reply_error(call, protocol.CALL_TIMEOUT,
                                 f"Call timed out after {call.timeout:g}s")
            if expired:
                log.event("call-timeout", f"{worker.label()} ran past a call's deadline: recycling",
                          level=logging.WARNING, slot=worker.slot, pid=worker.pid)
                self._recycle_runaway(worker)
            if any(c.deadline for c in worker.calls.values()):
                pending = True
        if pending:
            self._sweep_handle = self.loop.call_later(0.05, self._sweep_deadlines)

    def _recycle_runaway(self, worker: Worker) -> None:
        """A worker that ran away is replaced; it is killed once nothing else it runs can finish."""
        self.supervisor.balancer.remove(worker)
        slot = self.supervisor.slots.get(worker.slot)
        if slot is not None and slot.active is worker and slot.incoming is None:
            self.supervisor.recycle(worker, "hung")
        worker.retire_reason = worker.retire_reason or "hung"
        if worker.state is WorkerState.READY:
            worker.state = WorkerState.DRAINING
        worker.stop_deadline = time.monotonic() + min(self.config.graceful_timeout, 5.0)
        if not worker.calls:
            self.supervisor.kill(worker, "hung")

    # ------------------------------------------------------------------ worker socket
    def _on_worker_message(self, frames: list[bytes], sock: zmq.Socket) -> None:
        ident = frames[0]
        head = frames[1] if len(frames) > 1 else b""
        kind = head[:1]
        if (kind == b"r" or kind == b"e") and len(frames) == 2:  # an answer: [b"r" + token + response]
            worker = self.supervisor.by_ident.get(ident)
            if worker is None:
                return
            call = worker.calls.pop(head[1:9], None)
            if call is None:
                return  # timed out or the caller is gone: dropped
            worker.served += 1
            if kind == b"e":
                worker.failed += 1
            if call.future is None:
                self._send(call.sock, call.envelope, head[9:])
                counts = self._client_calls.get(call.sock)
                if counts is not None:
                    self._release(counts, call.envelope[0])
            elif not call.future.done():
                call.future.set_result(head[9:])
            if worker.state is not WorkerState.READY:
                if not worker.calls:
                    if worker.retire_reason == "hung" and worker.state is WorkerState.DRAINING:
                        self.supervisor.kill(worker, "hung")
                    else:
                        self.supervisor.on_idle(worker)
            elif worker.max_requests and worker.served >= worker.max_requests:
                self.supervisor.recycle(worker, "max-requests")
        elif len(frames) != 3:
            return  # not a message of ours
        elif kind == b"b":
            if ident[3:] in self.supervisor.by_ident:  # a worker of a master that died gets no answer: it exits
                self._to_worker([ident, b"b"], sock)
            self.supervisor.on_beat(ident[3:], _loads_dict(frames[2]))
        elif ident not in self.supervisor.by_ident and kind != b"A":
            if kind == b"h":
                log.event("foreign-worker", f"a worker this master did not start ({ident!r}) joined its workers "
                          "socket: ignored (does another instance share this runtime directory?)",
                          level=logging.WARNING)
            return  # a worker of another master: it gets nothing from us, and exits for lack of beats
        elif kind == b"q":
            self._on_worker_request(ident, frames[2], sock)
        elif kind == b"h":
            self.supervisor.on_hello(ident, _loads_dict(frames[2]))
        elif kind == b"f":
            self.supervisor.on_boot_failure(ident, _loads_dict(frames[2]))
        elif kind == b"A" and sock is self.rsock and len(frames) > 2:
            self.agents.on_message(ident, _loads_dict(frames[2]))

    def _on_worker_request(self, ident: bytes, payload: bytes, sock: zmq.Socket) -> None:
        envelope = [ident, b"a"]
        try:
            obj = protocol.loads(payload)
        except ValueError as exc:
            return self._send(sock, envelope, protocol.dumps(protocol.parse_error(exc)))
        req = protocol.parse_request(obj)
        if type(req) is dict:
            return self._send(sock, envelope, protocol.dumps(req))
        try:
            self.route(req, payload, sock, envelope, "worker")
        except Exception:
            self._faults.exception("handling a worker's request failed")
            if req.id is not NO_ID:
                self._send(sock, envelope, protocol.encode_error(req.id, protocol.INTERNAL_ERROR))

    def send_stop(self, worker: Worker) -> None:
        self._to_worker([worker.ident, b"s"], worker.sock)

    def learn_methods(self, methods: dict) -> None:
        self.worker_methods = methods

    def on_worker_ready(self, worker: Worker) -> None:
        self._flush_queue()
        self._spawn_task(self._hook(self.endpoint.on_worker_ready, _info(worker)))
        self.update_status_line()

    def on_worker_gone(self, worker: Worker, exit_info: dict) -> None:
        """Answer every call the worker held: -32002, or a retry elsewhere for idempotent ones."""
        calls = list(worker.calls.values())
        worker.calls.clear()
        for call in calls:
            if call.idempotent and self.state != "stopping":
                call.deadline = 0.0
                self.dispatch(call, exclude=worker)
            else:
                self.reply_error(call, protocol.WORKER_DIED)
        self._spawn_task(self._hook(self.endpoint.on_worker_exit, _info(worker), exit_info))
        self.update_status_line()

    async def _hook(self, func: Callable, *args: Any) -> None:
        try:
            await func(*args)
        except Exception:
            log.logger.exception("a master hook raised")

    # ------------------------------------------------------------------ local methods
    async def _answer_local(self, req: protocol.Request, sock: zmq.Socket, envelope: list[bytes],
                            source: str) -> None:
        try:
            response = await self.run_local(req, source)
        except Exception:  # a fault of ours (user code is answered -32000 by the dispatcher)
            self._faults.exception(f"answering {req.method!r} failed")
            response = None if req.id is NO_ID else protocol.encode_error(req.id, protocol.INTERNAL_ERROR)
        if response is not None:
            self._send(sock, envelope, response)

    async def run_local(self, req: protocol.Request, source: str) -> bytes | None:
        """Run a master, admin or internal method; the encoded response, None for a notification."""
        method = req.method
        if method in self.dispatcher.methods:
            response = await self.dispatcher.run(req)
        else:
            handler = None
            if source == "admin" and method in self.ADMIN:
                handler = getattr(self, "admin_" + method.split(".", 1)[1])
            elif source == "worker":
                handler = self._internal.get(method)
                if handler is None and method == "clusterd.status":
                    handler = self.admin_status
            if handler is None:
                response = _master_lacks(req) if source == "worker" else protocol.method_not_found(
                    req.id, method)
            else:
                try:
                    params = req.params
                    result = await (handler(*params) if isinstance(params, list) else handler(**params))
                    response = protocol.result_response(req.id, result)
                except RPCError as exc:
                    response = protocol.error_response(req.id, exc.code, exc.message, exc.data)
                except TypeError as exc:
                    response = protocol.error_response(req.id, protocol.INVALID_PARAMS, data=str(exc))
                except Exception as exc:
                    log.logger.exception("internal method %s failed", method)
                    response = protocol.error_response(req.id, protocol.INTERNAL_ERROR, data=str(exc))
        if req.id is NO_ID:
            return None
        return encode_response(response, self.config.debug)

    def _batch(self, items: list, sock: zmq.Socket, envelope: list[bytes], source: str) -> None:
        """Answer a batch: one array of the answers, sent once the last call of the batch is answered.

        Items answered at once (invalid, unknown method) cost no task; worker calls wait on their future.
        """
        if not items:
            return self._send(sock, envelope, protocol.encode_error(None, protocol.INVALID_REQUEST))
        if len(items) > self.config.max_batch:
            return self._send(sock, envelope, protocol.encode_error(
                None, protocol.INVALID_REQUEST, f"Batch too large (at most {self.config.max_batch} requests)"))
        counts = self._client_calls[sock]
        ident = envelope[0]
        held = counts.get(ident, 0)
        stalled = self._stalled[sock]
        if held + len(items) > self._inflight_limit or ident in stalled:
            stalled.discard(ident)
            return self._send_batch(sock, envelope, [self._busy_item(item) for item in items])
        answers: list[bytes | None] = []
        waiting: list = []
        for item in items:
            answer = self._batch_item(item, source)
            if answer is None or type(answer) is bytes:
                answers.append(answer)
            else:
                waiting.append(answer)
        if not waiting:
            return self._send_batch(sock, envelope, answers)
        counts[ident] = held + len(items)
        self._spawn_task(self._finish_batch(answers, waiting, sock, envelope, counts, ident, len(items)))

    async def _finish_batch(self, answers: list, waiting: list, sock: zmq.Socket, envelope: list[bytes],
                            counts: dict[bytes, int], ident: bytes, n: int) -> None:
        try:
            answers += await asyncio.gather(*waiting)
        finally:
            self._release(counts, ident, n)
        self._send_batch(sock, envelope, answers)

    def _send_batch(self, sock: zmq.Socket, envelope: list[bytes], answers: list[bytes | None]) -> None:
        parts = [a for a in answers if a is not None]
        if parts:  # a batch of notifications gets no answer at all
            self._send(sock, envelope, b"[" + b",".join(parts) + b"]")

    def _busy_item(self, item: Any) -> bytes | None:
        req = protocol.parse_request(item)
        if type(req) is dict:
            return protocol.dumps(req)
        return None if req.id is NO_ID else protocol.encode_error(req.id, protocol.TOO_BUSY, self._busy_message())

    def _batch_item(self, item: Any, source: str) -> Any:
        """One item of a batch: its answer (bytes, or None for none), or an awaitable of it."""
        req = protocol.parse_request(item)
        if type(req) is dict:
            return protocol.dumps(req)
        if req.method in self._local:
            return self.run_local(req, source)
        meta = self.worker_methods.get(req.method)
        if meta is None:
            return None if req.id is NO_ID else protocol.dumps(protocol.method_not_found(req.id, req.method))
        if self.state == "stopping":
            return None if req.id is NO_ID else protocol.encode_error(req.id, protocol.SHUTTING_DOWN)
        try:
            payload = protocol.dumps(item if req.id is not NO_ID else {**item, "id": None})
        except TypeError:  # nested too deeply to encode again
            return None if req.id is NO_ID else protocol.encode_error(
                req.id, protocol.INVALID_REQUEST, "Request nested too deeply")
        fut = self.loop.create_future()
        call = Call(payload, req.id, None, None, fut)
        call.idempotent = meta.get("idempotent", False)
        call.timeout = meta.get("timeout") or self.config.call_timeout
        if req.id is NO_ID:
            call.rid = None  # the worker answers it as a call; the answer is not passed on
            self.dispatch(call)
            return None
        self.dispatch(call)
        return fut

    async def call_worker(self, method: str, params: list | dict, worker: Worker | None = None) -> Any:
        """A call from the master (or on behalf of a worker) to a worker; its result, or RemoteError."""
        if self.state == "stopping" and worker is None:
            raise RPCError(protocol.SHUTTING_DOWN)
        fut = self.loop.create_future()
        call = Call(protocol.dumps(protocol.make_request(method, params, 0)), 0, None, None, fut)
        meta = self.worker_methods.get(method) or {}
        call.idempotent = meta.get("idempotent", False) and worker is None
        call.timeout = meta.get("timeout") or self.config.call_timeout
        if worker is None:
            self.dispatch(call)
        else:
            self.send_call(worker, call)
        return protocol.response_outcome(protocol.loads(await fut))

    # ------------------------------------------------------------------ internal methods for workers
    async def _w_call(self, method: str, params: list | dict = ()) -> Any:
        return await self.call_worker(method, params or [])

    async def _w_call_slot(self, slot: int, method: str, params: list | dict = ()) -> Any:
        return await self.endpoint.workers.call_slot(slot, method, *(params or []))

    async def _w_call_shared(self, method: str, params: list = ()) -> Any:
        return await self.endpoint.workers.call_shared(method, *(params or []))

    async def _w_broadcast(self, method: str, params: list = ()) -> dict:
        results = await self.endpoint.workers.broadcast(method, *(params or []))
        return {slot: ({"error": r.to_dict()} if isinstance(r, RPCError) else {"result": r})
                for slot, r in results.items()}

    async def _w_shared_block(self, name: str, size: int) -> dict:
        if self.shared is None:
            raise RPCError(protocol.INTERNAL_ERROR, "shared memory is not available")
        return self.shared.describe(name, size)

    # ------------------------------------------------------------------ admin methods (control.sock)
    async def admin_status(self) -> dict:
        return self.status_document()

    async def admin_scale(self, workers: int | str | None = None, delta: int | None = None) -> dict:
        if delta is not None:
            target = self.supervisor.wanted + int(delta)
        else:
            from .config import ConfigError, parse_workers
            try:
                target = parse_workers(workers if workers is not None else self.supervisor.wanted)
            except ConfigError as exc:
                raise RPCError(protocol.INVALID_PARAMS, str(exc)) from None
        if target < 0:
            raise RPCError(protocol.INVALID_PARAMS, "the number of workers cannot be negative")
        if self.state == "stopping":
            raise RPCError(protocol.SHUTTING_DOWN)
        old = self.supervisor.wanted
        self.supervisor.scale(target)
        self.update_status_line()
        return {"from": old, "to": target}

    async def admin_stop(self, timeout: float | None = None) -> dict:
        if timeout is not None:
            self.config.graceful_timeout = float(timeout)
        self.loop.call_soon(self.request_stop, True)
        return {"stopping": True, "pid": os.getpid()}

    async def admin_reload(self, wait: bool = True) -> dict:
        if self.state == "stopping":
            raise RPCError(protocol.SHUTTING_DOWN)
        return await self.reloads.request(wait=wait)

    async def admin_reload_wait(self, id: int, after: int = 0) -> dict:
        return await self.reloads.progress(id, after)

    async def admin_logs(self, after: int = 0, slot: int | None = None, lines: int | None = 100,
                         wait: float = 0.0) -> dict:
        """The recent log (`clusterd logs`): entries after `after`; with wait, the next ones as they come."""
        ring = self.log_ring
        if ring is None:
            return {"entries": [], "next": after}
        if not isinstance(after, int) or (slot is not None and not isinstance(slot, int)) \
                or (lines is not None and not isinstance(lines, int)) or not isinstance(wait, (int, float)):
            raise RPCError(protocol.INVALID_PARAMS, "after, slot and lines are integers, wait is seconds")
        entries = ring.read(after, slot, lines)
        if not entries and wait > 0 and self.state != "stopping":
            await ring.wait(max(after, ring.seq if slot is not None else after), min(float(wait), 60.0))
            entries = ring.read(after, slot, lines)
        return {"entries": entries, "next": max([after, *(e["seq"] for e in entries)]) if slot is None
                else max(after, ring.seq)}

    # ------------------------------------------------------------------ lifecycle
    def request_stop(self, graceful: bool = True) -> None:
        """Stop; a fast stop asked for during a graceful one cuts it short (a second Ctrl-C, SIGQUIT)."""
        if not self.stopped.is_set():
            self._graceful = graceful
            self.stopped.set()
        elif not graceful:
            self.hurried.set()

    def status_document(self) -> dict:
        now = time.time()
        try:
            rss = self._ps.memory_info().rss
            cpu = self._ps.cpu_percent(None)
        except psutil.Error:
            rss, cpu = None, None
        doc = {
            "name": self.config.name, "state": self.state,
            "master": {"pid": os.getpid(), "started_at": self.started_at, "uptime_s": round(now - self.started_at, 3),
                       "version": self.version, "rss_bytes": rss, "cpu_percent": cpu, "host": os.uname().nodename,
                       "master_stale": bool(self.master_code is not None and self.master_code.stale)},
            "workers": self.supervisor.workers_document(),
            "config": self.config.document(),
            "generation": self.supervisor.generation,
            **{f"workers_{k}": v for k, v in self.supervisor.counts().items()},  # workers_ready, workers_wanted
            "queued": len(self.queue),
            "client_inflight": sum(sum(c.values()) for c in self._client_calls.values()),
            "clients": {"control": self.gates[self.control].document() if self.control in self.gates else None,
                        "bind": self.gates[self.public].document() if self.public in self.gates else None,
                        "unfinished_closed": self.guard.dropped},
        }
        if self.reloads is not None:
            doc["reload"] = self.reloads.summary()
        if getattr(self, "rsock", None) is not None:
            doc["agents"] = self.agents.document()
        if self.config.isolation == "thread":
            doc["threads"] = self.supervisor.spawner.document()
        return doc

    def update_status_line(self) -> None:
        if self.notifier is not None:
            ready, wanted = self.supervisor.slot_summary()
            self.notifier.status(f"{self.state}: {ready}/{wanted} workers ready, generation "
                                 f"{self.supervisor.generation}")

    def _spawn_task(self, coro) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def fail_pending(self) -> None:
        while self.queue:
            self.reply_error(self.queue.popleft(), protocol.SHUTTING_DOWN)


class _LocalMethods:
    """Names the master answers itself (its own methods, admin and internal ones), not a worker.

    Their params are decoded exactly: only forwarded calls are routed on orjson's fast decoding."""

    def __init__(self, methods: dict) -> None:
        self.methods = methods

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self.methods or name.startswith("clusterd."))


def _master_lacks(req: protocol.Request) -> dict:
    return protocol.error_response(req.id, protocol.METHOD_NOT_FOUND,
                                   f"Method not found: the master has no method {req.method!r}")


def _loads_dict(payload: bytes) -> dict:
    try:
        obj = protocol.loads(payload)
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}


def _info(worker: Worker) -> WorkerInfo:
    return WorkerInfo(worker.slot, worker.pid, worker.generation, worker.host, worker.agent)


__all__ = ["MasterEndpoint", "WorkersProxy", "WorkerInfo", "Router", "RuntimeDir", "InstanceBusy", "RemoteError"]
