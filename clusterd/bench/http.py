"""``clusterd bench --http``: clusterd's HTTP and WebSocket front door beside bare echo servers.

What a Python user would write instead of clusterd: a JSON-RPC echo server on the best stacks we
measured (httpdoor/bench_refs.py: httptools + picows on uvloop, and aiohttp's low-level server on
uvloop), in 1 and N processes sharing one listening socket. Against them, ``clusterd run`` of the
bench app (bench/app.py) with ``--http-bind`` and 1 and N workers, and its ZeroMQ door for the
ratio the issue asks. Every server is started first, then measured in interleaved rounds by the same
raw-socket load generator (bench_refs: requests built once, ``selectors``): in a round, each
measurement below is taken of every system in turn, so the two sides of a ratio are measured seconds
apart and a burst of outside load on this shared machine slows one round, not one system:

- sequential: one connection per system, one call at a time, the systems called in turn call by call
  in a shuffled order (so all are sampled under the same machine state, each after any other alike),
  the load generator and the servers on one CPU meanwhile (bench/side_by_side.py): p50/p99 latency (HTTP
  keep-alive and WebSocket);
- pipelined calls/s with 1, 8 and 64 connections: HTTP one request in flight per connection,
  WebSocket 8 in flight per connection;
- the master's CPU per call during clusterd's pipelined runs (it is not on this path: ~0).

A system's figure is the median over rounds; a target is the median over rounds of that round's
value (``rounds`` lists them, for the spread).

Result document (``run_http_bench()``; ``clusterd bench --http --json``)::

    {"version": 2, "quick": bool, "elapsed_s": float, "params": {...},
     "systems": {"<system>": {"label": str, "processes": int,
                              "http_seq_p50_us", "http_seq_p99_us", "ws_seq_p50_us", "ws_seq_p99_us",
                              "http_1_calls_per_s", "http_8_calls_per_s", "http_64_calls_per_s",
                              "ws_1x8_calls_per_s", "ws_8x8_calls_per_s", "ws_64x8_calls_per_s",
                              "master_cpu_us_per_call": float | null,
                              "zmq_seq_p50_us", "zmq_pipelined_calls_per_s"}},   # clusterd only
     "targets": {"<name>": {"label", "value", "op", "target", "met", "rounds": [float]}}, "all_met": bool,
     "context": {"bare_ws_8x8_scaling": float}}   # the bare echo's N / 1 processes, for the scaling goal

Systems: ``clusterd_1``/``clusterd_N`` (workers), ``door_1``/``door_N`` and ``aiohttp_N`` (bare).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psutil

from ..httpdoor import bench_refs
from ..httpdoor.bench_load import (
    BODY,
    count_http,
    count_ws,
    drive,
    http_connect,
    http_request,
    percentile,
    ws_connect,
    ws_frame,
)
from ..httpdoor.bench_refs import ServerGroup
from .procs import free_port
from .side_by_side import one_cpu, side_by_side

RESULT_VERSION = 2
START_TIMEOUT_S = 30.0
CONNECTIONS = (1, 8, 64)
WS_IN_FLIGHT = 8
ZMQ_WINDOW = 64
WARMUP_S = 0.15  # of each pipelined run, on fresh connections: not counted

Progress = Callable[[str], None]


class HttpBenchError(RuntimeError):
    """A server did not start or a measurement failed."""


# ---------------------------------------------------------------------------- servers
class _Clusterd:
    """A throwaway ``clusterd run`` of the bench app with --http-bind and a ZeroMQ --bind."""

    def __init__(self, workers: int, runtime: Path) -> None:
        self.workers = workers
        self.runtime = runtime
        self.port = free_port()
        self.zmq_addr = f"tcp://127.0.0.1:{free_port()}"
        self.name = f"bench-http-{os.getpid()}-{workers}"
        env = dict(os.environ, CLUSTERD_RUNTIME_DIR=str(runtime))
        for key in [k for k in env if k.startswith("CLUSTERD_") and k != "CLUSTERD_RUNTIME_DIR"]:
            del env[key]
        root = str(Path(__file__).resolve().parent.parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clusterd", "run", "clusterd.bench.app:Master", "clusterd.bench.app:Worker",
             "--workers", str(workers), "--name", self.name, "--http-bind", f"127.0.0.1:{self.port}",
             "--bind", self.zmq_addr, "--graceful-timeout", "2"],
            env=env, stdout=subprocess.DEVNULL, stderr=self.log, start_new_session=True)
        self._wait_ready()
        self.master = psutil.Process(self.proc.pid)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HttpBenchError(f"clusterd exited with status {self.proc.returncode}: {self._log_tail()}")
            if self._ready_workers() >= self.workers:
                return
            time.sleep(0.1)
        raise HttpBenchError(f"clusterd --workers {self.workers} not ready within {START_TIMEOUT_S:g} s: "
                             f"{self._log_tail()}")

    def _ready_workers(self) -> int:
        """Ready workers as the status document says (0 until the control socket answers)."""
        import zmq
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(f"ipc://{self.runtime / self.name / 'control.sock'}")
            sock.send(b'{"jsonrpc":"2.0","method":"clusterd.status","id":1}')
            if not sock.poll(500):
                return 0
            doc = orjson.loads(sock.recv()).get("result") or {}
        finally:
            sock.close(0)
        if not doc.get("ready"):
            return 0
        return sum(1 for w in doc.get("workers", []) if w.get("state") == "ready")

    def _log_tail(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-1500:]

    def worker_pids(self) -> list[int]:
        """The workers' pids now (the processes serving the door)."""
        out = []
        for proc in self.master.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if " worker " in " ".join(proc.cmdline()):
                    out.append(proc.pid)
        return out

    def master_cpu_s(self) -> float:
        times = self.master.cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()


# ---------------------------------------------------------------------------- measuring
Step = Callable[[int, "str | None"], dict[str, Any]]


def _steps(duration: float, seq_calls: int) -> dict[str, tuple[Step, bool]]:
    """The measurements of a round taken one system at a time, by name: what each does given a
    system's port and ZeroMQ address, and whether its calls count for the master's CPU per call."""
    warmup = WARMUP_S

    def http_rate(n: int) -> Step:
        def step(port: int, _zmq: str | None) -> dict[str, Any]:
            rate = drive([http_connect(port) for _ in range(n)], http_request(port), 1, count_http, duration, warmup)
            return {f"http_{n}_calls_per_s": rate}
        return step

    def ws_rate(n: int) -> Step:
        def step(port: int, _zmq: str | None) -> dict[str, Any]:
            rate = drive([ws_connect(port) for _ in range(n)], ws_frame(BODY), WS_IN_FLIGHT, count_ws, duration,
                         warmup)
            return {f"ws_{n}x{WS_IN_FLIGHT}_calls_per_s": rate}
        return step

    def zmq(_port: int, addr: str | None) -> dict[str, Any]:
        return _measure_zmq(addr, duration, seq_calls) if addr is not None else {}

    steps: dict[str, tuple[Step, bool]] = {f"http_{n}": (http_rate(n), True) for n in CONNECTIONS}
    steps.update({f"ws_{n}x{WS_IN_FLIGHT}": (ws_rate(n), True) for n in CONNECTIONS})
    steps["zmq"] = (zmq, False)
    return steps


def _measure_round(servers: dict[str, tuple], steps: dict[str, tuple[Step, bool]], duration: float,
                   seq_calls: int, turn: int, say: Progress, where: str) -> dict[str, dict[str, Any]]:
    """One round: the sequential latencies of every system side by side, then each other
    measurement of every system in turn, so that a ratio compares figures taken seconds apart (the
    first system changes from round to round)."""
    keys = list(servers)
    keys = keys[turn % len(keys):] + keys[:turn % len(keys)]
    figures: dict[str, dict[str, Any]] = {key: {} for key in keys}
    ports = {key: servers[key][2] for key in keys}
    for kind, connect, message, count in (("http", http_connect, http_request, count_http),
                                          ("ws", ws_connect, lambda _port: ws_frame(BODY), count_ws)):
        say(f"{where}: {kind}_seq")
        with one_cpu([pid for key in keys for pid in servers[key][5]()]):
            latencies = side_by_side(ports, connect, message, count, seq_calls)
        for key, samples in latencies.items():
            figures[key][f"{kind}_seq_p50_us"] = percentile(samples, 0.5)
            figures[key][f"{kind}_seq_p99_us"] = percentile(samples, 0.99)
    cpu_s = dict.fromkeys(keys, 0.0)
    calls = dict.fromkeys(keys, 0.0)
    for name, (step, pipelined) in steps.items():
        say(f"{where}: {name}")
        for key in keys:
            _label, _processes, port, cpu, zmq_addr, _pids = servers[key]
            before = cpu() if cpu is not None and pipelined else 0.0
            out = step(port, zmq_addr)
            if cpu is not None and pipelined:
                cpu_s[key] += cpu() - before
                calls[key] += sum(out.values()) * duration
            figures[key].update(out)
    for key in keys:
        if servers[key][3] is not None:
            # warm-up calls are not counted: the figure errs high, never low
            figures[key]["master_cpu_us_per_call"] = cpu_s[key] * 1e6 / max(calls[key], 1.0)
    return figures


def _measure_zmq(addr: str, duration: float, seq_calls: int) -> dict[str, Any]:
    """clusterd's ZeroMQ door, for the ratios: one DEALER, sequential p50 and ZMQ_WINDOW in flight."""
    import zmq
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(addr)
    try:
        requests = [orjson.dumps({"jsonrpc": "2.0", "method": "echo", "params": ["x" * 16], "id": i})
                    for i in range(ZMQ_WINDOW)]
        clock = time.perf_counter_ns
        samples = []
        for _ in range(seq_calls):
            t0 = clock()
            sock.send(requests[0])
            sock.recv()
            samples.append((clock() - t0) / 1000)
        for raw in requests:
            sock.send(raw)
        done = 0
        t0 = time.perf_counter()
        deadline = t0 + duration
        while True:
            reply = orjson.loads(sock.recv())
            done += 1
            if done & 63 == 0 and time.perf_counter() >= deadline:
                break
            sock.send(requests[reply["id"]])
        elapsed = time.perf_counter() - t0
        for _ in range(ZMQ_WINDOW - 1):
            sock.recv()
        return {"zmq_seq_p50_us": percentile(samples, 0.5), "zmq_pipelined_calls_per_s": done / elapsed}
    finally:
        sock.close(0)


# ---------------------------------------------------------------------------- the run
def run_http_bench(*, quick: bool = False, workers: int = 2, rounds: int | None = None,
                   progress: Progress | None = None) -> dict[str, Any]:
    """Measure every system in ``rounds`` interleaved rounds; the result document of the module docstring."""
    say = progress or (lambda _m: None)
    started = time.monotonic()
    duration = 0.3 if quick else 0.6
    rounds = rounds or (1 if quick else 5)
    seq_calls = 300 if quick else 1000
    n = max(2, workers)
    steps = _steps(duration, seq_calls)
    per_round: list[dict[str, dict[str, Any]]] = []
    with _servers(n, quick, say) as servers:
        for _label, _processes, port, _cpu, _zmq, _pids in servers.values():  # first calls, imports, allocator
            drive([ws_connect(port) for _ in range(8)], ws_frame(BODY), WS_IN_FLIGHT, count_ws, WARMUP_S, 0.0)
            drive([http_connect(port) for _ in range(8)], http_request(port), 1, count_http, WARMUP_S, 0.0)
        for r in range(rounds):
            per_round.append(_measure_round(servers, steps, duration, seq_calls, r, say,
                                            f"HTTP bench round {r + 1}/{rounds}"))
        systems: dict[str, dict[str, Any]] = {}
        for key, (label, processes, *_rest) in servers.items():
            merged: dict[str, Any] = {"label": label, "processes": processes}
            for figure in per_round[0][key]:
                merged[figure] = statistics.median(r[key][figure] for r in per_round)
            merged.setdefault("master_cpu_us_per_call", None)  # a bare server has no master
            systems[key] = merged
    # each target is the median of its per-round values: a ratio of figures taken seconds apart
    round_targets = [_targets(r, n) for r in per_round]
    targets = {}
    for name, first in round_targets[0].items():
        values = [t[name]["value"] for t in round_targets]
        value = statistics.median(values)
        met = value >= first["target"] if first["op"] == ">=" else value <= first["target"]
        targets[name] = dict(first, value=round(value, 3), met=met, rounds=[round(v, 3) for v in values])
    ws = f"ws_8x{WS_IN_FLIGHT}_calls_per_s"
    # what the machine allows: the same ratio for the bare echo (the load generator takes a core too)
    context = {"bare_ws_8x8_scaling": statistics.median(r[f"door_{n}"][ws] / r["door_1"][ws] for r in per_round)}
    return {"version": RESULT_VERSION, "quick": quick, "elapsed_s": round(time.monotonic() - started, 1),
            "params": {"workers": n, "duration_s": duration, "rounds": rounds, "seq_calls": seq_calls,
                       "connections": list(CONNECTIONS), "ws_in_flight": WS_IN_FLIGHT, "zmq_window": ZMQ_WINDOW,
                       "payload_bytes": len(BODY), "cpus": os.cpu_count()},
            "systems": systems, "targets": targets, "context": context,
            "all_met": all(t["met"] for t in targets.values())}


@contextlib.contextmanager
def _servers(n: int, quick: bool, say: Progress) -> Iterator[dict[str, tuple]]:
    """Every server of the run, started before any is measured; all stopped at the end, whatever happens."""
    runtime = Path(tempfile.mkdtemp(prefix="cdb-"))
    os.chmod(runtime, 0o700)
    groups: list[ServerGroup] = []
    instances: list[_Clusterd] = []
    uvloop = "door-uvloop" in bench_refs.available_stacks()
    door = "door-uvloop" if uvloop else "door"
    try:
        out: dict[str, tuple] = {}
        for workers in (1, n):
            say(f"starting clusterd --workers {workers} --http-bind")
            inst = _Clusterd(workers, runtime)
            instances.append(inst)
            out[f"clusterd_{workers}"] = (f"clusterd --http-bind, {workers} worker(s)", workers, inst.port,
                                          inst.master_cpu_s, inst.zmq_addr, inst.worker_pids)
        stacks = [(door, 1), (door, n)]
        aiohttp = "aiohttp-uvloop" if uvloop else "aiohttp"
        if not quick and aiohttp in bench_refs.available_stacks():
            stacks.append((aiohttp, n))
        for stack, processes in stacks:
            say(f"starting bare {stack} echo, {processes} process(es)")
            group = ServerGroup(stack, processes)
            groups.append(group)
            key = f"{stack.removesuffix('-uvloop')}_{processes}"
            out[key] = (f"bare echo, {processes} process(es): {bench_refs.STACKS[stack][0]}", processes,
                        group.port, None, None,
                        lambda group=group: [child.pid for child in group.children])
        yield out
    finally:
        for inst in instances:
            inst.stop()
        for group in groups:
            group.stop()
        shutil.rmtree(runtime, ignore_errors=True)


def _targets(systems: dict[str, dict[str, Any]], n: int) -> dict[str, dict[str, Any]]:
    """The goals of issue 15, from figures of this run."""
    ours, one, bare = systems[f"clusterd_{n}"], systems["clusterd_1"], systems[f"door_{n}"]
    ws = f"ws_8x{WS_IN_FLIGHT}_calls_per_s"

    def target(label: str, value: float, op: str, goal: float) -> dict[str, Any]:
        met = value >= goal if op == ">=" else value <= goal
        return {"label": label, "value": round(value, 3), "op": op, "target": goal, "met": met}

    return {
        "http_64_vs_bare": target("HTTP 64 conns: clusterd / bare echo", ours["http_64_calls_per_s"]
                                  / bare["http_64_calls_per_s"], ">=", 0.95),
        "ws_8x8_vs_bare": target("WS 8x8: clusterd / bare echo", ours[ws] / bare[ws], ">=", 0.9),
        "ws_8x8_vs_zmq": target("WS 8x8: clusterd WS / clusterd ZeroMQ door", ours[ws]
                                / ours["zmq_pipelined_calls_per_s"], ">=", 1.5),
        "ws_seq_p50_vs_bare": target("WS sequential p50: clusterd / bare echo", ours["ws_seq_p50_us"]
                                     / bare["ws_seq_p50_us"], "<=", 1.15),
        "ws_seq_p50_vs_zmq": target("WS sequential p50: clusterd WS / ZeroMQ door", ours["ws_seq_p50_us"]
                                    / ours["zmq_seq_p50_us"], "<=", 0.5),
        "ws_scaling": target(f"WS 8x8: {n} workers / 1 worker", ours[ws] / one[ws], ">=", 1.6),
        "master_cpu_us_per_call": target("master CPU per HTTP/WS call (µs)", max(
            ours["master_cpu_us_per_call"], one["master_cpu_us_per_call"]), "<=", 1.0),
    }


def format_http_table(result: dict[str, Any]) -> str:
    params = result["params"]
    lines = [f"HTTP and WebSocket front door ({params['workers']} workers, {params['cpus']} CPUs, medians of "
             f"{params['rounds']} interleaved rounds, {result['elapsed_s']:.0f} s)", "",
             "| system | HTTP seq p50/p99 µs | HTTP 1 / 8 / 64 conns calls/s | WS seq p50/p99 µs | "
             "WS 1 / 8 / 64 conns x 8 calls/s | master µs/call |", "|---|---|---|---|---|---|"]
    for figures in result["systems"].values():
        cpu = figures.get("master_cpu_us_per_call")
        lines.append(
            f"| {figures['label']} | {figures['http_seq_p50_us']:.0f} / {figures['http_seq_p99_us']:.0f} | "
            + " / ".join(f"{figures[f'http_{c}_calls_per_s']:,.0f}" for c in CONNECTIONS)
            + f" | {figures['ws_seq_p50_us']:.0f} / {figures['ws_seq_p99_us']:.0f} | "
            + " / ".join(f"{figures[f'ws_{c}x{WS_IN_FLIGHT}_calls_per_s']:,.0f}" for c in CONNECTIONS)
            + f" | {'-' if cpu is None else f'{cpu:.2f}'} |")
    zmq_rows = [f for f in result["systems"].values() if "zmq_pipelined_calls_per_s" in f]
    if zmq_rows:
        lines.append("")
        for figures in zmq_rows:
            lines.append(f"{figures['label']}: ZeroMQ door seq p50 {figures['zmq_seq_p50_us']:.0f} µs, "
                         f"{ZMQ_WINDOW} in flight {figures['zmq_pipelined_calls_per_s']:,.0f} calls/s")
    lines += ["", "| target | value (median) | rounds min-max | goal | met |", "|---|---|---|---|---|"]
    for t in result["targets"].values():
        spread = t.get("rounds") or [t["value"]]
        lines.append(f"| {t['label']} | {t['value']:.2f} | {min(spread):.2f}-{max(spread):.2f} | "
                     f"{t['op']} {t['target']:g} | {'yes' if t['met'] else 'no'} |")
    lines += ["", f"(for comparison, the bare echo's own WS 8x8 scaling, {result['params']['workers']} processes / 1: "
              f"{result['context']['bare_ws_8x8_scaling']:.2f}; the load generator shares the machine)"]
    return "\n".join(lines)


__all__ = ["HttpBenchError", "run_http_bench", "format_http_table"]
