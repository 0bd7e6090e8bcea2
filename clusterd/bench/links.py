"""``clusterd bench --links``: the master and its workers calling each other, side by side.

Each side times its own loop of calls to the other, in the process that makes them (as the seed's
figures were taken), with 1 and 64 calls in flight:

- ``w2m``: a worker's ``await self.master.call("echo", payload)`` answered by a plain-``def``
  master method;
- ``m2w``: the master's ``await self.workers.call("echo", payload)`` answered by a worker.

The master's CPU per call (user + system time of the master process over a ``w2m``/``m2w`` loop,
divided by its calls) is taken beside each rate. Systems, measured in interleaved rounds (every
system and path once per round, so a burst of outside load slows one round of each) and reported
as medians:

- ``clusterd``: this tree, one ``clusterd run`` of ``links_app`` with one worker;
- ``baseline`` (only with ``baseline=DIR``): the same app on another clusterd source tree, e.g. a
  worktree of an older commit, so a change is measured against what it replaces in the same run;
- ``dealer_link``: the same loop on a hand-made link, one asyncio ROUTER process and one asyncio
  DEALER process exchanging orjson-encoded JSON-RPC, with nothing else: the level to compare with.

Result document (``run_links_bench()``)::

    {"version": 1, "quick": bool, "elapsed_s": float,
     "params": {"rounds": int, "seconds": float, "payload_bytes": int, "inflight": [1, 64]},
     "systems": {"<system>": {"label": str, "paths": {"<path>_<inflight>": {
         "calls_per_s": float, "rounds_calls_per_s": [float],
         "master_cpu_us_per_call": float | null}}}},
     "ratios": {"<path>_<inflight>": float},      # clusterd / baseline, only with a baseline
     "targets": {"<name>": {"label", "value", "op", "target", "met"}}, "all_met": bool}

The hand-made link runs in links_ref.py, which imports nothing from ``clusterd``: the reference
processes load it by path.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import psutil
import zmq

from . import links_ref
from .links_ref import PAYLOAD

RESULT_VERSION = 1
INFLIGHT = (1, 64)
PATHS = ("w2m", "m2w")
PATH_LABELS = {"w2m": "worker -> master", "m2w": "master -> worker"}
SYSTEM_LABELS = {"clusterd": "clusterd", "baseline": "baseline", "dealer_link": "hand-made DEALER link"}
START_TIMEOUT_S = 30.0
APP_MODULE = "_clusterd_links_app"
# the goals of issue 18, as ratios to the baseline (and the master's CPU per worker -> master call)
TARGETS = (("w2m_64", "worker -> master, 64 in flight, x baseline", 2.5),
           ("w2m_1", "worker -> master, 1 in flight, x baseline", 1.7),
           ("m2w_64", "master -> worker, 64 in flight, x baseline", 1.6))
MASTER_CPU_TARGET_US = 8.0

Progress = Callable[[str], None]


class LinksBenchError(RuntimeError):
    """A measurement could not be made."""


# Every child dies with the bench (Linux signals it when its parent dies); argv[1:3] are for this.
_GUARD = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None).prctl(1, int(sys.argv[2]), 0, 0, 0)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)\n"
    "del sys.argv[1:3]\n"
)
_REFERENCE = _GUARD + (
    "import importlib.util\n"
    "spec = importlib.util.spec_from_file_location('_clusterd_links_ref', sys.argv[1])\n"
    "mod = importlib.util.module_from_spec(spec)\n"
    "sys.modules['_clusterd_links_ref'] = mod\n"
    "spec.loader.exec_module(mod)\n"
    "mod.child_main(sys.argv[2:])\n"
)
_MODULE = _GUARD + (
    "import runpy\n"
    "del sys.argv[0]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
)


def _guarded(code: str, death_signal: signal.Signals, *args: str) -> list[str]:
    return [sys.executable, "-c", code, str(os.getpid()), str(int(death_signal)), *args]


# --------------------------------------------------------------------------------------------
# The bench process


class _Session:
    """The bench's temporary directory and every process it started (killed on leaving)."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="clusterd-links-"))
        self.ctx = zmq.Context()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.count = 0

    def spawn(self, argv: list[str], what: str, env: dict[str, str] | None = None,
              capture: bool = False) -> tuple[subprocess.Popen[bytes], Path]:
        self.count += 1
        log = self.tmp / f"{self.count:03d}-{what}.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if capture else err,
                                    stderr=err, cwd=self.tmp, env=env, start_new_session=True)
        self.procs.append(proc)
        return proc, log

    def kill(self, proc: subprocess.Popen[bytes], graceful: bool = False) -> None:
        if graceful and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        while self.procs:
            self.kill(self.procs[-1], graceful=True)
        self.ctx.destroy(linger=0)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _tail(log: Path, lines: int = 12) -> str:
    text = log.read_text(errors="replace").rstrip() if log.exists() else ""
    return ("\n" + "\n".join(text.splitlines()[-lines:])) if text else ""


class _Instance:
    """A ``clusterd run`` of the links app (one worker) from a given source tree."""

    def __init__(self, session: _Session, system: str, tree: Path) -> None:
        self.session = session
        self.name = f"links-{os.getpid()}-{system}"
        runtime = session.tmp / "run"
        runtime.mkdir(mode=0o700, exist_ok=True)
        appdir = session.tmp / "app"
        appdir.mkdir(exist_ok=True)
        shutil.copyfile(Path(__file__).with_name("links_app.py"), appdir / f"{APP_MODULE}.py")
        env = dict(os.environ, CLUSTERD_RUNTIME_DIR=str(runtime))
        env.pop("CLUSTERD_NAME", None)
        env["PYTHONPATH"] = os.pathsep.join([str(tree), str(appdir)])
        argv = _guarded(_MODULE, signal.SIGTERM, "clusterd", "run", f"{APP_MODULE}:Master",
                        f"{APP_MODULE}:Worker", "--workers", "1", "--name", self.name,
                        "--graceful-timeout", "2")
        self.proc, self.log = session.spawn(argv, f"clusterd-{system}", env=env)
        self.sock = session.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"ipc://{runtime}/{self.name}/control.sock")
        self.next_id = 0
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            status = self.call("clusterd.status", timeout_s=0.5, quiet=True)
            if status is not None and any(w["state"] == "ready" for w in status["workers"]):
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise LinksBenchError(f"clusterd ({tree}) did not start{_tail(self.log)}")
        self.master = psutil.Process(status["master"]["pid"])

    def call(self, method: str, *params: Any, timeout_s: float = 120.0, quiet: bool = False) -> Any:
        self.next_id += 1
        self.sock.send(orjson.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": self.next_id}))
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000) + 1):
                if quiet:
                    return None
                raise LinksBenchError(f"{method}: no answer within {timeout_s:g} s{_tail(self.log)}")
            reply = orjson.loads(self.sock.recv())
            if reply.get("id") != self.next_id:
                continue  # the answer to an earlier attempt that timed out
            if "result" not in reply:
                if quiet:
                    return None
                raise LinksBenchError(f"{method} failed: {reply.get('error')!r}")
            return reply["result"]

    def measure(self, path: str, seconds: float, inflight: int) -> tuple[float, float]:
        """(calls per second, master CPU µs per call) of one loop."""
        method = "to_master" if path == "w2m" else "to_workers"
        before = self.master.cpu_times()
        out = self.call(method, seconds, inflight, PAYLOAD)
        after = self.master.cpu_times()
        cpu_s = (after.user - before.user) + (after.system - before.system)
        return out["calls"] / out["seconds"], cpu_s * 1e6 / out["calls"]


class _Reference:
    """The hand-made link: a fresh master and worker process pair per measurement."""

    def __init__(self, session: _Session) -> None:
        self.session = session
        self.n = 0

    def measure(self, path: str, seconds: float, inflight: int) -> tuple[float, float]:
        self.n += 1
        addr = f"ipc://{self.session.tmp}/ref-{self.n}.sock"
        runs = {}
        for role in ("master", "worker"):
            argv = _guarded(_REFERENCE, signal.SIGKILL, links_ref.__file__, role, addr, path, str(seconds),
                            str(inflight))
            runs[role] = self.session.spawn(argv, f"ref-{role}", capture=True)
        try:
            lines = {role: self._line(proc, log, seconds + START_TIMEOUT_S) for role, (proc, log) in runs.items()}
        finally:
            for proc, _log in runs.values():
                self.session.kill(proc)
        loop = lines["worker" if path == "w2m" else "master"]
        return loop["calls"] / loop["seconds"], lines["master"]["cpu_s"] * 1e6 / loop["calls"]

    @staticmethod
    def _line(proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> dict:
        assert proc.stdout is not None
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise LinksBenchError(f"the hand-made link did not finish{_tail(log)}") from None
        line = proc.stdout.readline()
        if not line:
            raise LinksBenchError(f"the hand-made link exited with status {proc.returncode}{_tail(log)}")
        return orjson.loads(line)


def run_links_bench(*, quick: bool = False, baseline: Path | None = None, rounds: int | None = None,
                    seconds: float | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Measure every system and path; the result document of the module docstring."""
    report: Progress = progress or (lambda _msg: None)
    rounds = rounds or (1 if quick else 5)
    seconds = seconds or (0.3 if quick else 1.0)
    started = time.perf_counter()
    here = Path(__file__).resolve().parent.parent.parent
    session = _Session()
    try:
        report("starting clusterd…")
        systems: dict[str, Any] = {"clusterd": _Instance(session, "clusterd", here)}
        if baseline is not None:
            report(f"starting the baseline ({baseline})…")
            systems["baseline"] = _Instance(session, "baseline", Path(baseline).resolve())
        systems["dealer_link"] = _Reference(session)
        keys = [f"{path}_{n}" for path in PATHS for n in INFLIGHT]
        rates: dict[str, dict[str, list[float]]] = {s: {k: [] for k in keys} for s in systems}
        cpus: dict[str, dict[str, list[float]]] = {s: {k: [] for k in keys} for s in systems}
        for system in systems.values():  # warm up: imports, first calls, allocator
            if isinstance(system, _Instance):
                for path in PATHS:
                    system.measure(path, min(seconds, 0.3), 64)
        for r in range(rounds):
            for key in keys:
                path, n = key.split("_")
                for name, system in systems.items():
                    report(f"round {r + 1}/{rounds}: {PATH_LABELS[path]}, {n} in flight, {name}…")
                    rate, cpu = system.measure(path, seconds, int(n))
                    rates[name][key].append(rate)
                    cpus[name][key].append(cpu)
    finally:
        session.close()
    doc: dict[str, Any] = {
        "version": RESULT_VERSION, "quick": quick,
        "params": {"rounds": rounds, "seconds": seconds, "payload_bytes": len(PAYLOAD), "inflight": list(INFLIGHT)},
        "systems": {name: {"label": SYSTEM_LABELS[name], "paths": {
            key: {"calls_per_s": round(statistics.median(rates[name][key]), 1),
                  "rounds_calls_per_s": [round(v, 1) for v in rates[name][key]],
                  "master_cpu_us_per_call": round(statistics.median(cpus[name][key]), 2)}
            for key in rates[name]}} for name in systems},
    }
    targets: dict[str, Any] = {}
    if "baseline" in systems:
        # each round's ratio (the two systems measured back to back), then the median of those
        doc["ratios"] = {key: round(statistics.median(
            a / b for a, b in zip(rates["clusterd"][key], rates["baseline"][key])), 2) for key in rates["clusterd"]}
        for key, label, goal in TARGETS:
            targets[key] = _target(label, doc["ratios"][key], ">=", goal)
    cpu = doc["systems"]["clusterd"]["paths"]["w2m_64"]["master_cpu_us_per_call"]
    targets["master_cpu_w2m"] = _target("master CPU µs per worker -> master call", cpu, "<=",
                                         MASTER_CPU_TARGET_US)
    doc["targets"] = targets
    doc["all_met"] = all(t["met"] for t in targets.values())
    doc["elapsed_s"] = round(time.perf_counter() - started, 1)
    return doc


def _target(label: str, value: float, op: str, goal: float) -> dict[str, Any]:
    return {"label": label, "value": value, "op": op, "target": goal,
            "met": value >= goal if op == ">=" else value <= goal}


def format_links_table(doc: dict[str, Any]) -> str:
    """The human-readable report of a ``run_links_bench()`` result."""
    params = doc["params"]
    names = list(doc["systems"])
    lines = [f"clusterd bench --links: echo of {params['payload_bytes']} bytes, medians of "
             f"{params['rounds']} rounds of {params['seconds']:g} s, one worker", "",
             f"{'calls/s (master CPU µs/call)':<30}" + "".join(f"{doc['systems'][n]['label']:>26}" for n in names)
             + ("    ratio" if "ratios" in doc else "")]
    for key in doc["systems"]["clusterd"]["paths"]:
        path, n = key.split("_")
        row = f"{PATH_LABELS[path] + ', ' + n + ' in flight':<30}"
        for name in names:
            fig = doc["systems"][name]["paths"][key]
            row += f"  {fig['calls_per_s']:>15,.0f} ({fig['master_cpu_us_per_call']:>6.1f})"
        if "ratios" in doc:
            row += f"{doc['ratios'][key]:>8.2f}x"
        lines.append(row)
    lines += ["", f"{'target':<48}{'value':>8}  {'goal':<8}met"]
    for t in doc["targets"].values():
        lines.append(f"{t['label']:<48}{t['value']:>8g}  {t['op'] + ' ' + format(t['target'], 'g'):<8}"
                     f"{'yes' if t['met'] else 'NO'}")
    lines.append(f"\nall targets met: {'yes' if doc['all_met'] else 'no'} (run took {doc['elapsed_s']:.0f} s)")
    return "\n".join(lines)

