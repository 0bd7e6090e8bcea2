"""The examples that end each command's --help (two or three each: what people type first)."""

from __future__ import annotations

import click

EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "run": [
        ("clusterd run myapp.rpc:Master myapp.rpc:Worker -w 4 -b tcp://127.0.0.1:7000", "4 workers, one TCP bind"),
        ("clusterd run myapp.rpc:Master myapp.rpc:Worker -c clusterd.toml", "options from a file"),
        ("CLUSTERD_WORKERS=2 clusterd run myapp.rpc:Master myapp.rpc:Worker --reload-on-change",
         "development: reload on save"),
    ],
    "status": [
        ("clusterd status", "every running instance, one block each"),
        ("clusterd status --name myapp --json", "the status document of one"),
        ("clusterd status --watch", "refresh every second, like top"),
    ],
    "logs": [
        ("clusterd logs", "the last 50 lines"),
        ("clusterd logs -f --slot 2", "follow one worker"),
        ("clusterd logs -n 500 --json", "as JSON objects, one per line"),
    ],
    "health": [
        ("clusterd health && echo ok", "exit 0 when every wanted worker is ready"),
        ("clusterd health --name myapp", "in a container's HEALTHCHECK or a probe"),
    ],
    "reload": [
        ("clusterd reload", "rolling reload, waits and shows each slot"),
        ("clusterd reload --no-wait", "start it and return"),
    ],
    "scale": [
        ("clusterd scale 8", "eight workers"),
        ("clusterd scale auto --name myapp", "one per usable CPU"),
        ("clusterd scale 0", "pause: calls wait, then get -32001"),
    ],
    "stop": [
        ("clusterd stop", "graceful: calls in flight finish"),
        ("clusterd stop --timeout 5", "give them 5 seconds at most"),
    ],
    "call": [
        ("clusterd call fib 30", "positional params, JSON values"),
        ("clusterd call greet --json-params '{\"name\": \"ann\"}'", "named params"),
        ("clusterd call fib 30 --connect tcp://127.0.0.1:7000", "through a --bind address"),
    ],
    "ls": [
        ("clusterd ls", "name, pid, state, workers ready/wanted, version, uptime"),
    ],
    "systemd-unit": [
        ("clusterd systemd-unit myapp.rpc:Master myapp.rpc:Worker > /etc/systemd/system/myapp.service", ""),
        ("clusterd systemd-unit myapp.rpc:Master myapp.rpc:Worker --user app -w 4", "extra options go to run"),
    ],
    "keygen": [
        ("clusterd keygen /etc/clusterd/keys", "then run --worker-bind ... --curve-dir /etc/clusterd/keys"),
    ],
    "worker": [
        ("clusterd worker myapp.rpc:Worker --connect tcp://master-host:7100 --curve-dir keys", ""),
    ],
    "bench": [
        ("clusterd bench --quick", "about 10 s"),
        ("clusterd bench --chaos 30", "clients call while workers are killed at random"),
    ],
}


def epilog(command: str) -> str | None:
    """The "Examples:" block for a command's help, kept as written (click's \\b marker)."""
    examples = EXAMPLES.get(command)
    if not examples:
        return None
    lines = ["\b", "Examples:"]
    for text, why in examples:
        lines.append(f"  {text}")
        if why:
            lines.append(f"      {why}")
    return "\n".join(lines)


def teach(group: click.Group) -> None:
    """Make every command's help teach: examples at its end, each option with its default and its
    CLUSTERD_* variable (a command's own options get CLUSTERD_<COMMAND>_<OPTION>), and the
    top-level list with each command's first sentence whole (click cuts it at 45 characters)."""
    for name, command in group.commands.items():
        if command.epilog is None:
            command.epilog = epilog(name)
        if not command.short_help and command.help:
            command.short_help = command.help.strip().split("\n\n")[0].replace("\n", " ")
        for param in command.params:
            if not isinstance(param, click.Option) or param.name in (None, "help"):
                continue
            if not param.envvar:
                flag = next((o for o in param.opts if o.startswith("--")), param.name or "")
                param.envvar = f"CLUSTERD_{name}_{flag.lstrip('-')}".upper().replace("-", "_")
            param.show_envvar = True
            if param.default not in (None, False, (), []) and not param.is_flag:
                param.show_default = True
