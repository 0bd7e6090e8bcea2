"""Finding running instances and calling their control socket (what the CLI's commands use)."""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from . import protocol
from .runtime_dir import RuntimeDirError, check_instance_path, check_safe, read_pid
from .settings import runtime_root


class NoInstance(Exception):
    """No running instance matches: a one-line message for the user."""


class AmbiguousInstance(NoInstance):
    """Several instances run and none was named: the caller must choose (a usage error, not "not running")."""


@dataclass(frozen=True)
class Instance:
    name: str
    path: Path
    pid: int | None

    @property
    def control_address(self) -> str:
        return f"ipc://{self.path / 'control.sock'}"


def _alive(path: Path) -> bool:
    """A live master holds an exclusive lock on its instance's lock file."""
    try:
        fd = os.open(path / "lock", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def list_instances(root: Path | None = None, unsafe: list[str] | None = None) -> list[Instance]:
    """The running instances; raises RuntimeDirError when the root is not safe to trust.

    An instance directory that is not safe is never talked to: it is left out, and what is wrong
    with it added to `unsafe` (one line each) when given."""
    root = root or runtime_root()
    check_safe(root, root_may_own=True)
    try:
        entries = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return []
    found = []
    for path in entries:
        try:
            check_safe(path, root_may_own=False)
        except RuntimeDirError as exc:
            if unsafe is not None:
                unsafe.append(str(exc))
            continue
        if _alive(path):
            found.append(Instance(path.name, path, read_pid(path)))
    return found


def find_instance(name: str | None = None, choose: str = "--name") -> Instance:
    """The instance called name; without a name, the only one running. `choose` says how a caller
    names one (`--name` on the command line, `Client(name=...)` in Python).

    Raises NoInstance (AmbiguousInstance when several run), or RuntimeDirError when the directory is
    not safe to connect into."""
    root = runtime_root()
    if name:
        path = check_instance_path(root, name)
        if not _alive(path):
            raise NoInstance(f"no instance named {name!r} is running (looked in {root})")
        return Instance(name, path, read_pid(path))
    running = list_instances(root)
    if not running:
        raise NoInstance(f"no clusterd instance is running (looked in {root})")
    if len(running) > 1:
        names = ", ".join(i.name for i in running)
        raise AmbiguousInstance(f"several instances are running ({names}): choose one with {choose}")
    check_safe(running[0].path, root_may_own=False)
    return running[0]


class ControlClient:
    """A blocking JSON-RPC caller over one DEALER socket (control.sock or a --bind address)."""

    def __init__(self, address: str, timeout: float | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(address)
        self._next = 0

    def call(self, method: str, params: list | dict | None = None, timeout: float | None = None) -> Any:
        """Call and return the result; raises RemoteError, or TimeoutError past the timeout."""
        self._next += 1
        rid = self._next
        self._sock.send(protocol.dumps(protocol.make_request(method, params or [], rid)))
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else _now() + timeout
        while True:
            wait = None if deadline is None else max(0.0, deadline - _now())
            if not self._sock.poll(None if wait is None else int(wait * 1000)):
                raise TimeoutError(f"no answer to {method} from {self.address} within {timeout:g}s")
            reply = protocol.loads(self._sock.recv())
            if isinstance(reply, dict) and reply.get("id") == rid:
                return protocol.response_outcome(reply)

    def notify(self, method: str, params: list | dict | None = None) -> None:
        self._sock.send(protocol.dumps(protocol.make_request(method, params or [])))

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _now() -> float:
    import time
    return time.monotonic()
