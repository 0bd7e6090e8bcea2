"""The status document as tables a person reads at a glance: `clusterd status` and `clusterd ls`."""

from __future__ import annotations

import os
import sys
import time

STATE_COLOURS = {"ready": "32", "starting": "36", "draining": "33", "stopping": "33", "exited": "31",
                 "running": "32", "reloading": "36", "unresponsive": "31"}


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
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


def _colour(text: str, state: str, enabled: bool) -> str:
    code = STATE_COLOURS.get(state)
    return f"\x1b[{code}m{text}\x1b[0m" if enabled and code else text


def _last_exit(exit: dict | None) -> str:
    if not exit:
        return "-"
    how = f"signal {exit['signal']}" if exit.get("signal") else f"code {exit.get('code')}"
    ago = human_duration(time.time() - exit["at"]) + " ago" if exit.get("at") else ""
    return f"{exit.get('reason')} ({how}) {ago}".strip()


def _table(headers: list[str], rows: list[list[str]], states: list[str], colour: bool, state_col: int) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for row, state in zip(rows, states):
        cells = [c.ljust(w) for c, w in zip(row, widths)]
        cells[state_col] = _colour(cells[state_col], state, colour)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _auto_origin(config: dict) -> str:
    """Where `--workers auto` took its number from (a CPU quota, or the affinity)."""
    auto = config.get("workers_auto")
    return f" (auto: {auto['source']})" if isinstance(auto, dict) and auto.get("source") else ""


def render_table(doc: dict, colour: bool | None = None) -> str:
    if colour is None:
        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    m = doc["master"]
    workers = doc.get("workers", [])
    ready = sum(1 for w in workers if w["state"] == "ready")
    config = doc.get("config", {})
    wanted = len([w for w in workers if w["state"] != "draining"]) or config.get("workers", 0)
    head = (f"{doc['name']}  {_colour(doc['state'], doc['state'], colour)}  master pid {m['pid']}  "
            f"up {human_duration(m.get('uptime_s'))}  version {m.get('version') or '-'}  "
            f"workers {ready}/{wanted} ready{_auto_origin(config)}  generation {doc.get('generation', '-')}  "
            f"master {human_bytes(m.get('rss_bytes'))}")
    if config.get("isolation") == "thread":
        head += "  isolation thread"
    remote = any(w.get("agent") for w in workers)
    headers = ["SLOT", "PID", "STATE", "GEN", "UPTIME", "RESTARTS", "MEMORY", "CPU", "INFLIGHT", "SERVED",
               "FAILED", "LAST EXIT"] + (["HOST"] if remote else [])
    rows = []
    for w in workers:
        cpu = w.get("cpu_percent")
        row = [str(w["slot"]), "-" if w["pid"] is None else str(w["pid"]), w["state"], str(w.get("generation", "-")),
               human_duration(w.get("uptime_s")), str(w.get("restarts", 0)), human_bytes(w.get("rss_bytes")),
               "-" if cpu is None else f"{cpu:.0f}%", str(w.get("inflight", 0)), str(w.get("served", 0)),
               str(w.get("failed", 0)), _last_exit(w.get("last_exit"))]
        if remote:
            row.append(w.get("host") or "(local)")
        rows.append(row)
    table = _table(headers, rows, [w["state"] for w in workers], colour, 2)
    abandoned = (doc.get("threads") or {}).get("abandoned")
    if abandoned:
        table += f"\n\nabandoned hung threads: {len(abandoned)}"
    return head + "\n\n" + table


def render_list(docs: list[dict]) -> str:
    headers = ["NAME", "PID", "STATE", "WORKERS", "VERSION", "UPTIME"]
    rows, states = [], []
    for d in docs:
        workers = d.get("workers", [])
        ready = sum(1 for w in workers if w["state"] == "ready")
        m = d.get("master", {})
        rows.append([d["name"], str(m.get("pid")), d["state"], f"{ready}/{d.get('config', {}).get('workers', '-')}",
                     str(m.get("version") or "-"), human_duration(m.get("uptime_s"))])
        states.append(d["state"])
    return _table(headers, rows, states, sys.stdout.isatty() and not os.environ.get("NO_COLOR"), 2)
