"""Every option of clusterd, defined once: name, type, default, parsing, help, variable, TOML key.

The click options of `run`, `worker` (the agent), `systemd-unit` and the control commands, the
`-c FILE` loader, the `CLUSTERD_*` variables, the `Config` of a running instance and
docs/options.md (`python -m clusterd.settings`) are all generated from `OPTIONS`. Flags win over
the environment, which wins over the file, which wins over the default here.

Parts: values.py (parsers), table.py (the Option entries), docs.py (docs/options.md); this file
builds Config and AgentConfig from the table, loads -c files and checks what spans options. It is
imported by the CLI and the master alike: it imports nothing of clusterd outside this package at
module level, and nothing heavier than the standard library.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import field, fields, make_dataclass
from pathlib import Path
from typing import Any

from .docs import options_markdown
from .table import AGENT, BY_NAME, CONTROL, OPTIONS, RUN, UNIT, Option, default, options_for
from .values import (
    ConfigError,
    check_address,
    cpu_count,
    heartbeat_interval,
    is_loopback,
    is_loopback_host,
    parse_bool,
    parse_count,
    parse_seconds,
    parse_size,
    parse_text,
    parse_workers,
    runtime_root,
)

__all__ = [
    "AGENT", "BY_NAME", "CONTROL", "OPTIONS", "RUN", "UNIT", "AgentConfig", "Config", "ConfigError", "Option",
    "check_address", "config_keys", "cpu_count", "default", "heartbeat_interval", "instance_name", "is_loopback",
    "load_file", "options_for", "options_markdown", "parse_bool", "parse_count", "parse_seconds", "parse_size",
    "parse_text", "parse_workers", "public_dashboard_binds", "public_metrics_bind", "runtime_root",
    "unencrypted_binds", "validate_agent", "validate_run",
]


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
            value = getattr(self, o.key)
            doc[o.status_key or o.key] = o.status_value(value) if o.status_value else value
    doc["runtime_dir"] = self.runtime_dir
    doc["workers_auto"] = getattr(self.workers, "budget", None)  # where `auto` came from (values.AutoWorkers)
    return doc


Config = make_dataclass(
    "Config",
    [*_config_fields(RUN, [("master", str), ("worker", str), ("name", str)], ("config", "name")),
     ("runtime_dir", str, field(default="")),
     ("worker_identity", Any, field(default=None))],   # privileges.WorkerIdentity from --user/--group
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
    if config.workers == 0:
        raise ConfigError("--workers 0 would start no worker: give 1 or more (a running instance can still "
                          "`clusterd scale 0` on purpose)")
    if config.curve_dir is None:
        for addr in config.worker_binds:
            if not is_loopback(addr):
                raise ConfigError(f"--worker-bind {addr} is not a loopback address: give --curve-dir "
                                  "(see clusterd keygen) so that only holders of a worker key can join")
    else:
        from ..curve import server_keys
        try:
            server_keys(config.curve_dir)
        except ValueError as exc:
            raise ConfigError(f"--curve-dir: {exc}") from None
    if config.watch_version and not Path(config.watch_version).is_file():
        raise ConfigError(f"--watch-version: no such file {config.watch_version}")
    if config.reload_on_change and not Path(config.reload_on_change).is_dir():
        raise ConfigError(f"--reload-on-change: no such directory {config.reload_on_change}")
    if config.http_token_file is not None:
        from ..httpdoor.tokens import TokenError, read_token
        try:
            read_token(config.http_token_file)
        except TokenError as exc:
            raise ConfigError(f"--http-token-file: {exc}") from None
    for option in ("http_token_file", "http_cors", "http_status"):
        if getattr(config, option) and not config.http_binds:
            raise ConfigError(f"--{option.replace('_', '-')} needs --http-bind")
    if config.dashboard and not (config.metrics_bind or config.http_binds):
        raise ConfigError("--dashboard needs --http-bind or --metrics-bind (the page is served on those ports)")


def unencrypted_binds(config: Any) -> list[str]:
    """--bind addresses other hosts can reach while nothing encrypts them (warned about, not refused)."""
    return [a for a in config.binds if not is_loopback(a) and not config.curve_dir]


def public_metrics_bind(config: Any) -> str | None:
    """--metrics-bind when other hosts can reach it (it has no authentication: warned about)."""
    bind = config.metrics_bind
    return bind if bind and not is_loopback_host(bind) else None


def public_dashboard_binds(config: Any) -> list[str]:
    """The --http-bind addresses other hosts can reach, when they serve --dashboard (open, like the probes)."""
    if not config.dashboard:
        return []
    return [bind for bind in config.http_binds if not bind.startswith("unix:") and not is_loopback_host(bind)]


def validate_agent(config: Any) -> None:
    """An agent's link must be encrypted unless it stays on this host."""
    if config.curve_dir is None:
        if not is_loopback(config.connect):
            raise ConfigError(f"--connect {config.connect} is not a loopback address: give --curve-dir so "
                              "the link is encrypted")
        return
    from ..curve import client_configurer
    try:
        client_configurer({"dir": config.curve_dir})
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
