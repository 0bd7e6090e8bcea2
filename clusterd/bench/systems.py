"""Starting the systems the bench compares: the references, and throwaway ``clusterd run``s."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil
import zmq

from ..control import ControlClient
from ..protocol import RemoteError
from .plan import START_TIMEOUT_S, STOP_TIMEOUT_S, Plan
from .procs import MODULE_CODE, Procs, free_port, guarded, log_tail
from .references import REPLY_TIMEOUT_S, BenchError, client_socket, encode_call


@dataclass
class Service:
    """A running service the bench calls over ZeroMQ: a reference, or clusterd."""

    system: str
    addr: str
    master_pid: int
    worker_pids: list[int]


def start_echo_workers(procs: Procs, addr: str, workers: int, hello: bool,
                        system: str) -> list[int]:
    started = [procs.spawn_ref("echo-worker", addr, "hello" if hello else "plain",
                               what=f"{system} worker {i}") for i in range(workers)]
    for _, reader in started:
        reader.readline(START_TIMEOUT_S)
    return [proc.pid for proc, _ in started]


def start_c_proxy(procs: Procs, plan: Plan) -> Service:
    front, back = f"tcp://127.0.0.1:{free_port()}", f"ipc://{procs.tmp}/proxy-back.sock"
    proxy, reader = procs.spawn_ref("c-proxy", front, back, what="C proxy")
    reader.readline(START_TIMEOUT_S)
    workers = start_echo_workers(procs, back, plan.workers, hello=False, system="C proxy")
    return Service("c_proxy", front, proxy.pid, workers)


def start_handwritten(procs: Procs, plan: Plan) -> Service:
    front, back = f"tcp://127.0.0.1:{free_port()}", f"ipc://{procs.tmp}/handwritten-back.sock"
    master, reader = procs.spawn_ref("handwritten", front, back, str(plan.workers),
                                     what="hand-written master")
    workers = start_echo_workers(procs, back, plan.workers, hello=True, system="hand-written")
    if reader.readline(START_TIMEOUT_S) != "ready":
        raise BenchError("hand-written master: its workers did not register")
    return Service("handwritten", front, master.pid, workers)


# --------------------------------------------------------------------------------------------
# clusterd itself
APP = "clusterd.bench.app"


@dataclass
class Instance:
    """A throwaway ``clusterd run`` of the bench app."""

    name: str
    addr: str
    control: str
    proc: subprocess.Popen[bytes]
    log: Path


def start_instance(procs: Procs, ctx: zmq.Context[zmq.Socket[bytes]], workers: int,
                    suffix: str = "") -> Instance:
    name = f"bench-{os.getpid()}{suffix}"
    addr = f"tcp://127.0.0.1:{free_port()}"
    runtime = procs.tmp / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    package_parent = str(Path(__file__).resolve().parents[2])  # the directory holding clusterd/
    env = dict(os.environ, CLUSTERD_RUNTIME_DIR=str(runtime))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    argv = guarded(MODULE_CODE, signal.SIGTERM, "clusterd", "run", f"{APP}:Master", f"{APP}:Worker",
                    "--workers", str(workers), "--name", name, "--bind", addr,
                    "--graceful-timeout", str(STOP_TIMEOUT_S))
    proc, log = procs.spawn(argv, f"clusterd {name}", graceful=True, env=env)
    instance = Instance(name, addr, f"ipc://{runtime}/{name}/control.sock", proc, log)
    wait_serving(ctx, instance, workers)
    return instance


def wait_serving(ctx: zmq.Context[zmq.Socket[bytes]], instance: Instance,
                  workers: int) -> None:
    """Until an echo call succeeds and every worker is ready, within START_TIMEOUT_S."""
    deadline = time.monotonic() + START_TIMEOUT_S
    sock = client_socket(ctx, instance.addr)
    try:
        call_id = 0
        while True:
            if instance.proc.poll() is not None:
                raise BenchError(f"clusterd exited with status {instance.proc.returncode}"
                                 f"{log_tail(instance.log)}")
            if time.monotonic() > deadline:
                raise BenchError(f"clusterd did not answer within {START_TIMEOUT_S:g} s"
                                 f"{log_tail(instance.log)}")
            call_id += 1
            sock.send(encode_call(call_id))
            if sock.poll(200) and "result" in orjson.loads(sock.recv()):
                break
        while sock.poll(300):  # replies to earlier attempts, if they were queued
            sock.recv()
    finally:
        sock.close(0)
    while True:
        status = status_of(instance)
        if len(ready_workers(status)) >= workers:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"clusterd: {workers} workers not ready within "
                             f"{START_TIMEOUT_S:g} s{log_tail(instance.log)}")
        time.sleep(0.05)


def status_of(instance: Instance, conn: ControlClient | None = None) -> dict[str, Any]:
    """The instance's status document, on `conn` if given; BenchError when it does not answer."""
    try:
        if conn is not None:
            return conn.call("clusterd.status")  # type: ignore[no-any-return]
        with ControlClient(instance.control, REPLY_TIMEOUT_S) as own:
            return own.call("clusterd.status")  # type: ignore[no-any-return]
    except (RemoteError, TimeoutError) as exc:
        raise BenchError(f"clusterd.status failed: {exc}{log_tail(instance.log)}") from None


def rss_mb(pid: int) -> float:
    return round(psutil.Process(pid).memory_info().rss / 1e6, 1)


def ready_workers(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [w for w in status["workers"] if w["state"] == "ready" and w.get("pid")]


def slot_worker(status: dict[str, Any], slot: int) -> dict[str, Any] | None:
    """The ready worker of a slot, if any."""
    return next((w for w in ready_workers(status) if w["slot"] == slot), None)


def service_of(instance: Instance) -> Service:
    status = status_of(instance)
    return Service("clusterd", instance.addr, int(status["master"]["pid"]),
                    [int(w["pid"]) for w in ready_workers(status)])

