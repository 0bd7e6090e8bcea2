"""Chaos: clients call a running instance continuously while its workers are SIGKILLed at random.

`run_chaos` drives it and returns tallies: every call must come back answered, failed calls only
with -32002 (its worker died) or -32001 (no worker ready), idempotent calls never failed, the master
the same process as before, and every slot ready again afterwards. The test suite runs it for a few
seconds; `clusterd bench --chaos SECONDS` runs it longer and prints `format_tallies`.

Workers are found through `clusterd.status` on control.sock and killed with os.kill, so the instance
must run on this host. At least `keep_ready` workers are left alive at any time: killing the last
one would make the service answer -32001 (allowed) but then no idempotent call could succeed.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import zmq

from .. import protocol
from ..control import ControlClient

DEFAULT_MIX: tuple[tuple[str, list, bool], ...] = (
    ("add", [1, 2], False),
    ("sleep", [0.05], False),
    ("idem_sleep", [0.05], True),
)
"""(method, params, idempotent) tuples the clients pick from at random (methods of tests/apps/basic.py)."""

EXPECTED_ERRORS = (protocol.WORKER_DIED, protocol.NO_WORKER)


def _control_address(target: Any) -> str:
    if isinstance(target, str):
        return target
    for attr in ("control", "control_address"):
        value = getattr(target, attr, None)
        if isinstance(value, str):
            return value
    raise TypeError(f"not an address nor an instance with a control address: {target!r}")


class _Caller:
    """A DEALER socket with many calls in flight (a client's window); blocking receive with a timeout."""

    def __init__(self, ctx: zmq.Context, address: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.ids = itertools.count(1)

    def send(self, method: str, params: Any) -> int:
        rid = next(self.ids)
        self.sock.send(protocol.dumps(protocol.make_request(method, params, rid)))
        return rid

    def recv(self, timeout: float) -> dict | None:
        if not self.sock.poll(int(timeout * 1000)):
            return None
        return protocol.loads(self.sock.recv())

    def close(self) -> None:
        self.sock.close(linger=0)


class _Client(threading.Thread):
    """Keeps `window` calls in flight until told to stop, then collects the answers still due."""

    def __init__(self, ctx: zmq.Context, address: str, mix: Sequence[tuple[str, list, bool]], window: int,
                 stop: threading.Event, answer_timeout: float, rng: random.Random) -> None:
        super().__init__(daemon=True)
        self.ctx, self.address, self.mix, self.window = ctx, address, mix, window
        self.stop, self.answer_timeout, self.rng = stop, answer_timeout, rng
        self.tally: Counter = Counter()
        self.errors: Counter = Counter()

    def run(self) -> None:
        caller = _Caller(self.ctx, self.address)
        pending: dict[int, tuple[str, bool]] = {}
        try:
            while True:
                while not self.stop.is_set() and len(pending) < self.window:
                    method, params, idempotent = self.rng.choice(self.mix)
                    pending[caller.send(method, params)] = (method, idempotent)
                    self.tally["calls"] += 1
                    self.tally["idempotent_calls"] += idempotent
                if not pending:
                    return
                reply = caller.recv(self.answer_timeout)
                if reply is None:
                    self.tally["unanswered"] += len(pending)
                    return
                entry = pending.pop(reply.get("id"), None)
                if entry is None:
                    self.tally["stray"] += 1
                    continue
                self._count(reply, *entry)
        finally:
            caller.close()

    def _count(self, reply: dict, method: str, idempotent: bool) -> None:
        self.tally["answered"] += 1
        error = reply.get("error")
        if error is None:
            self.tally["ok"] += 1
            return
        code = error.get("code") if isinstance(error, dict) else None
        self.errors[str(code)] += 1
        if code not in EXPECTED_ERRORS:
            self.tally["unexpected_errors"] += 1
        if idempotent:
            self.tally["idempotent_failed"] += 1


def _ready_workers(doc: dict) -> list[dict]:
    return [w for w in doc["workers"] if w.get("state") == "ready" and w.get("pid")]


def _healed(doc: dict) -> bool:
    wanted = doc["config"]["workers"]
    return len(_ready_workers(doc)) == wanted and len(doc["workers"]) == wanted


def run_chaos(target: Any, seconds: float, *, clients: int = 4, window: int = 4,
              mix: Sequence[tuple[str, list, bool]] = DEFAULT_MIX, call_address: str | None = None,
              kill_every: tuple[float, float] = (0.2, 0.6), keep_ready: int = 1,
              answer_timeout: float = 30.0, heal_timeout: float = 30.0, seed: int | None = None) -> dict:
    """Call `target` from `clients` threads for `seconds` while SIGKILLing its workers; the tallies.

    target: the control address (ipc://.../control.sock) or an object with `control` or
    `control_address`. call_address: where clients call (default: the control address; a --bind
    address works too). mix: (method, params, idempotent) tuples picked at random for each call.
    The result's "passed" says whether every promise held (see the module docstring).
    """
    control = _control_address(target)
    rng = random.Random(seed)
    ctx = zmq.Context.instance()
    with ControlClient(control) as admin:
        before = admin.call("clusterd.status", timeout=10.0)
        stop = threading.Event()
        threads = [_Client(ctx, call_address or control, mix, window, stop, answer_timeout,
                           random.Random(rng.random())) for _ in range(clients)]
        started = time.monotonic()
        for t in threads:
            t.start()
        kills, status_failures = _kill_until(admin, started + seconds, rng, kill_every, keep_ready)
        stop.set()
        for t in threads:
            t.join(answer_timeout + 5.0)
        elapsed = time.monotonic() - started
        heal_started = time.monotonic()
        after = _wait_healed(admin, heal_timeout)
        heal_s = time.monotonic() - heal_started
    tally: Counter = Counter()
    errors: Counter = Counter()
    for t in threads:
        tally.update(t.tally)
        errors.update(t.errors)
    healed = after is not None and _healed(after)
    result = {
        "seconds": round(elapsed, 3), "clients": clients, "window": window,
        "calls": tally["calls"], "answered": tally["answered"], "ok": tally["ok"],
        "unanswered": tally["unanswered"] + sum(1 for t in threads if t.is_alive()),
        "stray": tally["stray"], "errors": dict(errors), "unexpected_errors": tally["unexpected_errors"],
        "idempotent_calls": tally["idempotent_calls"], "idempotent_failed": tally["idempotent_failed"],
        "kills": kills, "status_failures": status_failures,
        "calls_per_s": round(tally["answered"] / elapsed, 1) if elapsed > 0 else 0.0,
        "healed": healed, "heal_s": round(heal_s, 3),
        "master_pid": before["master"]["pid"],
        "master_same": after is not None and after["master"]["pid"] == before["master"]["pid"],
        "master_rss_before": before["master"].get("rss_bytes"),
        "master_rss_after": after["master"].get("rss_bytes") if after else None,
    }
    result["passed"] = (result["unanswered"] == 0 and result["stray"] == 0 and result["unexpected_errors"] == 0
                        and result["idempotent_failed"] == 0 and result["answered"] == result["calls"]
                        and healed and result["master_same"])
    return result


def _kill_until(admin: ControlClient, deadline: float, rng: random.Random, kill_every: tuple[float, float],
                keep_ready: int) -> tuple[int, int]:
    """SIGKILL a random ready worker every `kill_every` seconds until the deadline; (kills, status failures)."""
    kills, status_failures = 0, 0
    while time.monotonic() < deadline:
        time.sleep(min(rng.uniform(*kill_every), max(0.0, deadline - time.monotonic())))
        if time.monotonic() >= deadline:
            break
        try:
            ready = _ready_workers(admin.call("clusterd.status", timeout=5.0))
        except (TimeoutError, protocol.RemoteError):
            status_failures += 1
            continue
        if len(ready) <= keep_ready:
            continue
        try:
            os.kill(rng.choice(ready)["pid"], signal.SIGKILL)
            kills += 1
        except ProcessLookupError:
            pass
    return kills, status_failures


def _wait_healed(admin: ControlClient, timeout: float) -> dict | None:
    """The first status showing every slot ready again, else the last status seen (None if none came)."""
    started, after = time.monotonic(), None
    while time.monotonic() - started < timeout:
        try:
            after = admin.call("clusterd.status", timeout=5.0)
        except (TimeoutError, protocol.RemoteError):
            after = None
        if after is not None and _healed(after):
            break
        time.sleep(0.05)
    return after


def format_tallies(t: dict) -> str:
    """A few lines a person can read: what was sent, what came back, what was killed."""
    errors = ", ".join(f"{code}: {n}" for code, n in sorted(t["errors"].items())) or "none"
    rss = ""
    if t.get("master_rss_before") and t.get("master_rss_after"):
        rss = f"; master RSS {t['master_rss_before'] / 2**20:.1f} -> {t['master_rss_after'] / 2**20:.1f} MiB"
    return "\n".join([
        f"chaos: {t['seconds']:g}s, {t['clients']} clients x {t['window']} in flight, {t['kills']} workers SIGKILLed",
        f"calls: {t['calls']} sent, {t['answered']} answered ({t['calls_per_s']:g}/s), {t['ok']} ok, "
        f"{t['unanswered']} unanswered",
        f"errors: {errors} ({t['unexpected_errors']} unexpected)",
        f"idempotent: {t['idempotent_calls']} calls, {t['idempotent_failed']} failed",
        f"healed: {'yes' if t['healed'] else 'NO'} after {t['heal_s']:g}s; master pid {t['master_pid']} "
        f"{'unchanged' if t['master_same'] else 'CHANGED or gone'}{rss}",
        f"result: {'PASS' if t['passed'] else 'FAIL'}",
    ])


__all__ = ["run_chaos", "format_tallies", "DEFAULT_MIX", "EXPECTED_ERRORS"]


BENCH_MIX: tuple[tuple[str, list, bool], ...] = (
    ("echo", ["x" * 50], False),
    ("burn", [20000], False),
    ("idem_echo", ["x" * 50], True),
)


def run_chaos_bench(seconds: float, workers: int = 3, progress: Any = None) -> dict:
    """`clusterd bench --chaos SECONDS`: a throwaway instance of the bench app under random kills."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile

    tmp = tempfile.mkdtemp(prefix="cd-chaos-", dir="/tmp")
    name = f"chaos-{os.getpid()}"
    env = dict(os.environ, CLUSTERD_RUNTIME_DIR=tmp)
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "clusterd", "run", "clusterd.bench.app:Master", "clusterd.bench.app:ChaosWorker",
         "--workers", str(workers), "--name", name, "--crash-limit", "100000", "--queue-timeout", "10"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    control = f"ipc://{tmp}/{name}/control.sock"
    try:
        if progress:
            progress(f"starting {workers} workers…")
        with ControlClient(control, 1.0) as caller:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if caller.call("clusterd.status")["state"] == "running":
                        break
                except Exception:  # still starting
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the chaos instance did not start")
                time.sleep(0.05)
        if progress:
            progress(f"calling for {seconds:g}s while killing workers at random…")
        return run_chaos(control, seconds, mix=BENCH_MIX)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
