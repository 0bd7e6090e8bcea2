"""The status document as tables a person reads at a glance, fitted to the terminal's width:
`clusterd status` (one block per instance) and `clusterd ls`."""

from __future__ import annotations

import os
import shutil
import sys
import time

STATE_COLOURS = {"ready": "32", "starting": "36", "draining": "33", "stopping": "33", "exited": "31",
                 "running": "32", "reloading": "36", "unresponsive": "31"}
MIN_LAST_EXIT = 12   # narrower than this, LAST EXIT is dropped rather than cut to nothing


def human_bytes(n: int | None, short: bool = False) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            if short:
                return f"{value:.0f}{unit[0]}" if unit == "B" or value >= 10 else f"{value:.1f}{unit[0]}"
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def terminal_width() -> int | None:
    """The width to fit: $COLUMNS, else the terminal's; None when printing to a pipe (no limit)."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def _use_colour() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def _colour(text: str, state: str, enabled: bool) -> str:
    code = STATE_COLOURS.get(state)
    return f"\x1b[{code}m{text}\x1b[0m" if enabled and code else text


def _last_exit(exit: dict | None, short: bool = False) -> str:
    if not exit:
        return "-"
    ago = human_duration(time.time() - exit["at"]) + " ago" if exit.get("at") else ""
    if short:
        how = f"sig{exit['signal']}" if exit.get("signal") else f"code{exit.get('code')}"
        return f"{exit.get('reason')} {how} {ago}".strip()
    how = f"signal {exit['signal']}" if exit.get("signal") else f"code {exit.get('code')}"
    return f"{exit.get('reason')} ({how}) {ago}".strip()


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(0, width - 1)] + "~"


def _table(headers: list[str], rows: list[list[str]], states: list[str], colour: bool, state_col: int,
           sep: str = "  ") -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [sep.join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for row, state in zip(rows, states):
        cells = [c.ljust(w) for c, w in zip(row, widths)]
        if state_col >= 0:
            cells[state_col] = _colour(cells[state_col], state, colour)
        lines.append(sep.join(cells).rstrip())
    return "\n".join(lines)


def _auto_origin(config: dict) -> str:
    """Where `--workers auto` took its number from (a CPU quota, or the affinity)."""
    auto = config.get("workers_auto")
    return f" (auto: {auto['source']})" if isinstance(auto, dict) and auto.get("source") else ""


def _wrap(parts: list[str], width: int | None, sep: str = "  ") -> str:
    """Join parts on one line, or on as many lines as the width needs (a part is never split)."""
    if width is None:
        return sep.join(parts)
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + len(sep) + len(part) <= width:
            lines[-1] += sep + part
        else:
            lines.append(_cut(part, width))
    return "\n".join(lines)


# (key, wide header, narrow header); the narrow layout drops columns from the end of DROP first
COLUMNS = [("slot", "SLOT", "SLOT"), ("pid", "PID", "PID"), ("state", "STATE", "STATE"), ("gen", "GEN", "GEN"),
           ("uptime", "UPTIME", "UP"), ("restarts", "RESTARTS", "RST"), ("memory", "MEMORY", "MEM"),
           ("cpu", "CPU", "CPU"), ("inflight", "INFLIGHT", "INFL"), ("served", "SERVED", "SERVED"),
           ("failed", "FAILED", "FAIL"), ("host", "HOST", "HOST"), ("last_exit", "LAST EXIT", "LAST EXIT")]
DROP = ["host", "gen", "cpu", "uptime", "restarts", "inflight", "failed", "memory"]


def _cells(w: dict, narrow: bool) -> dict[str, str]:
    cpu = w.get("cpu_percent")
    return {
        "slot": str(w["slot"]), "pid": "-" if w["pid"] is None else str(w["pid"]), "state": w["state"],
        "gen": str(w.get("generation", "-")), "uptime": human_duration(w.get("uptime_s")),
        "restarts": str(w.get("restarts", 0)), "memory": human_bytes(w.get("rss_bytes"), short=narrow),
        "cpu": "-" if cpu is None else f"{cpu:.0f}%", "inflight": str(w.get("inflight", 0)),
        "served": str(w.get("served", 0)), "failed": str(w.get("failed", 0)),
        "host": w.get("host") or "(local)", "last_exit": _last_exit(w.get("last_exit"), narrow),
    }


def render_workers(workers: list[dict], width: int | None, colour: bool) -> str:
    """The worker table: every column when it fits; else short headers and cells, then fewer columns
    (least telling first), and LAST EXIT cut to what is left."""
    remote = any(w.get("agent") for w in workers)
    shown = [k for k, _, _ in COLUMNS if k != "host" or remote]
    states = [w["state"] for w in workers]

    def layout(headers: dict[str, str], cells: list[dict[str, str]]) -> tuple[int, int]:
        fixed = [k for k in shown if k != "last_exit"]
        used = sum(max([len(headers[k])] + [len(c[k]) for c in cells]) + 2 for k in fixed)
        return used, max([len(headers["last_exit"])] + [len(c["last_exit"]) for c in cells])

    headers = {k: h for k, h, _ in COLUMNS}
    cells = [_cells(w, False) for w in workers]
    used, last = layout(headers, cells)
    if width is not None and used + last > width:
        headers = {k: n for k, _, n in COLUMNS}
        cells = [_cells(w, True) for w in workers]
        droppable = [k for k in DROP if k in shown]
        while True:
            used, last = layout(headers, cells)
            if used + last <= width:
                break
            if used + MIN_LAST_EXIT <= width:
                for c in cells:
                    c["last_exit"] = _cut(c["last_exit"], width - used)
                break
            if not droppable:
                shown.remove("last_exit")
                break
            shown.remove(droppable.pop(0))
    rows = [[c[k] for k in shown] for c in cells]
    return _table([headers[k] for k in shown], rows, states, colour, shown.index("state"))


def _totals(workers: list[dict], master_rss: int | None, queued: int = 0) -> list[str]:
    rss = [w.get("rss_bytes") or 0 for w in workers]
    parts = [f"total: {len(workers)} worker{'' if len(workers) == 1 else 's'}",
             f"served {sum(w.get('served', 0) for w in workers)}",
             f"failed {sum(w.get('failed', 0) for w in workers)}",
             f"in flight {sum(w.get('inflight', 0) for w in workers)}"]
    if queued:
        parts.append(f"queued {queued}")
    parts.append(f"memory {human_bytes(sum(rss) + (master_rss or 0))} with the master's")
    return parts


def counts(doc: dict) -> tuple[int, int]:
    """Ready and wanted workers, the same for `status` and `ls`."""
    workers = doc.get("workers", [])
    ready = doc.get("workers_ready")
    if ready is None:
        ready = sum(1 for w in workers if w["state"] == "ready")
    wanted = doc.get("workers_wanted")
    if wanted is None:
        wanted = len([w for w in workers if w["state"] != "draining"]) or doc.get("config", {}).get("workers", 0)
    return ready, wanted


def render_table(doc: dict, colour: bool | None = None, width: int | None = -1) -> str:
    """One instance: a head (name, state, master, counts), the worker table and a totals line."""
    if colour is None:
        colour = _use_colour()
    if width == -1:
        width = terminal_width()
    m = doc["master"]
    workers = doc.get("workers", [])
    config = doc.get("config", {})
    ready, wanted = counts(doc)
    head = [f"{doc['name']}", _colour(doc["state"], doc["state"], colour) if width is None else doc["state"],
            f"master pid {m['pid']}", f"up {human_duration(m.get('uptime_s'))}",
            f"version {m.get('version') or '-'}", f"workers {ready}/{wanted} ready{_auto_origin(config)}",
            f"generation {doc.get('generation', '-')}", f"master {human_bytes(m.get('rss_bytes'))}"]
    if config.get("isolation") == "thread":
        head.append("isolation thread")
    if m.get("master_stale"):
        head.append("MASTER STALE: its code changed, restart it to run the new code")
    text = _wrap(head, width)
    if wanted == 0:
        text += "\n" + _wrap(["scaled to 0 workers: calls wait, then get -32001;", "`clusterd scale N` serves again."],
                             width, sep=" ")
    text += "\n\n" + render_workers(workers, width, colour)
    text += "\n" + _wrap(_totals(workers, m.get("rss_bytes"), doc.get("queued", 0)), width)
    abandoned = (doc.get("threads") or {}).get("abandoned")
    if abandoned:
        text += f"\n\nabandoned hung threads: {len(abandoned)}"
    return text


def render_many(docs: list[dict], colour: bool | None = None, width: int | None = -1) -> str:
    """Several instances: one block each, as `pm2 ls` shows every app."""
    return "\n\n".join(render_table(d, colour, width) for d in docs)


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f} ms" if value < 1 else f"{value:.1f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def render_methods(doc: dict) -> str:
    """The `methods` section: per method over the last minute, the busiest first."""
    methods = doc.get("methods") or {}
    if not methods:
        return "methods (last minute): no calls"
    headers = ["METHOD", "CALLS", "ERRORS", "P50", "P99"]
    order = sorted(methods, key=lambda m: (-methods[m].get("calls", 0), m))
    rows = [[m, str(methods[m].get("calls", 0)), str(methods[m].get("errors", 0)), _ms(methods[m].get("p50_ms")),
             _ms(methods[m].get("p99_ms"))] for m in order]
    return "methods (last minute)\n\n" + _table(headers, rows, [""] * len(rows), False, 0)


def render_list(docs: list[dict]) -> str:
    headers = ["NAME", "PID", "STATE", "WORKERS", "VERSION", "UPTIME"]
    rows, states = [], []
    for d in docs:
        ready, wanted = counts(d)
        m = d.get("master", {})
        rows.append([d["name"], str(m.get("pid")), d["state"], f"{ready}/{wanted}",
                     str(m.get("version") or "-"), human_duration(m.get("uptime_s"))])
        states.append(d["state"])
    return _table(headers, rows, states, _use_colour(), 2)


HEALTHY, DEGRADED = 0, 1


def health_verdict(doc: dict) -> tuple[int, str]:
    """`clusterd health`: (exit status, one line why) from the status document.

    0 every wanted worker is ready and the instance takes calls; 1 degraded: fewer ready workers than
    wanted, scaled to 0, starting, reloading, stopping, or not ready (--drain-delay). (3, not running at all, is
    decided before there is a document.)
    """
    name = doc.get("name", "?")
    ready, wanted = counts(doc)
    summary = f"{ready}/{wanted} workers ready"
    state = doc.get("state")
    if state in ("stopping", "stopped"):
        return DEGRADED, f"{name}: stopping ({summary})"
    if doc.get("ready") is False and ready:
        return DEGRADED, f"{name}: not taking new connections: a stop is due (--drain-delay) ({summary})"
    if state != "running":
        return DEGRADED, f"{name}: {state} ({summary})"
    if wanted == 0:  # scaled to 0 on purpose: nothing serves, so a probe must not pass
        return DEGRADED, f"{name}: not serving: scaled to 0 workers"
    if ready < wanted:
        return DEGRADED, f"{name}: degraded: {summary}"
    return HEALTHY, f"{name}: ready: {summary}"
