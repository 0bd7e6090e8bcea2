"""``clusterd bench``: measure clusterd against reference designs, side by side, in one run.

Absolute numbers drift on shared machines, so every figure that matters is a ratio between
systems measured in the same run, on the same client code and the same ~50-byte echo call:

- ``c_proxy``: a C-level ``zmq.proxy`` (ROUTER front, DEALER back) in its own process, in front
  of N plain pyzmq echo workers (orjson decode, build a JSON-RPC response, encode);
- ``handwritten``: a minimal hand-written Python master (a ``zmq.Poller`` loop, batch draining,
  orjson-parsing each request and response to track it, least-busy balancing) in front of the same
  echo workers;
- ``process_pool``: ``concurrent.futures.ProcessPoolExecutor(N)`` running an echo function;
- ``clusterd``: a throwaway ``clusterd run clusterd.bench.app:Master clusterd.bench.app:Worker``.

Client side: a DEALER sends single-part JSON-RPC requests and reads single-part replies.
"Sequential" is one call at a time; "pipelined" keeps ``window`` calls in flight from one client;
"multi-client" runs ``clients`` such client processes at once and adds their rates. All systems
are started first and measured in turn, ``rounds`` times: a burst of outside load then slows one
round of every system instead of all of one system. A pipelined rate is the best round's; the
latency percentiles pool every round's calls.

Result document (``run_bench()``, ``clusterd bench --json``); the keys are stable::

    {
      "version": 1,                      # of this document
      "quick": bool, "elapsed_s": float,
      "machine": {"cpus": int, "python": str, "platform": str, "pyzmq": str, "libzmq": str},
      "params": {"workers": int, "payload_bytes": int, "window": int, "clients": int,
                 "rounds": int, "seq_calls": int, "duration_s": float,   # per system, in all
                 "multi_duration_s": float, "burn_ms": float, "burn_calls": int,
                 "restart_repeats": int},
      "systems": {                       # one entry per system above
        "<system>": {"label": str,
                     "seq_p50_us": float, "seq_p99_us": float, "seq_mean_us": float,
                     "pipelined_calls_per_s": float,             # the best round's
                     "pipelined_rounds_calls_per_s": [float],    # every round's
                     "master_cpu_us_per_call": float | null,     # during the pipelined runs
                     "workers_cpu_us_per_call": float | null,    # all workers together
                     "multi_client_calls_per_s": float | null}   # process_pool: these 3 null
      },
      "cpu": {"burn_n": int, "burn_ms": float, "calls": int, "workers": int,
              "time_1_worker_s": float, "time_n_workers_s": float, "speedup": float},
      "restart": {"samples_ms": [float], "median_ms": float, "max_ms": float},
      "memory": {"master_rss_mb": float,        # idle, after the load
                 "master_rss_fresh_mb": float,  # idle, right after start-up
                 "worker_rss_mb": float},
      "targets": {                       # the goals of issue 6
        "<name>": {"label": str, "value": float, "op": ">=" | "<=", "target": float, "met": bool}
      },                                 # names: forwarded_vs_handwritten, forwarded_vs_c_proxy,
                                         # forwarded_vs_process_pool, seq_p50_vs_c_proxy,
                                         # speedup, restart_median_ms, master_rss_mb
      "all_met": bool
    }

"forwarded" is clusterd's single-client pipelined rate. MB are 10**6 bytes. ``cpu``: ``calls``
concurrent ``burn`` calls of ``burn_ms`` each on ``--workers 1`` versus ``--workers N`` (in
turn, best of a few runs). ``restart``: SIGKILL a ready worker, time until ``clusterd.status`` on
the control socket shows a new pid in its slot, ``ready``; one kill per slot, on an instance with
``restart_repeats`` workers (``--quick``: the N-worker one), since a slot that fails again within
seconds is restarted with backoff.

``progress`` gets a short line ("round 1/3: clusterd…") at each step. Every process the bench
starts runs in its own process group and is killed when the bench ends, whatever happens (and
when the bench itself is killed: the children ask Linux for a signal on their parent's death).
The reference processes load references.py by path, so they never import the clusterd core.

Layout: references.py (the reference systems and the client loops), procs.py (child processes),
systems.py (starting every system), measure.py (the measurements), report.py (targets and the
table), harness.py (``run_bench``), plan.py (durations and constants), app.py (the app clusterd
runs), chaos.py (``--chaos``). This package imports its parts lazily: a bench worker imports
only app.py.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {"run_bench": "harness", "format_table": "report", "targets": "report",
            "BenchError": "references", "Plan": "plan"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'clusterd.bench' has no attribute {name!r}")
    from importlib import import_module
    return getattr(import_module(f".{module}", __name__), name)
