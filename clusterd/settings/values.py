"""Parsing of option values: sizes, counts, durations, worker counts, addresses; and the paths and
intervals derived from them. Each parser takes a string (a flag, a variable) or a TOML value and
returns the value or raises ConfigError; TOML values are typed, so a parser also refuses what a
string could not say (true for a number, 1.5 for a count)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A bad option value or configuration file: one line for the user, exit status 2."""


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}


def single_value(value: Any) -> Any:
    """The value itself; ConfigError for a TOML table or list where one value belongs."""
    if isinstance(value, (dict, list, tuple)):
        raise ConfigError(f"expected a single value, got {value!r}")
    return value


def parse_size(text: str | int) -> int:
    """`512M`, `2G`, `1.5GiB`, `1048576` -> bytes (binary units, as ps and top show memory)."""
    if isinstance(single_value(text), bool):
        raise ConfigError(f"expected a size, not {str(text).lower()}")
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise ConfigError(f"not a size: {text!r} (use e.g. 512M or 2G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_count(value: Any) -> int:
    """A whole number, not negative."""
    if isinstance(single_value(value), bool) or isinstance(value, float):
        raise ConfigError(f"expected a whole number, got {value!r}")
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{value!r} is not a whole number") from None
    if n < 0:
        raise ConfigError("must not be negative")
    return n


def parse_seconds(value: Any) -> float:
    """A duration in seconds, not negative."""
    if isinstance(single_value(value), bool):
        raise ConfigError(f"expected a number of seconds, not {str(value).lower()}")
    try:
        s = float(str(value).strip()) if not isinstance(value, (int, float)) else float(value)
    except ValueError:
        raise ConfigError(f"{value!r} is not a number of seconds") from None
    if s < 0 or s != s:
        raise ConfigError("must not be negative")
    return s


def cpu_count() -> int:
    """What `--workers auto` means: the CPUs this process may run on, capped by a CFS quota (DESIGN.md 14)."""
    return int(auto_workers())


class AutoWorkers(int):
    """`--workers auto` resolved: the number, still saying where it came from (`budget`, for status)."""

    budget: dict


def auto_workers() -> AutoWorkers:
    """The one place `auto` is resolved: ops.cgroup.cpu_budget(), whose document() the status shows."""
    from ..ops.cgroup import cpu_budget  # a leaf module
    budget = cpu_budget()
    n = AutoWorkers(budget.cpus)
    n.budget = budget.document()
    return n


def parse_workers(value: str | int) -> int:
    """`auto` (one per usable CPU) or a number of workers."""
    if isinstance(single_value(value), bool) or isinstance(value, float):
        raise ConfigError(f"--workers must be 'auto' or a whole number, not {value!r}")
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


_SCHEMES = ("tcp", "ipc", "inproc", "ws", "wss", "pgm", "epgm", "udp", "vmci", "tipc")
_TCP = re.compile(r"^(\*|\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\*|\d{1,5})$")


def check_address(addr: str) -> str:
    """A ZeroMQ endpoint to bind (`tcp://HOST:PORT`, `ipc:///path`, ...); ConfigError when it cannot be one.

    Checked before anything starts, so that a typo is a usage error and not a failure at bind time.
    """
    if not isinstance(single_value(addr), str):
        raise ConfigError(f"not a ZeroMQ address: {addr!r} (use e.g. tcp://127.0.0.1:7000 or ipc:///path)")
    scheme, sep, rest = str(addr).partition("://")
    if not sep or scheme not in _SCHEMES or not rest:
        raise ConfigError(f"not a ZeroMQ address: {addr!r} (use e.g. tcp://127.0.0.1:7000 or ipc:///path)")
    if scheme == "tcp":
        m = _TCP.match(rest)
        if not m or (m.group(2) != "*" and not 0 < int(m.group(2)) < 65536):
            raise ConfigError(f"not a tcp address: {addr!r} (use tcp://HOST:PORT, e.g. tcp://127.0.0.1:7000)")
    return str(addr)


def check_host_port(value: Any) -> str:
    """HOST:PORT (or [IPv6]:PORT) to listen on over HTTP (--metrics-bind); ConfigError otherwise."""
    if not isinstance(single_value(value), str):
        raise ConfigError(f"expected HOST:PORT, e.g. 127.0.0.1:9187, not {value!r}")
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"expected HOST:PORT, e.g. 127.0.0.1:9187, not {value!r}")
    return value


def is_loopback_host(host_port: str) -> bool:
    """Whether HOST:PORT can only be reached from this host (127.x, ::1, localhost; an empty host
    means 127.0.0.1)."""
    host = host_port.rsplit(":", 1)[0].strip("[]")
    return host in ("", "localhost", "::1") or host.startswith("127.")


def is_loopback(addr: str) -> bool:
    """Whether an address can only be reached from this host (ipc://, 127.x, ::1, localhost)."""
    if not addr.startswith("tcp://"):
        return True
    host = addr[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def check_http_bind(value: Any) -> str:
    """An --http-bind: HOST:PORT, [IPV6]:PORT, :PORT or unix:/path (httpdoor.listeners.parse_bind)."""
    from ..httpdoor.listeners import BindError, parse_bind  # httpdoor imports nothing of clusterd
    if not isinstance(single_value(value), str):
        raise ConfigError(f"expected HOST:PORT or unix:/path, got {value!r}")
    try:
        parse_bind(value)
    except BindError as exc:
        raise ConfigError(str(exc)) from None
    return str(value)


def parse_text(value: Any) -> str:
    if isinstance(single_value(value), bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"expected a string, got {value!r}")
    return str(value)


def parse_env(value: Any) -> str:
    """--env KEY=VALUE: KEY made of letters, digits and _ (not first a digit), VALUE anything."""
    text = parse_text(value)
    key, sep, _value = text.partition("=")
    if not sep or not key or "\0" in text or not key.replace("_", "a").isalnum() or key[0].isdigit():
        raise ConfigError(f"{text!r} is not KEY=VALUE (KEY made of letters, digits and _)")
    return text


def parse_bool(value: Any) -> bool:
    """A switch in a file: true or false (on the command line it is a flag, in the environment 1/0)."""
    if isinstance(single_value(value), bool):
        return value
    raise ConfigError(f"expected true or false, got {value!r}")


def heartbeat_interval(heartbeat_timeout: float) -> float:
    """How often a worker (or an agent) beats: four beats per timeout, between 50 ms and 1 s."""
    return max(0.05, min(1.0, heartbeat_timeout / 4))


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
