"""The status document (`clusterd status --json`, `clusterd.status`): what the master knows, now.

clusterd/status.py renders it for people; this module builds it.
"""

from __future__ import annotations

import os
import time

import psutil

from .pool import Worker
from .states import WorkerState
from .supervisor import Supervisor
from .view import MasterView


def status_document(router: MasterView) -> dict:
    now = time.time()
    try:
        rss = router.process.memory_info().rss
        cpu = router.process.cpu_percent(None)
        times = router.process.cpu_times()
        cpu_seconds: float | None = round(times.user + times.system, 3)
    except psutil.Error:
        rss, cpu, cpu_seconds = None, None, None
    sup = router.supervisor
    telemetry = router.telemetry
    workers = workers_document(sup)
    doc = {
        "name": router.config.name, "state": router.state,
        # what /readyz answers: a ready worker, and no stop (nor --drain-delay before one) begun
        "ready": router.instance_ready(),
        "master": {"pid": os.getpid(), "started_at": router.started_at, "uptime_s": round(now - router.started_at, 3),
                   "version": router.version, "rss_bytes": rss, "cpu_percent": cpu, "host": os.uname().nodename,
                   "master_stale": bool(router.master_code is not None and router.master_code.stale),
                   "cpu_seconds": cpu_seconds, "clients": sum(len(c) for c in router.client_calls.values()),
                   **telemetry.master_fields()},
        "workers": workers,
        "config": router.config.document(),
        "generation": sup.generation,
        **{f"workers_{k}": v for k, v in sup.counts().items()},  # workers_ready, workers_wanted
        "queued": len(router.queue),
        "client_inflight": router.client_inflight(),
        "calls_inflight": sum(w["inflight"] for w in workers),
        "counters": telemetry.counters_document(),
        "methods": telemetry.methods(),
        "clients": {**router.sockets.clients_document(), "answers_kept": router.backlogs.held(),
                    "answers_dropped": router.backlogs.dropped, "refused_busy": router.refused_busy},
    }
    if router.reloads is not None:
        doc["reload"] = router.reloads.summary()
    if router.agents is not None:
        doc["agents"] = router.agents.document()
    if router.config.isolation == "thread":
        doc["threads"] = sup.spawner.document()
    return doc


def workers_document(sup: Supervisor) -> list[dict]:
    now = time.time()
    rows = []
    for worker in sorted(sup.by_ident.values(), key=lambda w: (w.slot, w.generation, w.started_at)):
        if worker.pid is None and worker.process is not None:
            worker.pid = worker.process.pid
        slot = sup.slots.get(worker.slot)
        rows.append({
            "slot": worker.slot, "pid": worker.pid, "state": worker.state.value,
            "generation": worker.generation, "started_at": worker.started_at,
            "uptime_s": round(now - worker.started_at, 3), "ready_at": worker.ready_at,
            "restarts": slot.restarts if slot else 0, "rss_bytes": worker.rss_bytes,
            "cpu_percent": worker.cpu_percent, "cpu_seconds": _cpu_seconds(worker),
            "inflight": worker.inflight, "served": worker.served + worker.door_served,
            "failed": worker.failed, "last_exit": slot.last_exit if slot else None,
            "max_requests": worker.max_requests or None, "host": worker.host, "agent": worker.agent,
            "isolation": worker.process.isolation if worker.process is not None else "process",
            # with --http-bind: {"inflight", "served", "connections"} of its HTTP/WebSocket door
            "http": worker.http,
        })
    for slot in sup.slots.values():
        if slot.active is None and slot.incoming is None and not slot.retired:
            # between a crash and its restart (backoff): the slot is still shown, with its history
            rows.append({
                "slot": slot.index, "pid": None, "state": WorkerState.STARTING.value, "generation": sup.generation,
                "started_at": None, "uptime_s": None, "ready_at": None, "restarts": slot.restarts,
                "rss_bytes": None, "cpu_percent": None, "cpu_seconds": None, "inflight": 0, "served": 0, "failed": 0,
                "last_exit": slot.last_exit, "max_requests": None, "host": None, "agent": None,
                "restart_pending": slot.restart_handle is not None, "isolation": sup.config.isolation,
            })
    rows.sort(key=lambda r: r["slot"])
    return rows


def _cpu_seconds(worker: Worker) -> float | None:
    """CPU time (user + system) of a local worker process; None for a thread or a remote worker."""
    seconds = getattr(worker.process, "cpu_seconds", None)
    return seconds() if seconds is not None else None


__all__ = ["status_document", "workers_document"]
