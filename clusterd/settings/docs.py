"""docs/options.md, generated from the table (`python -m clusterd.settings > docs/options.md`)."""

from __future__ import annotations

from .table import CONTROL, OPTIONS, RUN


def options_markdown() -> str:
    """The option table of docs/options.md (a test checks the committed file is current)."""
    lines = [
        "# Options",
        "",
        "Generated from `clusterd/settings/table.py` by `python -m clusterd.settings > docs/options.md`; do not",
        "edit by hand. Every option can also come from its `CLUSTERD_*` variable and, where the TOML",
        "column says so, from a `-c FILE` (keys with dashes or underscores, at the top level or in a",
        "`[clusterd]` table). Flags win over variables, which win over the file. The MASTER and WORKER",
        "arguments of `run` (and WORKER of `worker`) may come from `CLUSTERD_MASTER` and `CLUSTERD_WORKER`.",
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
