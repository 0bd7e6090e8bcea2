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
import socket
import sys
import threading
import traceback
from collections.abc import Coroutine
from typing import Any

import zmq

from .. import protocol, wire, worker_log
from ..endpoint import Dispatcher
from ..event_loop import use_fastest
from ..ops import tracing
from ..ops.method_stats import MethodStats
from ..proctitle import set_title
from ..protocol import RemoteError, RPCError
from ..wire import WorkerSpec
from . import heartbeat
from .link import WorkerLink
from .user_frames import user_traceback


class MasterProxy:
    """The worker's handle on its master: `await self.master.call("config")`."""

    def __init__(self, link: WorkerLink) -> None:
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
    use_fastest()
    try:
        code = asyncio.run(_run(spec))
    except KeyboardInterrupt:
        code = 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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
    if spec.link_fd is not None:  # a local worker process: the link the master made for it (streamlink.py)
        return await _serve(loop, spec, socket.socket(fileno=spec.link_fd), configure, embedded, stats, seen)
    sock = context.socket(zmq.DEALER)
    try:
        return await _serve(loop, spec, sock, configure, embedded, stats, seen)
    finally:
        sock.close(linger=1000)  # idempotent; a cancelled (killed) thread worker must still close it


async def _serve(loop: asyncio.AbstractEventLoop, spec: WorkerSpec, sock: zmq.Socket | socket.socket,
                 configure: Any, embedded: Any, stats: MethodStats | None = None,
                 seen: heartbeat.MasterSeen | None = None) -> int:
    if isinstance(sock, zmq.Socket):
        sock.setsockopt(zmq.ROUTING_ID, spec.ident.encode())
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
        text = user_traceback(exc)
        failure = {"error": f"{type(exc).__name__}: {exc}", "traceback": text}
        if embedded is not None:
            embedded.failure = failure  # the master logs the traceback once, from the message below
        else:
            worker_log.write_record({"boot_failure": failure})  # read before the master sees this exit
        link.send_message([wire.FAILURE, protocol.dumps(failure)])
        link.close()
        return 1

    methods = {name: m.describe() for name, m in link.dispatcher.methods.items()}
    link.send_message([wire.HELLO, protocol.dumps({"pid": os.getpid(), "slot": spec.slot,
                                                  "generation": spec.generation, "methods": methods})])
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
    link.close()
    return 0


__all__ = ["WorkerEndpoint", "RPCError"]
