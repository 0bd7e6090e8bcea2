"""Every option of clusterd, defined once: name, type, default, parsing, help, variable, TOML key.

The click options of `run`, `worker` (the agent), `systemd-unit` and the control commands, the
`-c FILE` loader, the `CLUSTERD_*` variables, the `Config` of a running instance and
docs/options.md (`python -m clusterd.settings`) are all generated from `OPTIONS`. Flags win over
the environment, which wins over the file, which wins over the default here.

This module is imported by the CLI and the master alike: it imports nothing of clusterd at module
level, and nothing heavier than the standard library.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A bad option value or configuration file: one line for the user, exit status 2."""


# ---------------------------------------------------------------------------- value parsers
# Each takes a string (flag, variable) or a TOML value and returns the option's value, or raises
# ConfigError. TOML values are typed, so a parser also refuses what a string could not say
# (true for a number, 1.5 for a count).

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}


def _scalar(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        raise ConfigError(f"expected a single value, got {value!r}")
    return value


def parse_size(text: str | int) -> int:
    """`512M`, `2G`, `1.5GiB`, `1048576` -> bytes (binary units, as ps and top show memory)."""
    if isinstance(_scalar(text), bool):
        raise ConfigError(f"expected a size, not {str(text).lower()}")
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise ConfigError(f"not a size: {text!r} (use e.g. 512M or 2G)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_count(value: Any) -> int:
    """A whole number, not negative."""
    if isinstance(_scalar(value), bool) or isinstance(value, float):
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
    if isinstance(_scalar(value), bool):
        raise ConfigError(f"expected a number of seconds, not {str(value).lower()}")
    try:
        s = float(str(value).strip()) if not isinstance(value, (int, float)) else float(value)
    except ValueError:
        raise ConfigError(f"{value!r} is not a number of seconds") from None
    if s < 0 or s != s:
        raise ConfigError("must not be negative")
    return s


def cpu_count() -> int:
    """CPUs this process may run on (its affinity), which is what `--workers auto` means."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_workers(value: str | int) -> int:
    """`auto` (one per usable CPU) or a number of workers."""
    if isinstance(_scalar(value), bool) or isinstance(value, float):
        raise ConfigError(f"--workers must be 'auto' or a whole number, not {value!r}")
    if isinstance(value, int):
        n = value
    elif str(value).strip().lower() == "auto":
        return cpu_count()
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
    if not isinstance(_scalar(addr), str):
        raise ConfigError(f"not a ZeroMQ address: {addr!r} (use e.g. tcp://127.0.0.1:7000 or ipc:///path)")
    scheme, sep, rest = str(addr).partition("://")
    if not sep or scheme not in _SCHEMES or not rest:
        raise ConfigError(f"not a ZeroMQ address: {addr!r} (use e.g. tcp://127.0.0.1:7000 or ipc:///path)")
    if scheme == "tcp":
        m = _TCP.match(rest)
        if not m or (m.group(2) != "*" and not 0 < int(m.group(2)) < 65536):
            raise ConfigError(f"not a tcp address: {addr!r} (use tcp://HOST:PORT, e.g. tcp://127.0.0.1:7000)")
    return str(addr)


def is_loopback(addr: str) -> bool:
    """Whether an address can only be reached from this host (ipc://, 127.x, ::1, localhost)."""
    if not addr.startswith("tcp://"):
        return True
    host = addr[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def parse_text(value: Any) -> str:
    if isinstance(_scalar(value), bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"expected a string, got {value!r}")
    return str(value)


def parse_bool(value: Any) -> bool:
    """A switch in a file: true or false (on the command line it is a flag, in the environment 1/0)."""
    if isinstance(_scalar(value), bool):
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


# ---------------------------------------------------------------------------- the table
RUN, AGENT, UNIT = "run", "worker", "systemd-unit"
CONTROL = ("status", "reload", "scale", "stop", "call")


@dataclass(frozen=True)
class Option:
    """One option: everything the CLI, the file loader, the environment and the docs need."""

    name: str                               # the flag without dashes, and the TOML key
    type: Any                               # the Python type of the parsed value (for Config)
    default: Any                            # as a user would write it; parsed like any value
    help: str
    parse: Callable[[Any], Any] = parse_text
    commands: tuple[str, ...] = (RUN,)
    short: str | None = None                # "-w"
    multiple: bool = False                  # repeatable; a list in TOML
    flag: bool = False                      # a switch: --debug
    choices: tuple[str, ...] = ()
    dest: str | None = None                 # the Python name when not the flag's (bind -> binds)
    metavar: str | None = None
    bare_value: str | None = None           # given without a value: --reload-on-change
    status_key: str | None = None           # its key in the status document's config
    required_by: tuple[str, ...] = ()
    help_for: Mapping[str, str] = field(default_factory=dict)  # another help text per command
    in_file: bool = True                    # may be given in a -c file

    @property
    def key(self) -> str:
        return self.dest or self.name.replace("-", "_")

    @property
    def envvar(self) -> str:
        return "CLUSTERD_" + self.name.upper().replace("-", "_")

    @property
    def flags(self) -> list[str]:
        return [f for f in (self.short, "--" + self.name) if f]

    def help_text(self, command: str) -> str:
        return self.help_for.get(command, self.help)

    def convert(self, value: Any) -> Any:
        """One value (or a list of them, for a repeatable option) to the option's value."""
        if self.multiple:
            values = value if isinstance(value, (list, tuple)) else [value]
            return [self.convert_one(v) for v in values]
        return self.convert_one(value)

    def convert_one(self, value: Any) -> Any:
        if value is None:
            return None
        if self.flag:
            return parse_bool(value)
        if self.choices:
            if not isinstance(_scalar(value), str) or value not in self.choices:
                raise ConfigError(f"{value!r} is not one of {', '.join(map(repr, self.choices))}")
            return value
        return self.parse(value)

    def default_value(self) -> Any:
        if self.multiple:
            return []
        return self.convert(self.default)


_TIMEOUT_HELP = "Seconds calls and stop_services get on stop/reload."

OPTIONS: tuple[Option, ...] = (
    Option("config", str | None, None, "TOML file with option defaults (flags and CLUSTERD_* variables win).",
           short="-c", commands=(RUN,), in_file=False, metavar="FILE"),
    Option("workers", int, "auto", "Worker processes: 'auto' is one per usable CPU.", parse_workers,
           commands=(RUN, AGENT), short="-w", metavar="auto|N"),
    Option("name", str | None, None, "Instance name (default: MASTER's top-level package).",
           commands=(RUN, AGENT, UNIT, *CONTROL), short="-n",
           help_for={AGENT: "A label for logs and process titles (default: WORKER's top-level package).",
                     **{c: "The instance (needed when several are running)." for c in CONTROL}}),
    Option("bind", list[str], (), "Also serve clients on this ZeroMQ address, e.g. tcp://127.0.0.1:7000 "
           "(repeatable).", check_address, short="-b", multiple=True, dest="binds", metavar="ADDR"),
    Option("connect", str | None, None, "The master's --worker-bind address, e.g. tcp://master-host:7100.",
           check_address, commands=(AGENT,), required_by=(AGENT,), metavar="ADDR"),
    Option("graceful-timeout", float, 30.0, _TIMEOUT_HELP, parse_seconds, commands=(RUN, AGENT),
           status_key="graceful_timeout_s", metavar="S"),
    Option("heartbeat-timeout", float, 10.0, "Seconds without a heartbeat before a worker is killed.",
           parse_seconds, commands=(RUN, AGENT), status_key="heartbeat_timeout_s", metavar="S"),
    Option("call-timeout", float | None, None, "Seconds a call may take; past it the caller gets -32003 and "
           "the worker is recycled.", parse_seconds, short="-t", status_key="call_timeout_s", metavar="S"),
    Option("queue-timeout", float, 2.0, "Seconds a call waits for a ready worker before -32001.",
           parse_seconds, status_key="queue_timeout_s", metavar="S"),
    Option("crash-limit", int, 20, "Failures per worker within --crash-window before giving up.",
           parse_count, metavar="N"),
    Option("crash-window", float, 120.0, "Seconds over which --crash-limit counts failures.", parse_seconds,
           status_key="crash_window_s", metavar="S"),
    Option("max-memory", int | None, None, "Recycle a worker whose RSS exceeds this (512M, 2G).", parse_size,
           status_key="max_memory_bytes", metavar="SIZE"),
    Option("max-requests", int, 0, "Recycle a worker after this many calls (0: never).", parse_count,
           metavar="N"),
    Option("max-requests-jitter", int, 0, "Add up to this many calls to --max-requests, at random per "
           "worker, so that workers are not all recycled at once.", parse_count, metavar="N"),
    Option("balance", str, "least-busy", "How a call picks a worker.", choices=("least-busy", "round-robin")),
    Option("isolation", str, "process", "Workers as processes, or as threads of the master (I/O-bound "
           "services; see README).", choices=("process", "thread")),
    Option("watch-version", str | None, None, "Rolling reload when the version in this file changes.",
           metavar="FILE"),
    Option("reload-on-change", str | None, None, "Development: reload on any .py change under DIR.",
           bare_value=".", metavar="[DIR]"),
    Option("max-message-size", int, "16M", "Largest message a client may send; ZeroMQ drops the connection of a client that sends a bigger one.",
           parse_size, metavar="SIZE"),
    Option("max-batch", int, 1000, "Most requests in one batch; a bigger batch gets -32600.", parse_count,
           metavar="N"),
    Option("max-client-inflight", int, 10000, "Most calls one client may have in flight; past it calls get "
           "-32005 at once (0: no limit).", parse_count, metavar="N"),
    Option("log-format", str, "text", "Log lines as text or as one JSON object per line.",
           commands=(RUN, AGENT), choices=("text", "json")),
    Option("debug", bool, False, "Send tracebacks to callers; log at debug level.", flag=True),
    Option("worker-bind", list[str], (), "Accept workers from agents on this address (see --curve-dir; "
           "repeatable).", check_address, multiple=True, dest="worker_binds", metavar="ADDR"),
    Option("curve-dir", str | None, None, "Directory of keys from `clusterd keygen`: encrypt and "
           "authenticate the worker link.", commands=(RUN, AGENT), metavar="DIR",
           help_for={AGENT: "Directory holding worker.key_secret and master.key (from clusterd keygen)."}),
    Option("user", str | None, None, "User= for the service.", commands=(UNIT,), in_file=False),
)

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


def options_for(command: str) -> list[Option]:
    """The options a command takes, in table order."""
    return [o for o in OPTIONS if command in o.commands]


def default(name: str) -> Any:
    """The parsed default of an option (for code that needs it outside a Config)."""
    return BY_NAME[name].default_value()


# ---------------------------------------------------------------------------- configuration files
def load_file(path: str, command: str = RUN) -> dict[str, Any]:
    """The options set in a TOML file, by Python name, each checked as its flag would be.

    Keys may be spelt with dashes (as the flags) or underscores, at the top level or in a
    [clusterd] table; a bad key or value raises ConfigError naming the file and the key.
    The values are returned as written: the CLI converts them like any other value.
    """
    import tomllib
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if isinstance(data.get("clusterd"), dict):
        extra = sorted(k for k in data if k != "clusterd")
        if extra:
            raise ConfigError(f"{path}: unknown key {extra[0]!r} (options go in the [clusterd] table)")
        data = data["clusterd"]
    by_key = {}
    for o in options_for(command):
        if o.in_file:
            by_key.update({o.name: o, o.name.replace("-", "_"): o, o.key: o})
    values: dict[str, Any] = {}
    for key, value in data.items():
        option = by_key.get(key)
        if option is None:
            raise ConfigError(f"{path}: unknown key {key!r}")
        if option.multiple and not isinstance(value, list):
            value = [value]
        try:
            option.convert(value)
        except ConfigError as exc:
            raise ConfigError(f"{path}: bad value for {key!r}: {exc}") from None
        values[option.key] = value
    return values


# ---------------------------------------------------------------------------- the running configuration
def _config_fields(command: str, first: Iterable[tuple[str, Any]], skip: Iterable[str]) -> list[tuple]:
    skipped = set(skip)
    out: list[tuple] = list(first)
    for o in options_for(command):
        if o.key in skipped:
            continue
        if o.multiple:
            out.append((o.key, o.type, field(default_factory=list)))
        else:
            out.append((o.key, o.type, field(default_factory=o.default_value)))
    return out


def _document(self: Any) -> dict:
    """The `config` part of the status document."""
    doc = {"master": self.master, "worker": self.worker}
    for o in options_for(RUN):
        if o.key not in ("config", "name"):
            doc[o.status_key or o.key] = getattr(self, o.key)
    doc["runtime_dir"] = self.runtime_dir
    return doc


Config = make_dataclass(
    "Config",
    [*_config_fields(RUN, [("master", str), ("worker", str), ("name", str)], ("config", "name")),
     ("runtime_dir", str, field(default=""))],
    namespace={
        "__doc__": "The options of a running instance (`clusterd run`), one field per option of `run`.",
        "__module__": __name__,
        "instance_dir": property(lambda self: Path(self.runtime_dir) / self.name,
                                 doc="<runtime dir>/<name>: the instance's sockets and pid file."),
        "heartbeat_interval": property(lambda self: heartbeat_interval(self.heartbeat_timeout)),
        "document": _document,
    },
)

AgentConfig = make_dataclass(
    "AgentConfig",
    _config_fields(AGENT, [("worker", str)], ()),
    namespace={
        "__doc__": "The options of an agent (`clusterd worker`), one field per option of `worker`.",
        "__module__": __name__,
        "heartbeat_interval": property(lambda self: heartbeat_interval(self.heartbeat_timeout)),
    },
)


def config_keys(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


# ---------------------------------------------------------------------------- checks across options
def instance_name(name: str | None, dotted_path: str) -> str:
    """The name given, else the top-level package of MASTER (or WORKER); refuses unusable names."""
    name = name or dotted_path.partition(":")[0].split(".")[0]
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"bad instance name {name!r}")
    return name


def validate_run(config: Any) -> None:
    """What no single option can check: the worker link's exposure, key files, watched paths."""
    if config.curve_dir is None:
        for addr in config.worker_binds:
            if not is_loopback(addr):
                raise ConfigError(f"--worker-bind {addr} is not a loopback address: give --curve-dir "
                                  "(see clusterd keygen) so that only holders of a worker key can join")
    else:
        from .curve import server_keys
        try:
            server_keys(config.curve_dir)
        except ValueError as exc:
            raise ConfigError(f"--curve-dir: {exc}") from None
    if config.watch_version and not Path(config.watch_version).is_file():
        raise ConfigError(f"--watch-version: no such file {config.watch_version}")
    if config.reload_on_change and not Path(config.reload_on_change).is_dir():
        raise ConfigError(f"--reload-on-change: no such directory {config.reload_on_change}")


def unencrypted_binds(config: Any) -> list[str]:
    """--bind addresses other hosts can reach while nothing encrypts them (warned about, not refused)."""
    return [a for a in config.binds if not is_loopback(a) and not config.curve_dir]


def validate_agent(config: Any) -> None:
    """An agent's link must be encrypted unless it stays on this host."""
    if config.curve_dir is None:
        if not is_loopback(config.connect):
            raise ConfigError(f"--connect {config.connect} is not a loopback address: give --curve-dir so "
                              "the link is encrypted")
        return
    from .curve import client_configurer
    try:
        client_configurer({"dir": config.curve_dir})
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


# ---------------------------------------------------------------------------- docs/options.md
def options_markdown() -> str:
    """The option table of docs/options.md (a test checks the committed file is current)."""
    lines = [
        "# Options",
        "",
        "Generated from `clusterd/settings.py` by `python -m clusterd.settings > docs/options.md`; do not",
        "edit by hand. Every option can also come from its `CLUSTERD_*` variable and, where the TOML",
        "column says so, from a `-c FILE` (keys with dashes or underscores, at the top level or in a",
        "`[clusterd]` table). Flags win over variables, which win over the file.",
        "",
        "| Flag | Commands | Default | Variable | TOML | Description |",
        "|---|---|---|---|---|---|",
    ]
    for o in OPTIONS:
        flag = ", ".join(f"`{f}`" for f in o.flags) + (f" {o.metavar}" if o.metavar else "")
        shown = "—" if o.default is None or o.multiple or o.flag else f"`{o.default}`"
        toml = f"`{o.name}`" if o.in_file and RUN in o.commands else "—"
        text = o.help + (f" One of: {', '.join(o.choices)}." if o.choices else "")
        if o.multiple:
            text += " A list in TOML; space-separated in the variable."
        text += "".join(f" `{c}`: {h}" for c, h in o.help_for.items() if c not in CONTROL)
        cells = [flag, _commands_label(o.commands), shown, f"`{o.envvar}`", toml, text]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _commands_label(commands: tuple[str, ...]) -> str:
    control = [c for c in commands if c in CONTROL]
    named = [c for c in commands if c not in CONTROL]
    return ", ".join(named + (["status, reload, scale, stop, call"] if control else []))


if __name__ == "__main__":
    print(options_markdown(), end="")
