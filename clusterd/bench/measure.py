"""The measurements: interleaved rounds of every system, multi-client rates, speedup, restarts.

Every system is started first, then measured in interleaved rounds, so that a burst of outside
load slows one round of each system rather than one system.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import json
import math
import multiprocessing
import os
import signal
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil
import zmq

from ..control import ControlClient
from .plan import START_TIMEOUT_S, SYSTEM_LABELS, Plan, Progress
from .procs import Procs, log_tail
from .references import (
    PAYLOAD,
    REPLY_TIMEOUT_S,
    BenchError,
    client_socket,
    encode_call,
    pipelined,
    recv_reply,
    reply_id,
    sequential_us,
)
from .systems import Instance, Service, slot_worker, status_of


@dataclass
class _Tally:
    """What the rounds measured of one system."""

    seq_us: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    calls: int = 0
    master_cpu_s: float = 0.0
    workers_cpu_s: float = 0.0

    def figures(self, system: str, cpu_known: bool) -> dict[str, Any]:
        times = sorted(self.seq_us)

        def per_call(cpu_s: float) -> float | None:
            return round(cpu_s * 1e6 / self.calls, 1) if cpu_known else None

        return {"label": SYSTEM_LABELS[system],
                "seq_p50_us": round(_percentile(times, 0.50), 1),
                "seq_p99_us": round(_percentile(times, 0.99), 1),
                "seq_mean_us": round(statistics.fmean(times), 1),
                # The best round: load from outside the bench only ever slows a round down.
                "pipelined_calls_per_s": round(max(self.rates)),
                "pipelined_rounds_calls_per_s": [round(rate) for rate in self.rates],
                "master_cpu_us_per_call": per_call(self.master_cpu_s),
                "workers_cpu_us_per_call": per_call(self.workers_cpu_s),
                "multi_client_calls_per_s": None}


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


class _CpuMeter:
    """CPU time (user + system) that some processes spend from now on.

    CPU time per call depends less than a rate on how the cores are shared meanwhile.
    """

    def __init__(self, pids: Sequence[int]) -> None:
        self._procs = [psutil.Process(pid) for pid in pids]
        self._start = self._total()

    def _total(self) -> float:
        return sum(t.user + t.system for t in (p.cpu_times() for p in self._procs))

    def spent_s(self) -> float:
        return self._total() - self._start


def _zmq_round(sock: zmq.Socket[bytes], service: Service, plan: Plan, tally: _Tally) -> None:
    tally.seq_us += sequential_us(sock, plan.seq_calls)
    master, workers = _CpuMeter([service.master_pid]), _CpuMeter(service.worker_pids)
    calls, elapsed = pipelined(sock, plan.window, plan.duration_s)
    tally.master_cpu_s += master.spent_s()
    tally.workers_cpu_s += workers.spent_s()
    tally.calls += calls
    tally.rates.append(calls / elapsed)


def _pool_echo(x: Any) -> Any:
    return x


def _pool_round(pool: concurrent.futures.ProcessPoolExecutor, plan: Plan, tally: _Tally) -> None:
    clock = time.perf_counter_ns
    for _ in range(plan.seq_calls):
        t0 = clock()
        pool.submit(_pool_echo, PAYLOAD).result()
        tally.seq_us.append((clock() - t0) / 1000)
    calls, elapsed = _pool_pipelined(pool, plan.window, plan.duration_s)
    tally.calls += calls
    tally.rates.append(calls / elapsed)


def _pool_pipelined(pool: concurrent.futures.ProcessPoolExecutor, window: int,
                    duration_s: float) -> tuple[int, float]:
    """Keep ``window`` futures in flight; waits on the oldest, as the pool answers in order."""
    in_flight = collections.deque(pool.submit(_pool_echo, PAYLOAD) for _ in range(window))
    done = 0
    clock = time.perf_counter
    t0 = clock()
    deadline = t0 + duration_s
    while True:
        in_flight.popleft().result()
        done += 1
        if done & 63 == 0 and clock() >= deadline:
            break
        in_flight.append(pool.submit(_pool_echo, PAYLOAD))
    elapsed = clock() - t0
    for fut in in_flight:
        fut.result()
    return done, elapsed


def measure_rounds(ctx: zmq.Context[zmq.Socket[bytes]], procs: Procs,
                    services: dict[str, Service], plan: Plan,
                    report: Progress) -> dict[str, dict[str, Any]]:
    """Sequential and pipelined figures of every system, then the multi-client rates."""
    tallies = {system: _Tally() for system in SYSTEM_LABELS}
    # Spawned, not forked: the bench process holds ZeroMQ contexts and their threads.
    spawn = multiprocessing.get_context("spawn")
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(
            concurrent.futures.ProcessPoolExecutor(plan.workers, mp_context=spawn))
        socks: dict[str, zmq.Socket[bytes]] = {}
        report("warming up…")
        for system, service in services.items():
            socks[system] = client_socket(ctx, service.addr)
            stack.callback(socks[system].close, 0)
            pipelined(socks[system], plan.window, plan.warmup_s)
        _pool_pipelined(pool, plan.window, plan.warmup_s)
        for round_no in range(1, plan.rounds + 1):
            for system, tally in tallies.items():
                report(f"round {round_no}/{plan.rounds}: {SYSTEM_LABELS[system]}…")
                if system == "process_pool":
                    _pool_round(pool, plan, tally)
                else:
                    _zmq_round(socks[system], services[system], plan, tally)
    figures = {system: tally.figures(system, cpu_known=system in services)
               for system, tally in tallies.items()}
    for system, service in services.items():
        report(f"{SYSTEM_LABELS[system]}: {plan.clients} clients at once…")
        figures[system]["multi_client_calls_per_s"] = _multi_client(procs, service.addr, plan,
                                                                    system)
    return figures


def _multi_client(procs: Procs, addr: str, plan: Plan, system: str) -> float:
    """The summed rate of ``plan.clients`` client processes, pipelining at the same time."""
    with procs.scope():
        clients = [procs.spawn_ref("client", addr, str(plan.window), str(plan.multi_duration_s),
                                   str(plan.warmup_s), what=f"{system} client {i}", stdin=True)
                   for i in range(plan.clients)]
        for _, reader in clients:
            if reader.readline(START_TIMEOUT_S) != "ready":
                raise BenchError(f"{system}: a client process did not get ready")
        for proc, _ in clients:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        rate = 0.0
        for _, reader in clients:
            done = json.loads(reader.readline(plan.multi_duration_s + 30))
            rate += done["calls"] / done["elapsed_s"]
    return round(rate)


def _calibrate_burn(burn_ms: float) -> tuple[int, float]:
    """The ``n`` for which ``burn(n)`` takes about ``burn_ms`` here, and its measured time."""
    from .app import burn

    n, goal_s = 200_000, burn_ms / 1000
    took = min(_timed(burn, n) for _ in range(2))
    for _ in range(3):  # a probe slowed by outside load gives too small an n: check, rescale
        if abs(took - goal_s) < 0.1 * goal_s:
            break
        n = max(1000, int(n * goal_s / took))
        took = min(_timed(burn, n) for _ in range(2))
    return n, round(took * 1000, 1)


def _timed(fn: Callable[[int], object], arg: int) -> float:
    t0 = time.perf_counter()
    fn(arg)
    return time.perf_counter() - t0


def _burn_time(ctx: zmq.Context[zmq.Socket[bytes]], instance: Instance, n: int,
               calls: int) -> float:
    """Seconds for ``calls`` concurrent ``burn(n)`` calls to all come back."""
    sock = client_socket(ctx, instance.addr)
    try:
        t0 = time.perf_counter()
        for i in range(calls):
            sock.send(encode_call(i, "burn", (n,)))
        for _ in range(calls):
            reply_id(recv_reply(sock))
        return time.perf_counter() - t0
    finally:
        sock.close(0)


def _restart_ms(instance: Instance, slot: int) -> float:
    """SIGKILL the worker in ``slot``; ms until status shows a new pid there, ready."""
    with ControlClient(instance.control, REPLY_TIMEOUT_S) as conn:
        old = slot_worker(status_of(instance, conn), slot)
        if old is None:
            raise BenchError(f"clusterd: slot {slot} has no ready worker")
        t0 = time.perf_counter()
        os.kill(old["pid"], signal.SIGKILL)
        deadline = t0 + START_TIMEOUT_S
        while time.perf_counter() < deadline:
            new = slot_worker(status_of(instance, conn), slot)
            if new is not None and new["pid"] != old["pid"]:
                return (time.perf_counter() - t0) * 1000
            time.sleep(0.002)
    raise BenchError(f"clusterd: slot {slot} not serving again within {START_TIMEOUT_S:g} s"
                     f"{log_tail(instance.log)}")


def measure_speedup(ctx: zmq.Context[zmq.Socket[bytes]], many: Instance, single: Instance,
                     plan: Plan) -> dict[str, Any]:
    """``plan.burn_calls`` concurrent burn calls on N workers, then on 1, in turn; best of each."""
    burn_n, burn_ms = _calibrate_burn(plan.burn_ms)
    for instance, workers in ((many, plan.workers), (single, 1)):
        warm_until = time.monotonic() + plan.burn_warmup_s
        while time.monotonic() < warm_until:
            _burn_time(ctx, instance, burn_n, workers)
    times_n, times_1 = [], []
    for _ in range(plan.burn_repeats):
        times_n.append(_burn_time(ctx, many, burn_n, plan.burn_calls))
        times_1.append(_burn_time(ctx, single, burn_n, plan.burn_calls))
    time_n, time_1 = min(times_n), min(times_1)
    return {"burn_n": burn_n, "burn_ms": burn_ms, "calls": plan.burn_calls,
            "workers": plan.workers, "time_1_worker_s": round(time_1, 3),
            "time_n_workers_s": round(time_n, 3), "speedup": round(time_1 / time_n, 2)}


def measure_restarts(instance: Instance, plan: Plan,
                      report: Progress) -> dict[str, Any]:
    """Kill the worker of slots 0, 1, ... once each; see _restart_ms.

    One kill per slot: a slot that fails again within seconds is restarted with backoff
    (crash-loop protection), which is not what this figure is about.
    """
    samples = []
    for slot in range(plan.restart_repeats):
        report(f"worker restart {slot + 1}/{plan.restart_repeats}…")
        time.sleep(plan.restart_gap_s)
        samples.append(round(_restart_ms(instance, slot), 1))
    return {"samples_ms": samples, "median_ms": round(statistics.median(samples), 1),
            "max_ms": max(samples)}

