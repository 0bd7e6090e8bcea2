"""The table: every option of clusterd once, with what each command and source needs to know."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .values import (
    ConfigError,
    check_address,
    check_host_port,
    check_http_bind,
    parse_bool,
    parse_count,
    parse_env,
    parse_seconds,
    parse_size,
    parse_text,
    parse_workers,
    single_value,
)

RUN, AGENT, UNIT = "run", "worker", "systemd-unit"
CONTROL = ("status", "logs", "health", "reload", "scale", "stop", "call")


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
    status_value: Callable[[Any], Any] | None = None  # its value there, when not the option's own
    required_by: tuple[str, ...] = ()
    help_for: Mapping[str, str] = field(default_factory=dict)  # another help text per command
    in_file: bool = True                    # may be given in a -c file
    no_short: tuple[str, ...] = ()          # commands where the short flag means something else (logs -n)

    @property
    def key(self) -> str:
        return self.dest or self.name.replace("-", "_")

    @property
    def envvar(self) -> str:
        return "CLUSTERD_" + self.name.upper().replace("-", "_")

    @property
    def flags(self) -> list[str]:
        return [f for f in (self.short, "--" + self.name) if f]

    def flags_for(self, command: str) -> list[str]:
        return ["--" + self.name] if command in self.no_short else self.flags

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
            if not isinstance(single_value(value), str) or value not in self.choices:
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
    Option("workers", int, "auto", "Worker processes: 'auto' is one per usable CPU "
           "(affinity, capped by a cgroup CPU quota).", parse_workers,
           commands=(RUN, AGENT), short="-w", metavar="auto|N", status_value=int),
    Option("name", str | None, None, "Instance name (default: MASTER's top-level package).",
           commands=(RUN, AGENT, UNIT, *CONTROL), short="-n", no_short=("logs",),
           help_for={AGENT: "A label for logs and process titles (default: WORKER's top-level package).",
                     **{c: "The instance (needed when several are running)." for c in CONTROL},
                     "status": "Only this instance (default: every running one, one block each)."}),
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
    Option("max-message-size", int, "16M", "Largest message a client may send; "
           "ZeroMQ drops the connection of a client that sends a bigger one.",
           parse_size, metavar="SIZE"),
    Option("max-batch", int, 1000, "Most requests in one batch; a bigger batch gets -32600.", parse_count,
           metavar="N"),
    Option("max-client-inflight", int, 10000, "Most calls one client may have in flight; past it calls get "
           "-32005 at once (0: no limit).", parse_count, metavar="N"),
    Option("max-clients", int, 0, "Most connections per client endpoint (control.sock, each --bind); new ones past "
           "it are closed at once (0: derived from the open-file limit, at most 10000).", parse_count, metavar="N",
           status_value=lambda n: n or None),
    Option("log-format", str, "text", "Log lines as text or as one JSON object per line.",
           commands=(RUN, AGENT), choices=("text", "json")),
    Option("log-file", str | None, None, "Write the log to this file instead of stderr; it is reopened when "
           "logrotate moves it away (use logrotate's create mode).", metavar="PATH"),
    Option("log-calls", bool, False, "Log every call with its method, outcome and duration (an access log).",
           flag=True),
    Option("debug", bool, False, "Send tracebacks to callers; log at debug level (workers' records too).",
           flag=True),
    Option("chdir", str | None, None, "Change to this directory before importing MASTER and WORKER (the "
           "workers start there too).", metavar="DIR"),
    Option("pythonpath", str | None, None, "Directories to put first on sys.path of the master and the "
           "workers (':' or ',' between).", metavar="DIRS"),
    Option("env", list[str], (), "Set an environment variable for the master and its workers (repeatable; "
           "status shows the names, not the values).", parse_env, multiple=True, metavar="KEY=VALUE",
           status_value=lambda items: [i.partition("=")[0] for i in items]),
    Option("worker-bind", list[str], (), "Accept workers from agents on this address (see --curve-dir; "
           "repeatable).", check_address, multiple=True, dest="worker_binds", metavar="ADDR"),
    Option("curve-dir", str | None, None, "Directory of keys from `clusterd keygen`: encrypt and "
           "authenticate the worker link.", commands=(RUN, AGENT), metavar="DIR",
           help_for={AGENT: "Directory holding worker.key_secret and master.key (from clusterd keygen)."}),
    Option("http-bind", list[str], (), "Serve JSON-RPC over HTTP and WebSocket, and the probes, on HOST:PORT or "
           "unix:/path (repeatable; the workers serve it on sockets the master holds).", check_http_bind,
           multiple=True, dest="http_binds", metavar="ADDR"),
    Option("http-token-file", str | None, None, "Require 'Authorization: Bearer <the token in FILE>' on the HTTP "
           "RPC path and WebSocket (probes stay open).", metavar="FILE"),
    Option("http-cors", str | None, None, "Let pages from ORIGIN (or *) call over HTTP and WebSocket: answer "
           "preflights, send CORS headers.", metavar="ORIGIN"),
    Option("http-status", bool, False, "Serve the status document at GET /status on the HTTP port (it names "
           "pids and memory: off by default).", flag=True),
    Option("drain-delay", float, 0.0, "On SIGTERM: /readyz answers 503 at once, calls are served this many "
           "seconds more, then the graceful stop.", parse_seconds, status_key="drain_delay_s", metavar="S"),
    Option("metrics-bind", str | None, None, "Serve Prometheus metrics at /metrics on this HTTP address, "
           "e.g. 127.0.0.1:9187 (no authentication: keep it private).", check_host_port, metavar="HOST:PORT"),
    Option("dashboard", bool, False, "Serve a live dashboard at /dashboard on the --http-bind and "
           "--metrics-bind ports (no authentication: it names methods and pids).", flag=True),
    Option("user", str | None, None, "As root: run the workers (and their zygote) as this user, name or "
           "uid; the master keeps root.", commands=(RUN, UNIT), help_for={UNIT: "User= for the service."}),
    Option("group", str | None, None, "As root: run the workers with this group (default: the --user's "
           "group).", metavar="GROUP"),
)

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


def options_for(command: str) -> list[Option]:
    """The options a command takes, in table order."""
    return [o for o in OPTIONS if command in o.commands]


def default(name: str) -> Any:
    """The parsed default of an option (for code that needs it outside a Config)."""
    return BY_NAME[name].default_value()
