"""``clusterd bench``: measure clusterd against reference designs, side by side, in one run.

Absolute numbers drift on shared machines, so every figure that matters is a ratio between
systems measured in the same run, on the same client code and the same ~50-byte echo call:

- ``c_proxy``: a C-level ``zmq.proxy`` (ROUTER front, DEALER back) in its own process, in front
  of N plain pyzmq echo workers (orjson decode, build a JSON-RPC response, encode);
- ``handwritten``: a minimal hand-written Python master (a ``zmq.Poller`` loop, batch draining,
  orjson-parsing each request and response to track it, least-busy balancing) in front of the same
  echo workers;
- ``process_pool``: ``concurrent.futures.ProcessPoolExecutor(N)`` running an echo function;
- ``clusterd``: a throwaway ``clusterd run clusterd.bench_app:Master clusterd.bench_app:Worker``.

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
The reference processes load this file by path, so they never import the clusterd core; this
module must therefore import nothing from ``clusterd`` at module level.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import json
import math
import multiprocessing
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
import zmq

Progress = Callable[[str], None]

RESULT_VERSION = 1
PAYLOAD = "x" * 50
WINDOW = 128
CLIENTS = 3
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 2.0  # for a throwaway instance to stop on SIGTERM, before SIGKILL
CHILD_MODULE = "_clusterd_bench_child"

SYSTEM_LABELS = {
    "c_proxy": "C zmq.proxy",
    "handwritten": "hand-written master",
    "process_pool": "ProcessPoolExecutor",
    "clusterd": "clusterd",
}


class BenchError(RuntimeError):
    """A measurement could not be made (a process did not start, a call failed)."""


@dataclass(frozen=True)
class Plan:
    """How long each measurement runs."""

    quick: bool
    workers: int
    rounds: int             # of the sequential + pipelined measurements, interleaved
    seq_calls: int          # per round
    duration_s: float       # of a pipelined run, per round
    multi_duration_s: float
    warmup_s: float
    burn_ms: float
    burn_calls: int
    burn_repeats: int
    burn_warmup_s: float
    restart_repeats: int
    restart_gap_s: float
    window: int = WINDOW
    clients: int = CLIENTS

    @classmethod
    def make(cls, *, quick: bool, workers: int) -> Plan:
        if quick:
            return cls(quick=True, workers=workers, rounds=1, seq_calls=300, duration_s=0.4,
                       multi_duration_s=0.4, warmup_s=0.1, burn_ms=25.0,
                       burn_calls=2 * workers, burn_repeats=2, burn_warmup_s=0.2,
                       restart_repeats=2, restart_gap_s=0.2)
        return cls(quick=False, workers=workers, rounds=3, seq_calls=1000, duration_s=1.0,
                   multi_duration_s=3.0, warmup_s=0.5, burn_ms=50.0, burn_calls=8 * workers,
                   burn_repeats=3, burn_warmup_s=0.5, restart_repeats=7, restart_gap_s=0.5)

    def as_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, "payload_bytes": len(PAYLOAD), "window": self.window,
                "clients": self.clients, "rounds": self.rounds,
                "seq_calls": self.seq_calls * self.rounds,
                "duration_s": self.duration_s * self.rounds,
                "multi_duration_s": self.multi_duration_s, "burn_ms": self.burn_ms,
                "burn_calls": self.burn_calls, "restart_repeats": self.restart_repeats}


# --------------------------------------------------------------------------------------------
# JSON-RPC client helpers (run in the bench process and in client processes)


def _request(call_id: int, method: str = "echo", params: Sequence[Any] = (PAYLOAD,)) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": call_id, "method": method,
                         "params": list(params)})


def _reply_id(raw: bytes) -> Any:
    reply = orjson.loads(raw)
    if "result" not in reply:
        raise BenchError(f"call failed: {reply.get('error')!r}")
    return reply["id"]


REPLY_TIMEOUT_S = 10.0


def _dealer(ctx: zmq.Context[zmq.Socket[bytes]], addr: str) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    # A blocking recv with a timeout costs the client less than a poll before each recv.
    sock.setsockopt(zmq.RCVTIMEO, int(REPLY_TIMEOUT_S * 1000))
    sock.connect(addr)
    return sock


def _recv(sock: zmq.Socket[bytes]) -> bytes:
    try:
        return sock.recv()
    except zmq.Again:
        raise BenchError(f"no reply within {REPLY_TIMEOUT_S:g} s") from None


def _call(sock: zmq.Socket[bytes], method: str, params: Sequence[Any] | None = None) -> Any:
    """One call on a socket with nothing else in flight; returns the result."""
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
    if params is not None:
        msg["params"] = list(params)
    sock.send(orjson.dumps(msg))
    reply = orjson.loads(_recv(sock))
    if "result" not in reply:
        raise BenchError(f"{method} failed: {reply.get('error')!r}")
    return reply["result"]


def _sequential_us(sock: zmq.Socket[bytes], calls: int) -> list[float]:
    """Round-trip times in µs of ``calls`` echo calls made one at a time."""
    request = _request(0)
    times: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(calls):
        t0 = clock()
        sock.send(request)
        raw = _recv(sock)
        times.append((clock() - t0) / 1000)
        _reply_id(raw)
    return times


def _pipelined(sock: zmq.Socket[bytes], window: int, duration_s: float) -> tuple[int, float]:
    """Keep ``window`` echo calls in flight for ``duration_s``; returns (calls, seconds).

    Requests are encoded once; the id of a reply says which one to send again, so the client
    spends its time on the socket, not on JSON.
    """
    requests = [_request(i) for i in range(window)]
    for raw in requests:
        sock.send(raw)
    done = 0
    clock = time.perf_counter
    t0 = clock()
    deadline = t0 + duration_s
    elapsed = 0.0
    while True:
        call_id = _reply_id(_recv(sock))
        done += 1
        if done & 63 == 0:
            now = clock()
            if now >= deadline:
                elapsed = now - t0
                break
        sock.send(requests[call_id])
    for _ in range(window - 1):  # collect what is still in flight: the socket stays clean
        _reply_id(_recv(sock))
    return done, elapsed


# --------------------------------------------------------------------------------------------
# Reference processes. They run this file loaded by path (see _spawn_ref): no clusterd import.


def _echo_worker(addr: str, hello: bool) -> None:
    """A plain pyzmq worker: DEALER, echoes JSON-RPC calls as clusterd's workers answer them."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(addr)
    if hello:
        sock.send(b"READY")
    print("ready", flush=True)
    loads, dumps = orjson.loads, orjson.dumps
    while True:
        frames = sock.recv_multipart()
        req = loads(frames[-1])
        frames[-1] = dumps({"jsonrpc": "2.0", "id": req["id"], "result": req["params"][0]})
        sock.send_multipart(frames)


def _c_proxy(front: str, back: str) -> None:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(front)
    dealer = ctx.socket(zmq.DEALER)
    dealer.bind(back)
    print("ready", flush=True)
    zmq.proxy(router, dealer)


def _handwritten_master(front: str, back: str, workers: int) -> None:
    """The least a Python master does: track every call by its id, balance, forward unchanged."""
    ctx = zmq.Context()
    clients = ctx.socket(zmq.ROUTER)
    clients.bind(front)
    backend = ctx.socket(zmq.ROUTER)
    backend.bind(back)
    poller = zmq.Poller()
    poller.register(clients, zmq.POLLIN)
    poller.register(backend, zmq.POLLIN)
    ready: list[bytes] = []
    inflight: dict[bytes, int] = {}
    pending: dict[tuple[bytes, Any], bytes] = {}
    backlog: collections.deque[list[bytes]] = collections.deque()
    next_rr = 0
    loads = orjson.loads
    noblock = zmq.NOBLOCK

    def pick() -> bytes:
        nonlocal next_rr
        n = len(ready)
        best = ready[next_rr % n]
        for k in range(1, n):
            cand = ready[(next_rr + k) % n]
            if inflight[cand] < inflight[best]:
                best = cand
        next_rr = ready.index(best) + 1
        return best

    def forward(frames: list[bytes]) -> None:
        client, body = frames[0], frames[-1]
        wid = pick()
        inflight[wid] += 1
        pending[(client, loads(body)["id"])] = wid
        backend.send_multipart([wid, client, body])

    while True:
        events = dict(poller.poll())
        if backend in events:
            for _ in range(1000):
                try:
                    frames = backend.recv_multipart(noblock)
                except zmq.Again:
                    break
                if len(frames) == 2 and frames[1] == b"READY":
                    ready.append(frames[0])
                    inflight[frames[0]] = 0
                    if len(ready) == workers:
                        print("ready", flush=True)
                        while backlog:
                            forward(backlog.popleft())
                    continue
                _, client, body = frames
                wid = pending.pop((client, loads(body)["id"]), None)
                if wid is not None:
                    inflight[wid] -= 1
                clients.send_multipart([client, body])
        if clients in events:
            for _ in range(1000):
                try:
                    frames = clients.recv_multipart(noblock)
                except zmq.Again:
                    break
                if ready:
                    forward(frames)
                else:
                    backlog.append(frames)


def _client_process(addr: str, window: int, duration_s: float, warmup_s: float) -> None:
    """One of the multi-client processes: warm up, say ready, wait for "go", run, report."""
    ctx = zmq.Context()
    sock = _dealer(ctx, addr)
    _pipelined(sock, window, warmup_s)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    calls, elapsed = _pipelined(sock, window, duration_s)
    print(json.dumps({"calls": calls, "elapsed_s": elapsed}), flush=True)


def _child_main(argv: list[str]) -> None:
    role, args = argv[0], argv[1:]
    if role == "echo-worker":
        _echo_worker(args[0], hello=args[1] == "hello")
    elif role == "c-proxy":
        _c_proxy(args[0], args[1])
    elif role == "handwritten":
        _handwritten_master(args[0], args[1], int(args[2]))
    elif role == "client":
        _client_process(args[0], int(args[1]), float(args[2]), float(args[3]))
    else:
        raise SystemExit(f"unknown bench role {role!r}")


# Every child dies with the bench, even when the bench is SIGKILLed (a harness timeout): Linux
# sends it a signal when its parent dies. argv: [-c, parent pid, signal number, ...].
_GUARD = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None).prctl(1, int(sys.argv[2]), 0, 0, 0)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)\n"
    "del sys.argv[1:3]\n"
)

# A reference process: this file loaded by path, so that no clusterd code is imported.
_REFERENCE = _GUARD + (
    "import importlib.util\n"
    f"spec = importlib.util.spec_from_file_location({CHILD_MODULE!r}, sys.argv[1])\n"
    "mod = importlib.util.module_from_spec(spec)\n"
    f"sys.modules[{CHILD_MODULE!r}] = mod\n"
    "spec.loader.exec_module(mod)\n"
    "mod._child_main(sys.argv[2:])\n"
)

# `python -m MODULE ARGS...`, guarded; SIGTERM on the bench's death makes it stop gracefully.
_MODULE = _GUARD + (
    "import runpy\n"
    "del sys.argv[0]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
)


def _guarded(code: str, death_signal: signal.Signals, *args: str) -> list[str]:
    return [sys.executable, "-c", code, str(os.getpid()), str(int(death_signal)), *args]


# --------------------------------------------------------------------------------------------
# Process management


class _LineReader:
    """Reads lines from a child's stdout with a deadline (no thread, no blocking readline)."""

    def __init__(self, proc: subprocess.Popen[bytes], what: str, log: Path | None) -> None:
        assert proc.stdout is not None
        self._proc = proc
        self._fd = proc.stdout.fileno()
        self._buf = b""
        self._what = what
        self._log = log

    def readline(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self._what}: no answer within {timeout_s:g} s{self._tail()}")
            readable, _, _ = select.select([self._fd], [], [], left)
            if readable:
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    raise BenchError(f"{self._what} exited (status {self._proc.wait()})"
                                     f"{self._tail()}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def _tail(self) -> str:
        return _log_tail(self._log)


def _log_tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").rstrip()
    if not text:
        return ""
    return "\n" + "\n".join(text.splitlines()[-lines:])


@dataclass
class _Procs:
    """Every process the bench starts; ``close()`` kills each one's process group."""

    tmp: Path
    procs: list[tuple[subprocess.Popen[bytes], bool]] = field(default_factory=list)
    counter: int = 0

    def spawn(self, argv: list[str], what: str, *, graceful: bool = False,
              env: dict[str, str] | None = None, stdin: bool = False,
              capture: bool = False) -> tuple[subprocess.Popen[bytes], Path]:
        """Start a child in its own process group; its stderr (and stdout, unless captured to
        be read through a _LineReader) goes to the returned log file."""
        self.counter += 1
        log = self.tmp / f"{self.counter:02d}-{what.replace(' ', '-')}.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture else err, stderr=err, cwd=self.tmp, env=env,
                start_new_session=True)
        self.procs.append((proc, graceful))
        return proc, log

    def spawn_ref(self, role: str, *args: str, what: str,
                  stdin: bool = False) -> tuple[subprocess.Popen[bytes], _LineReader]:
        argv = _guarded(_REFERENCE, signal.SIGKILL, __file__, role, *args)
        proc, log = self.spawn(argv, what, stdin=stdin, capture=True)
        return proc, _LineReader(proc, what, log)

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Kills, on leaving, every process started inside."""
        mark = len(self.procs)
        try:
            yield
        finally:
            while len(self.procs) > mark:
                self.kill(self.procs[-1][0])

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        graceful = False
        for i, (known, is_graceful) in enumerate(self.procs):
            if known is proc:
                graceful = is_graceful
                del self.procs[i]
                break
        if graceful and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_TIMEOUT_S)
        # The group may outlive its leader (a worker of a master that exited): kill it anyway.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def kill_all(self) -> None:
        while self.procs:
            self.kill(self.procs[-1][0])


# --------------------------------------------------------------------------------------------
# Measurements: every system is started first, then measured in interleaved rounds, so that a
# burst of outside load slows one round of each system rather than one system.


@dataclass
class _Service:
    """A running service the bench calls over ZeroMQ: a reference, or clusterd."""

    system: str
    addr: str
    master_pid: int
    worker_pids: list[int]


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


def _zmq_round(sock: zmq.Socket[bytes], service: _Service, plan: Plan, tally: _Tally) -> None:
    tally.seq_us += _sequential_us(sock, plan.seq_calls)
    master, workers = _CpuMeter([service.master_pid]), _CpuMeter(service.worker_pids)
    calls, elapsed = _pipelined(sock, plan.window, plan.duration_s)
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


def _measure_rounds(ctx: zmq.Context[zmq.Socket[bytes]], procs: _Procs,
                    services: dict[str, _Service], plan: Plan,
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
            socks[system] = _dealer(ctx, service.addr)
            stack.callback(socks[system].close, 0)
            _pipelined(socks[system], plan.window, plan.warmup_s)
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


def _multi_client(procs: _Procs, addr: str, plan: Plan, system: str) -> float:
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


def _start_echo_workers(procs: _Procs, addr: str, workers: int, hello: bool,
                        system: str) -> list[int]:
    started = [procs.spawn_ref("echo-worker", addr, "hello" if hello else "plain",
                               what=f"{system} worker {i}") for i in range(workers)]
    for _, reader in started:
        reader.readline(START_TIMEOUT_S)
    return [proc.pid for proc, _ in started]


def _start_c_proxy(procs: _Procs, plan: Plan) -> _Service:
    front, back = f"tcp://127.0.0.1:{_free_port()}", f"ipc://{procs.tmp}/proxy-back.sock"
    proxy, reader = procs.spawn_ref("c-proxy", front, back, what="C proxy")
    reader.readline(START_TIMEOUT_S)
    workers = _start_echo_workers(procs, back, plan.workers, hello=False, system="C proxy")
    return _Service("c_proxy", front, proxy.pid, workers)


def _start_handwritten(procs: _Procs, plan: Plan) -> _Service:
    front, back = f"tcp://127.0.0.1:{_free_port()}", f"ipc://{procs.tmp}/handwritten-back.sock"
    master, reader = procs.spawn_ref("handwritten", front, back, str(plan.workers),
                                     what="hand-written master")
    workers = _start_echo_workers(procs, back, plan.workers, hello=True, system="hand-written")
    if reader.readline(START_TIMEOUT_S) != "ready":
        raise BenchError("hand-written master: its workers did not register")
    return _Service("handwritten", front, master.pid, workers)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------
# clusterd itself


@dataclass
class _Instance:
    """A throwaway ``clusterd run`` of the bench app."""

    name: str
    addr: str
    control: str
    proc: subprocess.Popen[bytes]
    log: Path


def _start_instance(procs: _Procs, ctx: zmq.Context[zmq.Socket[bytes]], workers: int,
                    suffix: str = "") -> _Instance:
    name = f"bench-{os.getpid()}{suffix}"
    addr = f"tcp://127.0.0.1:{_free_port()}"
    runtime = procs.tmp / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    package_parent = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, CLUSTERD_RUNTIME_DIR=str(runtime))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    argv = _guarded(_MODULE, signal.SIGTERM, "clusterd", "run", "clusterd.bench_app:Master",
                    "clusterd.bench_app:Worker", "--workers", str(workers), "--name", name,
                    "--bind", addr, "--graceful-timeout", str(STOP_TIMEOUT_S))
    proc, log = procs.spawn(argv, f"clusterd {name}", graceful=True, env=env)
    instance = _Instance(name, addr, f"ipc://{runtime}/{name}/control.sock", proc, log)
    _wait_serving(ctx, instance, workers)
    return instance


def _wait_serving(ctx: zmq.Context[zmq.Socket[bytes]], instance: _Instance,
                  workers: int) -> None:
    """Until an echo call succeeds and every worker is ready, within START_TIMEOUT_S."""
    deadline = time.monotonic() + START_TIMEOUT_S
    sock = _dealer(ctx, instance.addr)
    try:
        call_id = 0
        while True:
            if instance.proc.poll() is not None:
                raise BenchError(f"clusterd exited with status {instance.proc.returncode}"
                                 f"{_log_tail(instance.log)}")
            if time.monotonic() > deadline:
                raise BenchError(f"clusterd did not answer within {START_TIMEOUT_S:g} s"
                                 f"{_log_tail(instance.log)}")
            call_id += 1
            sock.send(_request(call_id))
            if sock.poll(200) and "result" in orjson.loads(sock.recv()):
                break
        while sock.poll(300):  # replies to earlier attempts, if they were queued
            sock.recv()
    finally:
        sock.close(0)
    while True:
        status = _status(ctx, instance)
        if len(_ready_workers(status)) >= workers:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"clusterd: {workers} workers not ready within "
                             f"{START_TIMEOUT_S:g} s{_log_tail(instance.log)}")
        time.sleep(0.05)


def _status(ctx: zmq.Context[zmq.Socket[bytes]], instance: _Instance) -> dict[str, Any]:
    sock = _dealer(ctx, instance.control)
    try:
        status: dict[str, Any] = _call(sock, "clusterd.status")
        return status
    finally:
        sock.close(0)


def _rss_mb(pid: int) -> float:
    return round(psutil.Process(pid).memory_info().rss / 1e6, 1)


def _calibrate_burn(burn_ms: float) -> tuple[int, float]:
    """The ``n`` for which ``burn(n)`` takes about ``burn_ms`` here, and its measured time."""
    from clusterd.bench_app import burn

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


def _burn_time(ctx: zmq.Context[zmq.Socket[bytes]], instance: _Instance, n: int,
               calls: int) -> float:
    """Seconds for ``calls`` concurrent ``burn(n)`` calls to all come back."""
    sock = _dealer(ctx, instance.addr)
    try:
        t0 = time.perf_counter()
        for i in range(calls):
            sock.send(_request(i, "burn", (n,)))
        for _ in range(calls):
            _reply_id(_recv(sock))
        return time.perf_counter() - t0
    finally:
        sock.close(0)


def _restart_ms(ctx: zmq.Context[zmq.Socket[bytes]], instance: _Instance, slot: int) -> float:
    """SIGKILL the worker in ``slot``; ms until status shows a new pid there, ready."""
    sock = _dealer(ctx, instance.control)
    try:
        old = _slot_worker(_call(sock, "clusterd.status"), slot)
        if old is None:
            raise BenchError(f"clusterd: slot {slot} has no ready worker")
        t0 = time.perf_counter()
        os.kill(old["pid"], signal.SIGKILL)
        deadline = t0 + START_TIMEOUT_S
        while time.perf_counter() < deadline:
            new = _slot_worker(_call(sock, "clusterd.status"), slot)
            if new is not None and new["pid"] != old["pid"]:
                return (time.perf_counter() - t0) * 1000
            time.sleep(0.002)
        raise BenchError(f"clusterd: slot {slot} not serving again within {START_TIMEOUT_S:g} s"
                         f"{_log_tail(instance.log)}")
    finally:
        sock.close(0)


def _ready_workers(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [w for w in status["workers"] if w["state"] == "ready" and w.get("pid")]


def _slot_worker(status: dict[str, Any], slot: int) -> dict[str, Any] | None:
    """The ready worker of a slot, if any."""
    return next((w for w in _ready_workers(status) if w["slot"] == slot), None)


def _service_of(ctx: zmq.Context[zmq.Socket[bytes]], instance: _Instance) -> _Service:
    status = _status(ctx, instance)
    return _Service("clusterd", instance.addr, int(status["master"]["pid"]),
                    [int(w["pid"]) for w in _ready_workers(status)])


def _measure_speedup(ctx: zmq.Context[zmq.Socket[bytes]], many: _Instance, single: _Instance,
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


def _measure_restarts(ctx: zmq.Context[zmq.Socket[bytes]], instance: _Instance, plan: Plan,
                      report: Progress) -> dict[str, Any]:
    """Kill the worker of slots 0, 1, ... once each; see _restart_ms.

    One kill per slot: a slot that fails again within seconds is restarted with backoff
    (crash-loop protection), which is not what this figure is about.
    """
    samples = []
    for slot in range(plan.restart_repeats):
        report(f"worker restart {slot + 1}/{plan.restart_repeats}…")
        time.sleep(plan.restart_gap_s)
        samples.append(round(_restart_ms(ctx, instance, slot), 1))
    return {"samples_ms": samples, "median_ms": round(statistics.median(samples), 1),
            "max_ms": max(samples)}


# --------------------------------------------------------------------------------------------
# Targets and report


def _targets(systems: dict[str, dict[str, Any]], cpu: dict[str, Any], restart: dict[str, Any],
             memory: dict[str, Any], workers: int) -> dict[str, dict[str, Any]]:
    forwarded = systems["clusterd"]["pipelined_calls_per_s"]

    def ratio(a: float, b: float) -> float:
        return round(a / b, 2) if b else 0.0

    rows: list[tuple[str, str, float, str, float]] = [
        ("forwarded_vs_handwritten", "forwarded calls/s ÷ hand-written master",
         ratio(forwarded, systems["handwritten"]["pipelined_calls_per_s"]), ">=", 1.0),
        ("forwarded_vs_c_proxy", "forwarded calls/s ÷ C proxy",
         ratio(forwarded, systems["c_proxy"]["pipelined_calls_per_s"]), ">=", 0.5),
        ("forwarded_vs_process_pool", "forwarded calls/s ÷ ProcessPoolExecutor",
         ratio(forwarded, systems["process_pool"]["pipelined_calls_per_s"]), ">=", 2.5),
        ("seq_p50_vs_c_proxy", "sequential p50 ÷ C proxy's",
         ratio(systems["clusterd"]["seq_p50_us"], systems["c_proxy"]["seq_p50_us"]), "<=", 1.3),
        ("speedup", f"CPU-bound speedup, {workers} workers ÷ 1", cpu["speedup"], ">=",
         round(0.9 * workers, 2)),
        ("restart_median_ms", "killed worker serving again, median ms", restart["median_ms"],
         "<=", 100.0),
        ("master_rss_mb", "master RSS idle, MB", memory["master_rss_mb"], "<=", 40.0),
    ]
    return {key: {"label": label, "value": value, "op": op, "target": target,
                  "met": value >= target if op == ">=" else value <= target}
            for key, label, value, op, target in rows}


def run_bench(*, quick: bool = False, workers: int = 2,
              progress: Progress | None = None) -> dict[str, Any]:
    """Run every measurement and return the result document described in the module docstring.

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
        services = {"c_proxy": _start_c_proxy(procs, plan),
                    "handwritten": _start_handwritten(procs, plan)}
        report(f"starting clusterd with {workers} workers…")
        main = _start_instance(procs, ctx, workers)
        report("starting clusterd with 1 worker…")
        single = _start_instance(procs, ctx, 1, suffix="-1")
        services["clusterd"] = clusterd = _service_of(ctx, main)
        time.sleep(settle_s)
        fresh_rss = _rss_mb(clusterd.master_pid)

        systems = _measure_rounds(ctx, procs, services, plan, report)
        time.sleep(settle_s)
        memory = {"master_rss_mb": _rss_mb(clusterd.master_pid),
                  "master_rss_fresh_mb": fresh_rss,
                  "worker_rss_mb": _rss_mb(_service_of(ctx, main).worker_pids[0])}
        report("CPU-bound speedup…")
        cpu = _measure_speedup(ctx, main, single, plan)
        restart: dict[str, Any] | None = None
        if plan.restart_repeats <= workers:
            restart = _measure_restarts(ctx, main, plan, report)
        procs.kill_all()
        if restart is None:
            report(f"starting clusterd with {plan.restart_repeats} workers…")
            restart = _measure_restarts(
                ctx, _start_instance(procs, ctx, plan.restart_repeats, suffix="-r"), plan,
                report)
    targets = _targets(systems, cpu, restart, memory, workers)
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
        "targets": targets,
        "all_met": all(t["met"] for t in targets.values()),
    }


@contextlib.contextmanager
def _bench_session() -> Iterator[tuple[zmq.Context[zmq.Socket[bytes]], _Procs]]:
    tmp = Path(tempfile.mkdtemp(prefix="clusterd-bench-"))
    procs = _Procs(tmp)
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


def format_table(result: dict[str, Any]) -> str:
    """The human-readable report of a ``run_bench()`` result."""
    params, machine = result["params"], result["machine"]
    lines = [
        f"clusterd bench{' --quick' if result['quick'] else ''}: {params['workers']} workers, "
        f"{machine['cpus']} CPUs, Python {machine['python']}, pyzmq {machine['pyzmq']} "
        f"(libzmq {machine['libzmq']}); echo of {params['payload_bytes']} bytes, "
        f"window {params['window']}",
        "",
        f"{'':<22}{'sequential µs':^16}  {'pipelined calls/s':^22}  {'CPU µs per call':^18}",
        f"{'system':<22}{'p50':>8}{'p99':>8}  {'1 client':>10}"
        f"{str(params['clients']) + ' clients':>12}  {'master':>9}{'workers':>9}",
    ]
    for figures in result["systems"].values():
        lines.append(
            f"{figures['label']:<22}{figures['seq_p50_us']:>8.0f}{figures['seq_p99_us']:>8.0f}  "
            f"{figures['pipelined_calls_per_s']:>10,.0f}"
            f"{_maybe(figures['multi_client_calls_per_s'], ',.0f'):>12}  "
            f"{_maybe(figures['master_cpu_us_per_call'], '.1f'):>9}"
            f"{_maybe(figures['workers_cpu_us_per_call'], '.1f'):>9}")
    cpu, restart, memory = result["cpu"], result["restart"], result["memory"]
    lines += [
        "",
        f"CPU-bound: {cpu['calls']} × burn ({cpu['burn_ms']:.0f} ms) in "
        f"{cpu['time_1_worker_s']:.2f} s on 1 worker, {cpu['time_n_workers_s']:.2f} s on "
        f"{cpu['workers']}: speedup {cpu['speedup']:.2f}",
        f"killed worker serving again: median {restart['median_ms']:.0f} ms, max "
        f"{restart['max_ms']:.0f} ms over {len(restart['samples_ms'])} kills",
        f"RSS: master {memory['master_rss_mb']:.1f} MB idle after load "
        f"({memory['master_rss_fresh_mb']:.1f} MB fresh), worker {memory['worker_rss_mb']:.1f} MB",
        "",
        f"{'target':<44}{'value':>9}  {'goal':<8}met",
    ]
    for target in result["targets"].values():
        lines.append(f"{target['label']:<44}{target['value']:>9g}  "
                     f"{target['op'] + ' ' + format(target['target'], 'g'):<8}"
                     f"{'yes' if target['met'] else 'NO'}")
    lines.append(f"\nall targets met: {'yes' if result['all_met'] else 'no'} "
                 f"(run took {result['elapsed_s']:.0f} s)")
    return "\n".join(lines)


def _maybe(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


if __name__ == "__main__":
    _child_main(sys.argv[1:])
