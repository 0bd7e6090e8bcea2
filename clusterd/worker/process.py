"""WorkerEndpoint, and the entry point of a worker process.

A worker is a fresh interpreter (or a fork of the zygote, or a thread with --isolation thread) with
one DEALER socket to the master's workers socket; the frames on that link are named in wire.py.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Coroutine
from typing import Any

import zmq

from .. import protocol, wire, worker_log
from ..endpoint import Dispatcher, encode_response, start_task
from ..ops import log, tracing
from ..ops.method_stats import MethodStats
from ..ops.tracing import Tracing
from ..proctitle import set_title
from ..protocol import RemoteError, RPCError
from ..wire import ANSWER, CALL, ERROR, FORWARD, FORWARDED, NOTIFY, REQUEST, RESULT, STATE, STOP, TOKEN_SIZE, WorkerSpec
from ..zmqloop import Outbox, SocketReader
from . import heartbeat

_BODY = 1 + TOKEN_SIZE  # where a call frame's request starts, after its kind and token


class MasterProxy:
    """The worker's handle on its master: `await self.master.call("config")`."""

    def __init__(self, link: "WorkerLink") -> None:
        self._link = link

    def call(self, method: str, *params: Any, **named: Any) -> Coroutine[Any, Any, Any]:
        """A coroutine (await it, or make it a task) of the master's answer: one future, one item."""
        return self._link.request(method, named if named else list(params))

    def notify(self, method: str, *params: Any, **named: Any) -> None:
        self._link.send_request(protocol.make_request(method, named if named else list(params)))

    async def shared_block(self, name: str, size: int) -> memoryview:
        """A block of shared memory owned by the master, attached here by name."""
        from ..shared import attach
        info = await self.call("clusterd.shared_block", name, size)
        return attach(info["shm_name"], info["size"])


class WorkersProxyViaMaster:
    """`self.workers` on a worker: every call goes through the master."""

    def __init__(self, master: MasterProxy) -> None:
        self._master = master

    async def call(self, method: str, *params: Any) -> Any:
        return await self._master.call("clusterd.workers.call", method, list(params))

    async def call_slot(self, slot: int, method: str, *params: Any) -> Any:
        return await self._master.call("clusterd.workers.call_slot", slot, method, list(params))

    async def call_shared(self, method: str, *params: Any) -> Any:
        return await self._master.call("clusterd.workers.call_shared", method, list(params))

    async def broadcast(self, method: str, *params: Any) -> dict[int, Any]:
        raw = await self._master.call("clusterd.workers.broadcast", method, list(params))
        out: dict[int, Any] = {}
        for slot, value in raw.items():
            if isinstance(value, dict) and "error" in value:
                out[int(slot)] = protocol.error_from(value["error"])
            else:
                out[int(slot)] = value.get("result") if isinstance(value, dict) else value
        return out


class WorkerEndpoint:
    """Subclass this; mark the methods callers may reach with @rpc."""

    slot: int
    generation: int
    pid: int
    master: MasterProxy
    workers: WorkersProxyViaMaster

    async def start_services(self) -> None:
        """Runs before the worker reports ready (open connections, load models, ...)."""

    async def stop_services(self) -> None:
        """Runs on graceful exit, bounded by --graceful-timeout."""


class WorkerLink:
    """The worker's side of its socket to the master: serves calls, sends its own requests."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: zmq.Socket, debug: bool,
                 log_calls: bool = False) -> None:
        self.loop = loop
        # the HTTP/WS door records each call it answers here: stats.record(method, door, outcome, seconds)
        self.stats = MethodStats()
        self.tracing: Tracing | None = None   # ops/tracing.py: None unless OpenTelemetry is installed and wanted
        self.slot: int | None = None
        self.sock = sock
        self.debug = debug
        self.log_calls = log_calls
        self.dispatcher: Dispatcher | None = None
        self._next_id = 0
        self._pending: dict[int, asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()
        self._forwards: dict[bytes, tuple[asyncio.Future, Any]] = {}  # token -> (answer, request id)
        self._next_forward = 0
        self.instance_ready = False  # what the master last said: /readyz (wire.STATE)
        self.state_known = asyncio.Event()  # the first STATE: the master counts this worker ready
        self.stop_within: float | None = None  # from the STOP frame: the time left before the master kills
        self.stop_requested = asyncio.Event()
        self._faults = log.RateLimited()
        self.outbox = Outbox(loop, sock)  # the items of a loop turn leave as one message
        self.reader = SocketReader(loop, sock, self._on_message, self.outbox)

    # -- requests from this worker to the master
    def send_request(self, msg: dict) -> None:
        self.outbox.add(None, REQUEST + protocol.dumps(msg))

    async def request(self, method: str, params: list | dict) -> Any:
        """One future and one item; the answer resolves the future with the result or RemoteError."""
        self._next_id += 1
        rid = self._next_id
        fut = self.loop.create_future()
        self._pending[rid] = fut
        msg = protocol.make_request(method, params, rid)
        if self.tracing is not None:
            self.tracing.inject(msg)
        self.outbox.add(None, REQUEST + protocol.dumps(msg))
        try:
            return await fut
        finally:
            self._pending.pop(rid, None)  # answered ones are gone already; this is for a cancelled call

    # -- an HTTP/WebSocket caller's request for the master (worker/http.py)
    def forward(self, payload: bytes, rid: Any) -> "asyncio.Future[bytes] | None":
        """Send the request to the master, routed as a --bind client's; a future of the answer bytes
        (None for a notification, which gets no answer)."""
        self._next_forward += 1
        token = wire.token_bytes(self._next_forward)
        self.outbox.add(None, FORWARD + token + payload)
        if rid is protocol.NO_ID:
            return None
        fut = self.loop.create_future()
        self._forwards[token] = (fut, rid)
        return fut

    def fail_forwards(self, code: int) -> None:
        """Answer every forwarded call still waiting for the master with this error."""
        forwards, self._forwards = self._forwards, {}
        for fut, rid in forwards.values():
            if not fut.done():
                fut.set_result(protocol.encode_error(rid, code))
    async def master_metrics(self, accept: str = "") -> tuple[bytes, str]:
        """The whole instance's Prometheus text and its content type, from the master (for GET /metrics
        on the HTTP door: the master holds every process's counters; the workers-only internal
        method clusterd.metrics)."""
        answer = await self.request("clusterd.metrics", [accept])
        return answer["text"].encode(), answer["content_type"]

    # -- messages from the master
    def _on_message(self, frames: list[bytes]) -> None:
        """One or more items, each a frame that names its kind in its first byte (wire.py)."""
        for item in frames:
            kind = item[:1]
            if kind == CALL:
                self._serve_safely(item[1:_BODY], item[_BODY:])  # wire.split_token, inlined: per call
            elif kind == ANSWER:
                self._on_answer(item[1:])
            elif kind == NOTIFY:
                self._serve_safely(None, item[1:])
            elif kind == FORWARDED:  # the master's answer to a call this worker's HTTP door forwarded
                entry = self._forwards.pop(item[1:_BODY], None)
                if entry is not None and not entry[0].done():
                    entry[0].set_result(item[_BODY:])
            elif kind == STATE:
                self.instance_ready = item[1:] == b"1"
                self.state_known.set()
            elif kind == STOP:
                if len(item) > 1:  # the seconds the master gives this worker to stop
                    try:
                        self.stop_within = float(item[1:])
                    except ValueError:
                        pass
                self.stop_requested.set()

    def _on_answer(self, payload: bytes) -> None:
        try:
            msg = protocol.loads(payload)
        except ValueError:
            return
        fut = self._pending.pop(msg.get("id"), None) if type(msg) is dict else None
        if fut is None or fut.done():
            return
        if msg.get("error") is None:
            fut.set_result(msg.get("result"))
        else:
            try:
                protocol.response_outcome(msg)
            except RemoteError as exc:
                fut.set_exception(exc)

    def _serve_safely(self, token: bytes | None, payload: bytes) -> None:
        try:
            self._serve(token, payload)
        except Exception:  # a fault of ours, not of user code (that is answered -32000): still answered
            self._fault(token, None)

    def _fault(self, token: bytes | None, rid: Any) -> None:
        self._faults.exception("serving a call failed")
        self._answer(token, protocol.error_response(rid, protocol.INTERNAL_ERROR))

    def _serve(self, token: bytes | None, payload: bytes) -> None:
        try:
            obj = protocol.loads(payload)
        except ValueError as exc:
            return self._answer(token, protocol.parse_error(exc))
        req = protocol.parse_request(obj)
        if isinstance(req, dict):
            return self._answer(token, req)
        if self.dispatcher is None:
            return self._answer(token, protocol.error_response(req.id, protocol.NO_WORKER))
        prepared = self.dispatcher.prepare(req)
        if isinstance(prepared, dict):
            return self._answer(token, prepared)
        func, method = prepared
        if self.tracing is not None:
            return self._serve_traced(token, func, method.is_async or method.offload, method.name, req, obj,
                                      method.offload)
        if method.is_async or method.offload:
            task = start_task(self.loop, self._serve_async(token, func, req, method.name, offload=method.offload))
            if not task.done():
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        elif self.log_calls:
            started = time.perf_counter()
            response = self.dispatcher.run_sync(func, req.params, req.id, method.name)
            worker_log.access(method.name, "error" not in response, started, time.perf_counter())
            self._answer(token, response)
        else:
            self._answer(token, self.dispatcher.run_sync(func, req.params, req.id, method.name))

    async def _serve_async(self, token: bytes | None, func, req: protocol.Request, name: str,
                           span: Any = None, offload: bool = False) -> None:
        run = self.dispatcher.run_offloaded if offload else self.dispatcher.run_async
        response = None
        try:
            started = time.perf_counter() if self.log_calls else 0.0
            response = await run(func, req.params, req.id, name)
            if self.log_calls:
                worker_log.access(name, "error" not in response, started, time.perf_counter())
            self._answer(token, response)
        except Exception:
            self._fault(token, req.id)
        finally:
            if span is not None:
                self.tracing.end(span, _error_code(response))

    def _serve_traced(self, token: bytes | None, func, is_async: bool, name: str, req: protocol.Request,
                      obj: dict, offload: bool = False) -> None:
        """_serve's end with a span around the call, its context current for the calls the method makes."""
        tracing = self.tracing
        span = tracing.start(req.method, obj, slot=self.slot)
        with tracing.use(span):
            if is_async:
                # the task copies the context, so the span stays current in it
                task = self.loop.create_task(self._serve_async(token, func, req, name, span, offload))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return
            response = self.dispatcher.run_sync(func, req.params, req.id, name)
        tracing.end(span, _error_code(response))
        self._answer(token, response)

    def _answer(self, token: bytes | None, response: dict) -> None:
        if token is None:
            return  # a notification gets no answer
        head = (ERROR if "error" in response else RESULT) + token  # wire.answer_frame, inlined: per call
        self.outbox.add(None, head + encode_response(response, self.debug))

    async def drain(self) -> None:
        """Wait for the calls this worker is running to finish."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


async def _first(*events: asyncio.Event) -> None:
    """Wait until one of the events is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
def _clusterd_version() -> str:
    from .. import __version__  # the package imports this module before it defines its version
    return __version__


def _error_code(response: dict | None) -> int | None:
    error = response.get("error") if isinstance(response, dict) else -32603
    return None if error is None else error.get("code") if isinstance(error, dict) else -32603


def import_class(path: str) -> type:
    """Import `package.module:ClassName`."""
    module_name, _, attr = path.partition(":")
    module = importlib.import_module(module_name)
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _die_with_parent() -> None:
    """Ask Linux to kill this process when its parent (the master) dies, even by SIGKILL."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# Signals sent to the whole process group or cgroup (Ctrl-C, `kill -TERM -- -PGID`, `timeout`,
# supervisord's stopasgroup, systemd's KillMode=control-group) are the master's to act on: it drains
# and stops the workers in order. A worker stops when its master says so, or dies with it.
GROUP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGTTIN, signal.SIGTTOU)


def ignore_group_signals() -> None:
    """Ignore the group's signals, then unblock those the master blocked for us while it started us."""
    for sig in GROUP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, GROUP_SIGNALS)


def main() -> None:
    """Entry point of a worker process; the master passes its spec in the environment."""
    spec = WorkerSpec.from_env(os.environ, pop=True)
    if spec.die_with_parent:
        _die_with_parent()
        if os.getppid() != spec.parent_pid:
            os._exit(3)  # the master died before we could ask to follow it
    ignore_group_signals()
    sys.path.insert(0, os.getcwd())
    worker_log.install(spec.debug)
    set_title(f"clusterd: {spec.name} worker {spec.slot} gen {spec.generation}")
    if spec.http_fds:
        _use_uvloop()
    try:
        code = asyncio.run(_run(spec))
    except KeyboardInterrupt:
        code = 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _use_uvloop() -> None:
    """The HTTP door serves faster on uvloop: used when it is installed (pip install "clusterd[fast]")."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _run(spec: WorkerSpec, embedded: Any = None) -> int:
    """Serve until told to stop; the exit status.

    `embedded` is the master's ThreadWorker handle when this worker is a thread of the master
    (--isolation thread): the master's ZeroMQ context (inproc needs it), no signal handlers, a
    heartbeat that watches this thread and never exits the process, and the start-up failure
    handed over instead of printed.
    """
    loop = asyncio.get_running_loop()
    context = zmq.Context.instance() if embedded is None else embedded.context
    if embedded is not None:
        embedded.loop = loop
        embedded.task = asyncio.current_task()
        if embedded.killed:
            return -signal.SIGKILL
    ident = spec.ident.encode()
    configure = None
    if spec.curve:
        from ..curve import client_configurer
        configure = client_configurer(spec.curve)
    seen = heartbeat.MasterSeen()
    stats = MethodStats()   # the calls this worker's HTTP/WS door answers; the heartbeat reports them
    if embedded is None:
        heartbeat.start(context, spec.endpoint, ident, spec.heartbeat_interval, spec.heartbeat_timeout, configure,
                        master_pid=spec.master_pid, stats=stats, seen=seen)
    else:
        heartbeat.start(context, spec.endpoint, ident, spec.heartbeat_interval, spec.heartbeat_timeout,
                        watch=threading.get_ident(), stop=embedded.beat_stop, stats=stats, seen=seen)
    sock = context.socket(zmq.DEALER)
    try:
        return await _serve(loop, spec, sock, configure, embedded, stats, seen)
    finally:
        sock.close(linger=1000)  # idempotent; a cancelled (killed) thread worker must still close it


async def _serve(loop: asyncio.AbstractEventLoop, spec: WorkerSpec, sock: zmq.Socket, configure: Any,
                 embedded: Any, stats: MethodStats | None = None, seen: heartbeat.MasterSeen | None = None) -> int:
    ident = spec.ident.encode()
    sock.setsockopt(zmq.ROUTING_ID, ident)
    sock.setsockopt(zmq.LINGER, 2000)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    if configure is not None:
        configure(sock)
    sock.connect(spec.endpoint)
    link = WorkerLink(loop, sock, spec.debug, spec.log_calls)
    link.stats = stats if stats is not None else MethodStats()
    seen = seen or heartbeat.MasterSeen()
    if embedded is not None:
        embedded.link = link

    try:
        cls = import_class(spec.worker)
        endpoint = cls()
        endpoint.slot = spec.slot
        endpoint.generation = spec.generation
        endpoint.pid = os.getpid()
        endpoint.master = MasterProxy(link)
        endpoint.workers = WorkersProxyViaMaster(endpoint.master)
        await endpoint.start_services()
        link.slot = spec.slot
        link.tracing = tracing.load(_clusterd_version())
        link.dispatcher = Dispatcher(endpoint, spec.debug)
        link.dispatcher.report = worker_log.CallErrors().report
        door = None
        if spec.http_fds:
            from .http import WorkerDoor
            door = WorkerDoor(spec, link, link.dispatcher, seen, embedded is not None)
            seen.figures = door.figures
    except BaseException as exc:  # any failure to start is reported to the master, then we exit
        text = "".join(traceback.format_exception(exc))
        failure = {"error": f"{type(exc).__name__}: {exc}", "traceback": text}
        if embedded is not None:
            embedded.failure = failure  # the master logs the traceback once, from the message below
        else:
            worker_log.write_record({"boot_failure": failure})  # read before the master sees this exit
        link.outbox.flush()
        sock.send_multipart([wire.FAILURE, protocol.dumps(failure)])
        link.reader.close()
        sock.close(linger=2000)
        return 1

    methods = {name: m.describe() for name, m in link.dispatcher.methods.items()}
    link.outbox.flush()
    sock.send_multipart([wire.HELLO, protocol.dumps({"pid": os.getpid(), "slot": spec.slot,
                                                    "generation": spec.generation, "methods": methods})])
    link.reader.wake()
    if door is not None:
        # accept connections once the master counts this worker ready (its first STATE frame), so that
        # what it answers on /readyz is already the instance's state; a stop may come first
        await _first(link.state_known, link.stop_requested)
        if not link.stop_requested.is_set():
            await door.serve()
    await link.stop_requested.wait()
    if door is not None:
        await door.drain()
    await link.drain()
    try:
        await endpoint.stop_services()
    except Exception:
        traceback.print_exc()
    for fut in link._pending.values():
        if not fut.done():
            fut.set_exception(RemoteError(protocol.SHUTTING_DOWN))
    link.fail_forwards(protocol.SHUTTING_DOWN)
    link.outbox.flush()  # answers still gathered for this loop turn
    link.reader.close()
    sock.close(linger=1000)
    return 0


__all__ = ["WorkerEndpoint", "RPCError"]
