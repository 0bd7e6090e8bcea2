"""The options of a running instance, their defaults, and parsing of sizes and counts."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A bad option value or configuration file: one line for the user, exit status 2."""


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}


def parse_size(text: str | int) -> int:
    """`512M`, `2G`, `1.5GiB`, `1048576` -> bytes (binary units, as ps and top show memory)."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise ConfigError(f"not a size: {text!r} (use e.g. 512M or 2G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


_SCHEMES = ("tcp", "ipc", "inproc", "ws", "wss", "pgm", "epgm", "udp", "vmci", "tipc")
_TCP = re.compile(r"^(\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\*|\d{1,5})$")


def check_address(addr: str) -> str:
    """A ZeroMQ endpoint to bind (`tcp://HOST:PORT`, `ipc:///path`, ...); ConfigError when it cannot be one.

    Checked before anything starts, so that a typo is a usage error and not a failure at bind time.
    """
    scheme, sep, rest = str(addr).partition("://")
    if not sep or scheme not in _SCHEMES or not rest:
        raise ConfigError(f"not a ZeroMQ address: {addr!r} (use e.g. tcp://127.0.0.1:7000 or ipc:///path)")
    if scheme == "tcp":
        m = _TCP.match(rest)
        if not m or (m.group(2) != "*" and not 0 < int(m.group(2)) < 65536):
            raise ConfigError(f"not a tcp address: {addr!r} (use tcp://HOST:PORT, e.g. tcp://127.0.0.1:7000)")
    return str(addr)


def cpu_count() -> int:
    """What `--workers auto` means: the CPUs this process may run on, capped by a CFS quota (DESIGN.md 14)."""
    return int(auto_workers())


class AutoWorkers(int):
    """`--workers auto` resolved: the number, still saying where it came from (`budget`, for status)."""

    budget: dict


def auto_workers() -> AutoWorkers:
    """The one place `auto` is resolved: ops.cgroup.cpu_budget(), whose document() status shows."""
    from .ops.cgroup import cpu_budget  # a leaf module
    budget = cpu_budget()
    n = AutoWorkers(budget.cpus)
    n.budget = budget.document()
    return n


def parse_workers(value: str | int) -> int:
    if isinstance(value, int):
        n = value
    elif str(value).strip().lower() == "auto":
        return auto_workers()
    else:
        try:
            n = int(str(value).strip())
        except ValueError:
            raise ConfigError(f"--workers must be 'auto' or a number, not {value!r}") from None
    if n < 0:
        raise ConfigError(f"--workers must not be negative, got {n}")
    return n


def runtime_root() -> Path:
    """Where instances keep their sockets: DESIGN.md 8."""
    env = os.environ.get("CLUSTERD_RUNTIME_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "clusterd"
    if os.geteuid() == 0:
        return Path("/run/clusterd")
    return Path(f"/tmp/clusterd-{os.getuid()}")


@dataclass
class Config:
    master: str
    worker: str
    name: str
    workers: int = 1
    binds: list[str] = field(default_factory=list)
    graceful_timeout: float = 30.0
    heartbeat_timeout: float = 10.0
    call_timeout: float | None = None
    queue_timeout: float = 2.0
    crash_limit: int = 20
    crash_window: float = 120.0
    max_memory: int | None = None
    max_requests: int = 0
    max_requests_jitter: int = 0
    balance: str = "least-busy"
    watch_version: str | None = None
    reload_on_change: str | None = None
    max_message_size: int = 16 * 1024 * 1024
    max_batch: int = 1000
    max_client_inflight: int = 10000
    max_clients: int = 0           # connections per client endpoint; 0: derived from the open-file limit
    log_format: str = "text"
    debug: bool = False
    worker_binds: list[str] = field(default_factory=list)
    curve_dir: str | None = None
    runtime_dir: str = ""
    isolation: str = "process"     # "thread": workers as threads of the master (threads.py)

    @property
    def instance_dir(self) -> Path:
        return Path(self.runtime_dir) / self.name

    @property
    def heartbeat_interval(self) -> float:
        return max(0.05, min(1.0, self.heartbeat_timeout / 4))

    def document(self) -> dict:
        """The `config` part of the status document."""
        d = asdict(self)
        return {
            "master": d["master"], "worker": d["worker"], "workers": int(self.workers),
            "workers_auto": getattr(self.workers, "budget", None), "binds": self.binds,
            "graceful_timeout_s": self.graceful_timeout, "heartbeat_timeout_s": self.heartbeat_timeout,
            "call_timeout_s": self.call_timeout, "queue_timeout_s": self.queue_timeout,
            "crash_limit": self.crash_limit, "crash_window_s": self.crash_window,
            "max_memory_bytes": self.max_memory, "max_requests": self.max_requests,
            "max_requests_jitter": self.max_requests_jitter, "balance": self.balance,
            "watch_version": self.watch_version, "reload_on_change": self.reload_on_change,
            "max_message_size": self.max_message_size, "max_batch": self.max_batch,
            "max_client_inflight": self.max_client_inflight, "max_clients": self.max_clients or None,
            "log_format": self.log_format,
            "debug": self.debug, "worker_binds": self.worker_binds, "curve_dir": self.curve_dir,
            "runtime_dir": self.runtime_dir, "isolation": self.isolation,
        }
