"""Fixtures that run clusterd the way a user does: `clusterd run` in a subprocess, in a temporary
runtime dir, observed through its sockets and `clusterd status --json`. Every process group started
here is killed at the end of its test, whatever happened."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import zmq

from clusterd import protocol

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02,
             message: str = "condition") -> Any:
    """Poll predicate until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:  # the instance may still be starting
            last_exc = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last error: {last_exc!r})")


def call_in_thread(client: "Rpc", method: str, *params: Any, timeout: float = 30.0):
    """Start a call in a thread; returns (thread, box) with box["reply"] or box["error"] once it ends."""
    import threading
    box: dict = {}

    def run() -> None:
        try:
            box["reply"] = client.call(method, *params, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            box["error"] = exc
    t = threading.Thread(target=run)
    t.start()
    return t, box


def terminal_signals() -> None:
    """preexec_fn for a CLI a test stops with Ctrl-C: SIGINT and SIGQUIT as in a terminal. A test run
    started in the background by a non-interactive shell (`pytest &`, as CI scripts may) ignores them,
    and every child inherits that, so a SIGINT would never reach the CLI's KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def wait_exit(proc: subprocess.Popen, timeout: float) -> int:
    """proc.wait(timeout); past it, the failure says where the process stands (its state, signal masks
    and threads from /proc), for a process that outlives the signal meant to end it."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            status = ""
        keep = ("State", "Threads", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt", "Cpus_allowed_list")
        detail = "\n".join(line for line in status.splitlines() if line.startswith(keep))
        raise AssertionError(f"pid {proc.pid} still running {timeout:g} s later:\n{detail}") from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rpc:
    """A DEALER (or REQ) client speaking raw JSON-RPC to one address."""

    def __init__(self, address: str, kind: int = zmq.DEALER) -> None:
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(kind)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.kind = kind
        self._id = 0

    def send_raw(self, payload: bytes | list[bytes]) -> None:
        if isinstance(payload, list):
            self.sock.send_multipart(payload)
        else:
            self.sock.send(payload)

    def recv_raw(self, timeout: float = 10.0) -> bytes:
        if not self.sock.poll(int(timeout * 1000)):
            raise TimeoutError("no answer")
        return self.sock.recv()

    def request(self, obj: Any, timeout: float = 10.0) -> Any:
        self.send_raw(protocol.dumps(obj))
        return protocol.loads(self.recv_raw(timeout))

    def call(self, method: str, *params: Any, timeout: float = 10.0, **named: Any) -> Any:
        """Returns the whole response dict."""
        self._id += 1
        msg = {"jsonrpc": "2.0", "method": method, "id": self._id}
        if params or named:
            msg["params"] = named if named else list(params)
        reply = self.request(msg, timeout)
        assert reply.get("id") == self._id, reply
        return reply

    def result(self, method: str, *params: Any, timeout: float = 10.0, **named: Any) -> Any:
        reply = self.call(method, *params, timeout=timeout, **named)
        assert "error" not in reply, reply
        return reply["result"]

    def close(self) -> None:
        self.sock.close(linger=0)


class Instance:
    """One `clusterd run` subprocess in its own process group."""

    def __init__(self, runtime_dir: Path, name: str, args: list[str], cwd: Path, env: dict) -> None:
        self.runtime_dir = runtime_dir
        self.name = name
        self.args = args
        self.cwd = cwd
        self.env = env
        self.proc: subprocess.Popen | None = None
        self._clients: list[Rpc] = []
        self.stderr_path = runtime_dir / f"{name}.stderr"

    @property
    def dir(self) -> Path:
        return self.runtime_dir / self.name

    @property
    def control(self) -> str:
        return f"ipc://{self.dir / 'control.sock'}"

    def start(self, wait: bool = True, timeout: float = 20.0, python: str = sys.executable) -> "Instance":
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen([python, "-m", "clusterd", "run", *self.args, "--name", self.name],
                                     cwd=self.cwd, env=self.env, stdout=subprocess.PIPE, stderr=self._stderr,
                                     start_new_session=True)
        if wait:
            self.wait_running(timeout)
        return self

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_running(self, timeout: float = 20.0) -> dict:
        def running():
            if self.proc.poll() is not None:
                raise AssertionError(f"clusterd run exited {self.proc.returncode}:\n{self.stderr()}")
            doc = self.status()
            return doc if doc["state"] == "running" else None
        return wait_for(running, timeout, message=f"{self.name} running")

    def client(self, address: str | None = None, kind: int = zmq.DEALER) -> Rpc:
        c = Rpc(address or self.control, kind)
        self._clients.append(c)
        return c

    def status(self, timeout: float = 5.0) -> dict:
        c = Rpc(self.control)
        try:
            return c.result("clusterd.status", timeout=timeout)
        except TimeoutError:
            if self.proc is not None and self.proc.poll() is not None:  # say why, not just "no answer"
                raise AssertionError(f"clusterd run exited {self.proc.returncode}:\n{self.stderr()[-2000:]}") from None
            raise
        finally:
            c.close()

    def cli(self, *args: str, timeout: float = 60.0, input: str | None = None) -> subprocess.CompletedProcess:
        env = dict(self.env)
        return subprocess.run([sys.executable, "-m", "clusterd", *args], cwd=self.cwd, env=env, text=True,
                              capture_output=True, timeout=timeout, input=input)

    def ready_workers(self) -> list[dict]:
        return [w for w in self.status()["workers"] if w["state"] == "ready"]

    def wait_ready(self, n: int, timeout: float = 20.0) -> list[dict]:
        return wait_for(lambda: (lambda ws: ws if len(ws) == n and len(self.status()["workers"]) == n else None)(
            self.ready_workers()), timeout, message=f"{n} ready workers")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def kill(self) -> None:
        for c in self._clients:
            c.close()
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
            if self.proc.stdout:
                self.proc.stdout.close()
            self._stderr.close()


@pytest.fixture
def c(inst):
    """A raw DEALER client on control.sock of the module's shared `inst` instance."""
    client = Rpc(inst.control)
    yield client
    client.close()


@pytest.fixture
def runtime_dir(tmp_path_factory) -> Path:
    # ipc paths are limited to ~107 bytes: keep the runtime dir short
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="cd-", dir="/tmp"))
    yield d
    import shutil
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def cluster_env(runtime_dir) -> dict:
    """No CLUSTERD_* setting of the developer's environment leaks into the instances under test."""
    return instance_env(runtime_dir)


@pytest.fixture
def cluster(runtime_dir, cluster_env):
    """cluster(MASTER, WORKER, *options, name=..., cwd=..., start=True) -> a running Instance."""
    started: list[Instance] = []

    def make(master: str = "tests.apps.basic:Master", worker: str = "tests.apps.basic:Worker", *options: str,
             name: str = "t", cwd: Path = ROOT, start: bool = True, env: dict | None = None,
             wait: bool = True) -> Instance:
        inst = Instance(runtime_dir, name, [master, worker, *options], cwd, {**cluster_env, **(env or {})})
        started.append(inst)
        if start:
            inst.start(wait=wait)
        return inst

    yield make
    for inst in started:
        inst.kill()
        _kill_leftover_workers(inst)


def _kill_leftover_workers(inst: Instance) -> None:
    """Workers run in the master's session; this catches any that a broken test left behind."""
    import psutil
    for p in psutil.process_iter(["cmdline", "environ"]):
        try:
            cmd = p.info["cmdline"] or []
            if any(a.startswith((f"clusterd-worker:{inst.name}:", f"clusterd: {inst.name} ")) for a in cmd):
                env = p.environ()
                if env.get("CLUSTERD_RUNTIME_DIR") == str(inst.runtime_dir):
                    p.kill()
        except (psutil.Error, OSError):
            pass


# ---------------------------------------------------------------------------- shared instances


def instance_env(runtime_dir: Path, extra: dict | None = None) -> dict:
    """The environment `clusterd` commands get in tests: their own runtime dir, the repo importable."""
    env = dict(os.environ)
    env["CLUSTERD_RUNTIME_DIR"] = str(runtime_dir)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("COLUMNS", None)  # tables printed to a pipe are not fitted to the developer's terminal
    for key in [k for k in env if k.startswith("CLUSTERD_") and k != "CLUSTERD_RUNTIME_DIR"]:
        del env[key]
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


@contextmanager
def running_instance(*options: str, master: str = "tests.apps.basic:Master",
                     worker: str = "tests.apps.basic:Worker", name: str = "m", env: dict | None = None):
    """One instance in its own runtime dir, for module-scoped fixtures shared by read-only tests.
    Its process group (and any stray worker) is killed at the end, whatever happened."""
    import shutil
    import tempfile
    runtime = Path(tempfile.mkdtemp(prefix="cd-", dir="/tmp"))
    inst = Instance(runtime, name, [master, worker, *options], ROOT, instance_env(runtime, env))
    try:
        inst.start()
        yield inst
    finally:
        inst.kill()
        _kill_leftover_workers(inst)
        shutil.rmtree(runtime, ignore_errors=True)
