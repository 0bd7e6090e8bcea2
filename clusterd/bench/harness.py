"""``run_bench``: start every system, measure them in turn, and build the result document."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq

from .measure import measure_restarts, measure_rounds, measure_speedup
from .plan import RESULT_VERSION, SYSTEM_LABELS, Plan, Progress
from .procs import Procs
from .report import targets
from .systems import rss_mb, service_of, start_c_proxy, start_handwritten, start_instance


def run_bench(*, quick: bool = False, workers: int = 2,
              progress: Progress | None = None) -> dict[str, Any]:
    """Run every measurement and return the result document described in clusterd/bench/__init__.py.

    Raises BenchError when a measurement cannot be made (clusterd does not start, a call fails).
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    report: Progress = progress or (lambda _msg: None)
    plan = Plan.make(quick=quick, workers=workers)
    settle_s = 0.3 if quick else 1.0
    started = time.perf_counter()
    with _bench_session() as (ctx, procs):
        report("starting the reference systems…")
        services = {"c_proxy": start_c_proxy(procs, plan),
                    "handwritten": start_handwritten(procs, plan)}
        report(f"starting clusterd with {workers} workers…")
        main = start_instance(procs, ctx, workers)
        report("starting clusterd with 1 worker…")
        single = start_instance(procs, ctx, 1, suffix="-1")
        services["clusterd"] = clusterd = service_of(main)
        time.sleep(settle_s)
        fresh_rss = rss_mb(clusterd.master_pid)

        systems = measure_rounds(ctx, procs, services, plan, report)
        time.sleep(settle_s)
        memory = {"master_rss_mb": rss_mb(clusterd.master_pid),
                  "master_rss_fresh_mb": fresh_rss,
                  "worker_rss_mb": rss_mb(service_of(main).worker_pids[0])}
        report("CPU-bound speedup…")
        cpu = measure_speedup(ctx, main, single, plan)
        restart: dict[str, Any] | None = None
        if plan.restart_repeats <= workers:
            restart = measure_restarts(main, plan, report)
        procs.kill_all()
        if restart is None:
            report(f"starting clusterd with {plan.restart_repeats} workers…")
            restart = measure_restarts(
                start_instance(procs, ctx, plan.restart_repeats, suffix="-r"), plan,
                report)
    judged = targets(systems, cpu, restart, memory, workers)
    return {
        "version": RESULT_VERSION,
        "quick": quick,
        "elapsed_s": round(time.perf_counter() - started, 1),
        "machine": _machine(),
        "params": plan.as_dict(),
        "systems": {key: systems[key] for key in SYSTEM_LABELS},
        "cpu": cpu,
        "restart": restart,
        "memory": memory,
        "targets": judged,
        "all_met": all(t["met"] for t in judged.values()),
    }


@contextlib.contextmanager
def _bench_session() -> Iterator[tuple[zmq.Context[zmq.Socket[bytes]], Procs]]:
    tmp = Path(tempfile.mkdtemp(prefix="clusterd-bench-"))
    procs = Procs(tmp)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        yield ctx, procs
    finally:
        procs.kill_all()
        ctx.destroy(linger=0)
        shutil.rmtree(tmp, ignore_errors=True)


def _machine() -> dict[str, Any]:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpus": cpus, "python": platform.python_version(), "platform": platform.platform(),
            "pyzmq": zmq.pyzmq_version(), "libzmq": zmq.zmq_version()}

