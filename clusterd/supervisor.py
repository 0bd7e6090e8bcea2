"""Worker lifecycle: spawning, restart with backoff, crash loops, heartbeats, recycling, scaling
and the rolling reload.

Like gunicorn's arbiter, it reconciles the wanted set of workers with the actual one; every change
(restart, scale, recycle, reload) is "start a worker for a slot" or "retire a worker". It owns the
worker table; the router (master.py) moves calls and tells it what arrives on the workers socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections import deque
from typing import TYPE_CHECKING

import psutil

from . import log, protocol
from .config import Config
from .pool import Balancer, Slot, Worker, WorkerState
from .spawn import DirectSpawner, ZygoteSpawner

if TYPE_CHECKING:
    from .master import Router

RESTART_REASONS = ("hung", "max-memory", "max-requests", "crashed")
STABLE_AFTER_S = 1.0       # a worker ready this long resets its slot's backoff
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0


def make_spawner(loop: asyncio.AbstractEventLoop, config: Config, router: "Router", on_line, on_exit):
    """Fork from a zygote (fast restarts) unless CLUSTERD_NO_ZYGOTE is set; fresh interpreters then.
    With --isolation thread, threads of this process (threads.py)."""
    if config.isolation == "thread":
        from .threads import ThreadSpawner
        return ThreadSpawner(loop, on_line, on_exit, router.ctx, config)
    identity = router.worker_identity
    popen = identity.popen_kwargs() if identity is not None else None
    if os.environ.get("CLUSTERD_NO_ZYGOTE"):
        return DirectSpawner(loop, on_line, on_exit, popen)
    return ZygoteSpawner(loop, on_line, on_exit, config.worker, f"clusterd-worker:{config.name}",
                         router.child_environ(), popen)


class BootFailure(Exception):
    """A worker could not become ready: carries its error and traceback for the user."""

    def __init__(self, worker: Worker, error: str, traceback: str) -> None:
        super().__init__(error)
        self.worker = worker
        self.error = error
        self.traceback = traceback

    def to_dict(self) -> dict:
        return {"slot": self.worker.slot, "pid": self.worker.pid, "error": self.error,
                "traceback": self.traceback}


def _exit_info(returncode: int | None, reason: str) -> dict:
    code = sig = None
    if returncode is not None:
        if returncode < 0:
            sig = -returncode
        else:
            code = returncode
    return {"code": code, "signal": sig, "at": time.time(), "reason": reason}


def _methods_running(worker: Worker) -> list[str]:
    """Which methods a worker held when it exited, for its exit line (decoded only then: it is rare)."""
    names: set[str] = set()
    for call in worker.calls.values():
        try:
            method = protocol.fast_loads(call.payload).get("method")
        except (ValueError, AttributeError):
            continue
        if isinstance(method, str):
            names.add(method[:80])
    return sorted(names)[:5]


class Supervisor:
    def __init__(self, config: Config, router: "Router") -> None:
        self.config = config
        self.router = router
        self.loop = asyncio.get_running_loop()
        self.wanted = config.workers
        self.generation = 1
        self.slots: dict[int, Slot] = {}
        self.by_ident: dict[bytes, Worker] = {}
        self.balancer = Balancer(least_busy=config.balance != "round-robin")
        self.failures: deque[float] = deque()
        self.booting = True
        self.stopping = False
        self.fatal: asyncio.Future = self.loop.create_future()
        self._boot_waiter: asyncio.Future | None = None
        self._replacements: dict[int, asyncio.Future] = {}
        self._exited = asyncio.Event()
        self._serial = 0
        self._tick_handle: asyncio.TimerHandle | None = None
        self._tick_due = 0.0
        self.spawner = make_spawner(self.loop, config, router, self._on_line, self._on_exit)
        self._exit_waiters: list[asyncio.Future] = []

    # ------------------------------------------------------------------ start and spawn
    async def start(self) -> None:
        """Start every slot; raise BootFailure if any worker dies before it is ready (fail fast)."""
        self._boot_waiter = self.loop.create_future()
        for index in range(self.wanted):
            self.slots[index] = slot = Slot(index)
            slot.active = self._spawn(index)
        self._schedule_tick()
        if self.wanted:
            await self._boot_waiter
        self.booting = False

    def _spawn(self, index: int) -> Worker:
        self.router.keep_runtime_dir()  # a new worker must find our socket, not another instance's
        self._serial += 1
        ident = f"{self.router.token}.{index}.{self.generation}.{self._serial}".encode()
        worker = Worker(slot=index, generation=self.generation, ident=ident)
        if self.config.max_requests:
            worker.max_requests = self.config.max_requests + random.randint(0, self.config.max_requests_jitter)
        spec = {
            "worker": self.config.worker, "endpoint": self.router.worker_endpoint, "ident": ident.decode(),
            "slot": index, "generation": self.generation, "name": self.config.name,
            "heartbeat_interval": self.config.heartbeat_interval,
            "heartbeat_timeout": max(self.config.heartbeat_timeout, 2.0),
            "debug": self.config.debug, "parent_pid": os.getpid(), "master_pid": os.getpid(),
            "log_calls": self.config.log_calls,
        }
        slot = self.slots.get(index)
        if slot is not None and slot.agent is not None:
            # a slot of an agent on another host: the agent starts the process, on the code it has
            worker.sock = self.router.rsock
            worker.process = self.router.agents.spawn(slot.agent, worker, spec)
        else:
            worker.sock = self.router.wsock
            env = self.router.child_environ()
            env["_CLUSTERD_SPEC"] = json.dumps(spec)
            env["PYTHONUNBUFFERED"] = "1"
            worker.process = self.spawner.spawn(worker, env, f"clusterd-worker:{self.config.name}:{index}",
                                                self.generation)
        worker.pid = worker.process.pid
        self.by_ident[ident] = worker
        log.event("worker-start", f"{worker.label()} starting", slot=index, pid=worker.pid,
                  generation=self.generation)
        return worker

    def _on_line(self, worker: Worker, line: bytes) -> None:
        if worker.pid is None and worker.process is not None:
            worker.pid = worker.process.pid
        self._emit_line(worker, line)

    def _on_exit(self, worker: Worker, returncode: int | None) -> None:
        if worker.pid is None and worker.process is not None:
            worker.pid = worker.process.pid
        self.worker_exited(worker, returncode)

    def _emit_line(self, worker: Worker, line: bytes) -> None:
        rec = log.parse_record(line)
        if rec is None:
            worker.output_tail.append(line.decode("utf-8", "replace").rstrip("\r"))
        elif isinstance(rec.get("boot_failure"), dict):
            # the pipe is read to its end before the exit is handled: the failure is known in time
            self.on_boot_failure(worker.ident, rec["boot_failure"])
            return
        elif log.worker_record(rec, worker.slot, worker.pid):
            return
        log.worker_line(line, worker.slot, worker.pid)

    # ------------------------------------------------------------------ messages from workers
    def on_hello(self, ident: bytes, info: dict) -> None:
        worker = self.by_ident.get(ident)
        if worker is None or worker.state is not WorkerState.STARTING:
            return
        worker.state = WorkerState.READY
        worker.ready_at = time.time()
        worker.pid = info.get("pid") or worker.pid
        worker.methods = info.get("methods") or {}
        if worker.generation == self.generation:
            self.router.learn_methods(worker.methods)
        slot = self.slots.get(worker.slot)
        log.event("worker-ready", f"{worker.label()} ready", slot=worker.slot, pid=worker.pid,
                  generation=worker.generation)
        if slot is None or self.stopping:
            self.retire(worker, "stop" if self.stopping else "scale")
            return
        if slot.incoming is worker:
            old = slot.active
            slot.incoming = None
            slot.active = worker
            if old is not None and old.state in (WorkerState.READY, WorkerState.STARTING):
                self.retire(old, old.retire_reason or "reload")
            if old is not None and old.retire_reason in RESTART_REASONS:
                slot.restarts += 1  # recycled (hung, memory, requests): a restart, as pm2 and supervisord count
            fut = self._replacements.pop(worker.slot, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
        if slot.active is worker:
            self.balancer.add(worker)
        self.router.on_worker_ready(worker)
        if self.booting and self._boot_waiter is not None and not self._boot_waiter.done():
            if all(s.active is not None and s.active.state is WorkerState.READY for s in self.slots.values()):
                self._boot_waiter.set_result(None)

    def on_boot_failure(self, ident: bytes, info: dict) -> None:
        worker = self.by_ident.get(ident)
        if worker is None or getattr(worker, "boot_reported", False):
            return
        worker.boot_error = info
        worker.boot_reported = True
        if not self.booting:  # at boot, `run` prints it once as the reason it exits
            tb = info.get("traceback") if isinstance(info, dict) else None
            log.logger.error("%s failed to start: %s", worker.label(), info.get("error") if isinstance(info, dict)
                             else info, extra={"event": "worker-start-failed", "slot": worker.slot,
                                               "pid": worker.pid, "exc": tb if isinstance(tb, str) else None})

    def on_beat(self, ident: bytes, info: dict) -> None:
        worker = self.by_ident.get(ident)
        if worker is not None:
            worker.last_beat = time.monotonic()
            stalled = info.get("stalled", 0.0) if isinstance(info, dict) else 0.0
            worker.stalled = stalled if isinstance(stalled, (int, float)) else 0.0

    def on_idle(self, worker: Worker) -> None:
        """A retiring worker finished its last call: tell it to stop."""
        if worker.state is WorkerState.DRAINING and not worker.calls:
            self._send_stop(worker)

    # ------------------------------------------------------------------ retiring and exits
    def retire(self, worker: Worker, reason: str) -> None:
        """Take a worker out of service: it finishes its calls, then stops (bounded by graceful timeout)."""
        if worker.state in (WorkerState.STOPPING, WorkerState.EXITED):
            return
        worker.retire_reason = worker.retire_reason or reason
        self.balancer.remove(worker)
        if worker.state is WorkerState.STARTING:
            self._send_stop(worker)
            return
        worker.state = WorkerState.DRAINING
        worker.stop_deadline = time.monotonic() + self.config.graceful_timeout
        log.event("worker-drain", f"{worker.label()} draining ({worker.retire_reason})", slot=worker.slot,
                  pid=worker.pid, reason=worker.retire_reason)
        if not worker.calls:
            self._send_stop(worker)

    def _send_stop(self, worker: Worker) -> None:
        worker.state = WorkerState.STOPPING
        if worker.stop_deadline is None:
            worker.stop_deadline = time.monotonic() + self.config.graceful_timeout
        self.router.send_stop(worker)

    def kill(self, worker: Worker, reason: str) -> None:
        """Kill a worker that cannot be stopped gracefully (hung, runaway, past its deadline)."""
        if worker.retire_reason is None:
            worker.retire_reason = reason
        self.balancer.remove(worker)
        if worker.state is not WorkerState.EXITED:
            worker.state = WorkerState.STOPPING
        if worker.process is not None:
            worker.process.kill()
        else:
            self.worker_exited(worker, None)

    def worker_exited(self, worker: Worker, returncode: int | None) -> None:
        if worker.state is WorkerState.EXITED:
            return
        was_ready = worker.ready_at is not None
        if worker.calls or not was_ready:
            # answers it sent before it died are delivered, not -32002; a start-up failure it sent is read
            self.router.flush_worker_messages()
        worker.state = WorkerState.EXITED
        self.balancer.remove(worker)
        self.by_ident.pop(worker.ident, None)
        reason = worker.retire_reason or "crashed"
        info = _exit_info(returncode, reason)
        slot = self.slots.get(worker.slot)
        running = _methods_running(worker) if worker.calls else None
        log.event("worker-exit", f"{worker.label()} exited (code {info['code']}, signal {info['signal']},"
                  f" {reason})" + (f" while running {', '.join(map(repr, running))}" if running else ""),
                  level=logging.WARNING if reason in ("crashed", "hung") else logging.INFO,
                  slot=worker.slot, pid=worker.pid, reason=reason, code=info["code"], signal=info["signal"],
                  methods=running)
        self.router.on_worker_gone(worker, info)

        if slot is not None and (was_ready or slot.incoming is not worker):
            slot.last_exit = info  # a newcomer that never started (refused reload) is not the slot's history

        if not was_ready and self.booting and self._boot_waiter is not None and not self._boot_waiter.done():
            self._boot_waiter.set_exception(self._boot_failure(worker, returncode))  # fail fast
        elif not was_ready and slot is not None and slot.incoming is worker:
            # a replacement (reload, recycle) that could not start: whoever serves the slot goes on
            slot.incoming = None
            fut = self._replacements.pop(worker.slot, None)
            if fut is not None and not fut.done():
                fut.set_exception(self._boot_failure(worker, returncode))
            if slot.active is None and not (self.stopping or slot.retired):
                self._restart_after_failure(slot, worker)  # nobody serves it: keep trying, with backoff
        elif slot is not None and slot.active is worker:
            slot.active = None
            if self.stopping or slot.retired:
                pass
            elif reason in ("crashed", "hung"):
                if slot.incoming is not None:
                    slot.restarts += 1  # its replacement was already starting (a recycled runaway)
                self._restart_after_failure(slot, worker)
            else:
                self._respawn(slot)
        if slot is not None and slot.retired and slot.active is None and slot.incoming is None:
            self.slots.pop(worker.slot, None)
        if not self.by_ident:
            self._exited.set()
        waiters, self._exit_waiters = self._exit_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _boot_failure(self, worker: Worker, returncode: int | None) -> BootFailure:
        err = worker.boot_error or {}
        tb = err.get("traceback") or "\n".join(worker.output_tail)
        error = err.get("error") or (f"worker exited with code {returncode}" if returncode is not None
                                     and returncode >= 0 else f"worker killed by signal {-(returncode or 0)}")
        return BootFailure(worker, error, tb)

    def _restart_after_failure(self, slot: Slot, worker: Worker) -> None:
        now = time.monotonic()
        if worker.ready_at is not None and time.time() - worker.ready_at >= STABLE_AFTER_S:
            slot.consecutive_failures = 0
        slot.consecutive_failures += 1
        self.failures.append(now)
        while self.failures and now - self.failures[0] > self.config.crash_window:
            self.failures.popleft()
        limit = self.config.crash_limit * max(1, len(self.slots))
        if self.config.crash_limit and len(self.failures) >= limit:
            if not self.fatal.done():
                self.fatal.set_result(f"crash loop: {len(self.failures)} worker failures within "
                                      f"{self.config.crash_window:g}s (limit {self.config.crash_limit} per worker)")
            return
        delay = 0.0 if slot.consecutive_failures <= 1 else min(
            BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (slot.consecutive_failures - 2))
        if delay <= 0:
            self._respawn(slot)
        else:
            log.event("worker-backoff", f"slot {slot.index} keeps failing: restarting in {delay:.1f}s",
                      slot=slot.index)
            slot.restart_handle = self.loop.call_later(delay, self._respawn, slot)

    def _respawn(self, slot: Slot) -> None:
        slot.restart_handle = None
        if self.stopping or slot.retired or slot.active is not None:
            return
        if slot.incoming is not None:
            return  # a replacement is already starting: it takes the slot once ready
        slot.restarts += 1
        try:
            slot.active = self._spawn(slot.index)
        except Exception:  # e.g. no file descriptor left for its pipes: try again, never give the slot up
            log.logger.exception("could not start a worker for slot %s; retrying in %.0fs", slot.index,
                                 BACKOFF_MAX_S)
            slot.restart_handle = self.loop.call_later(BACKOFF_MAX_S, self._respawn, slot)

    # ------------------------------------------------------------------ replacement, reload, scale
    def replace(self, index: int, reason: str) -> asyncio.Future:
        """Start a new worker for the slot; once it is ready the old one drains and stops.

        The future fails with BootFailure when the new worker cannot become ready; the old worker
        then keeps serving.
        """
        existing = self._replacements.get(index)
        if existing is not None:
            return existing
        fut = self.loop.create_future()
        slot = self.slots.get(index)
        if slot is None or self.stopping:
            fut.set_result(None)
            return fut
        if slot.active is not None:
            slot.active.retire_reason = reason
        old = slot.active
        if old is None or old.state is WorkerState.STARTING and old.generation < self.generation:
            # nothing serves this slot: start (or restart) it directly
            if slot.active is not None:
                self.kill(slot.active, reason)
                slot.active = None
            if slot.restart_handle is not None:
                slot.restart_handle.cancel()
                slot.restart_handle = None
            slot.incoming = self._spawn(index)
            slot.active = None
            self._replacements[index] = fut
            return fut
        slot.incoming = self._spawn(index)
        self._replacements[index] = fut
        return fut

    def recycle(self, worker: Worker, reason: str) -> None:
        """Replace a serving worker gracefully (max-memory, max-requests, runaway call)."""
        slot = self.slots.get(worker.slot)
        if slot is None or slot.active is not worker or slot.incoming is not None or self.stopping:
            return
        log.event("worker-recycle", f"{worker.label()} recycled ({reason})", slot=worker.slot, pid=worker.pid,
                  reason=reason)
        fut = self.replace(worker.slot, reason)
        fut.add_done_callback(lambda f: f.exception())  # a failed recycle keeps the old worker

    def local_slots(self) -> list[int]:
        return sorted(i for i, s in self.slots.items() if s.agent is None and not s.retired)

    def scale(self, wanted: int) -> None:
        """Reach `wanted` local workers: new slots take the lowest free numbers, the highest retire first."""
        local = self.local_slots()
        old = len(local)
        self.wanted = wanted
        index = 0
        while len(local) < wanted:
            while index in self.slots:
                index += 1
            self.slots[index] = slot = Slot(index)
            slot.active = self._spawn(index)
            local.append(index)
        for index in sorted(local, reverse=True)[:max(0, len(local) - wanted)]:
            self.retire_slot(index, "scale")
        log.event("scale", f"scaled from {old} to {wanted} workers")

    def retire_slot(self, index: int, reason: str) -> None:
        """Take a slot away: its workers finish what they hold and are not replaced."""
        slot = self.slots.get(index)
        if slot is None:
            return
        slot.retired = True
        if slot.restart_handle is not None:
            slot.restart_handle.cancel()
            slot.restart_handle = None
        fut = self._replacements.pop(index, None)
        if fut is not None and not fut.done():
            fut.set_result(None)
        for worker in (slot.incoming, slot.active):
            if worker is not None:
                self.retire(worker, reason)
        if slot.active is None and slot.incoming is None:
            self.slots.pop(index, None)

    # ------------------------------------------------------------------ periodic health check
    def _schedule_tick(self) -> None:
        self._tick_due = time.monotonic() + self.config.heartbeat_interval
        self._tick_handle = self.loop.call_later(self.config.heartbeat_interval, self._tick)

    def _tick(self) -> None:
        """The health check; it reschedules itself whatever one turn meets (EMFILE, a psutil error)."""
        try:
            log.survive("the periodic health check", self._check_workers)
        finally:
            self._schedule_tick()

    def _credit_own_lateness(self, now: float) -> None:
        """Count missed beats in the master's own loop time: when this loop ran late (the master was
        stopped, or starved of CPU), that gap is not the workers' silence nor their stop deadlines'."""
        late = now - self._tick_due - self.config.heartbeat_interval
        if late <= 0:
            return
        log.event("master-late", f"the master's loop ran {late:.1f}s late: that time is not held against "
                  "workers", level=logging.WARNING)
        for worker in self.by_ident.values():
            worker.last_beat = min(worker.last_beat + late, now)
            if worker.stop_deadline is not None:
                worker.stop_deadline += late

    def _check_workers(self) -> None:
        now = time.monotonic()
        self._credit_own_lateness(now)
        self.router.flush_worker_messages()  # judge on what the workers sent, not on what is still queued
        now = time.monotonic()
        timeout = self.config.heartbeat_timeout
        if getattr(self.router, "rsock", None) is not None:
            self.router.agents.tick(now, timeout)
        for worker in list(self.by_ident.values()):
            if worker.state is WorkerState.EXITED:
                continue
            if worker.stop_deadline is not None and now > worker.stop_deadline:
                log.event("worker-kill", f"{worker.label()} did not stop within the graceful timeout: killed",
                          level=logging.WARNING, slot=worker.slot, pid=worker.pid)
                self.kill(worker, worker.retire_reason or "stop")
                worker.stop_deadline = None
                continue
            silent = now - worker.last_beat
            if silent > timeout or worker.stalled > timeout:
                if worker.retire_reason not in ("hung",):
                    log.event("worker-hung", f"{worker.label()} stopped answering heartbeats: killed",
                              level=logging.WARNING, slot=worker.slot, pid=worker.pid, reason="hung")
                worker.retire_reason = "hung"
                self.kill(worker, "hung")
                continue
            self._measure(worker)
            if (self.config.max_memory and worker.rss_bytes and worker.rss_bytes > self.config.max_memory
                    and worker.state is WorkerState.READY):
                self.recycle(worker, "max-memory")

    def _measure(self, worker: Worker) -> None:
        if worker.agent is not None or worker.process is None or worker.process.pid is None:
            return  # an agent's worker: its agent reports the memory with its beats
        worker.pid = worker.process.pid
        if hasattr(worker.process, "measure"):  # a thread: its own CPU clock, no memory of its own
            worker.rss_bytes, worker.cpu_percent = worker.process.measure()
            return
        ps = getattr(worker, "_ps", None)
        try:
            if ps is None:
                ps = worker._ps = psutil.Process(worker.pid)
                ps.cpu_percent(None)
            worker.rss_bytes = ps.memory_info().rss
            worker.cpu_percent = ps.cpu_percent(None)
        except psutil.Error:
            pass

    # ------------------------------------------------------------------ waiting for workers
    async def wait_generation_gone(self, generation: int, timeout: float) -> None:
        """Wait until no worker older than generation is left (the drains of a reload)."""
        deadline = self.loop.time() + timeout
        while any(w.generation < generation for w in self.by_ident.values()):
            fut = self.loop.create_future()
            self._exit_waiters.append(fut)
            left = deadline - self.loop.time()
            if left <= 0:
                return
            try:
                await asyncio.wait_for(fut, left)
            except TimeoutError:
                return


    # ------------------------------------------------------------------ stop
    async def stop(self, graceful: bool = True) -> None:
        """Stop every worker: gracefully (drain, stop_services) within the timeout, else kill."""
        self.stopping = True
        for slot in self.slots.values():
            if slot.restart_handle is not None:
                slot.restart_handle.cancel()
                slot.restart_handle = None
        for fut in self._replacements.values():
            if not fut.done():
                fut.set_result(None)
        for worker in list(self.by_ident.values()):
            if graceful:
                self.retire(worker, "stop")
            else:
                self.kill(worker, "stop")
        if self.by_ident:
            try:
                await asyncio.wait_for(self._exited.wait(), self.config.graceful_timeout + 5)
            except TimeoutError:
                for worker in list(self.by_ident.values()):
                    self.kill(worker, "stop")
                try:
                    await asyncio.wait_for(self._exited.wait(), 5)
                except TimeoutError:
                    pass
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self.spawner.close()

    # ------------------------------------------------------------------ status
    def workers_document(self) -> list[dict]:
        now = time.time()
        rows = []
        for worker in sorted(self.by_ident.values(), key=lambda w: (w.slot, w.generation, w.started_at)):
            if worker.pid is None and worker.process is not None:
                worker.pid = worker.process.pid
            slot = self.slots.get(worker.slot)
            rows.append({
                "slot": worker.slot, "pid": worker.pid, "state": worker.state.value,
                "generation": worker.generation, "started_at": worker.started_at,
                "uptime_s": round(now - worker.started_at, 3), "ready_at": worker.ready_at,
                "restarts": slot.restarts if slot else 0, "rss_bytes": worker.rss_bytes,
                "cpu_percent": worker.cpu_percent, "inflight": worker.inflight, "served": worker.served,
                "failed": worker.failed, "last_exit": slot.last_exit if slot else None,
                "max_requests": worker.max_requests or None, "host": worker.host, "agent": worker.agent,
                "isolation": getattr(worker.process, "isolation", "process"),
            })
        for slot in self.slots.values():
            if slot.active is None and slot.incoming is None and not slot.retired:
                # between a crash and its restart (backoff): the slot is still shown, with its history
                rows.append({
                    "slot": slot.index, "pid": None, "state": "starting", "generation": self.generation,
                    "started_at": None, "uptime_s": None, "ready_at": None, "restarts": slot.restarts,
                    "rss_bytes": None, "cpu_percent": None, "inflight": 0, "served": 0, "failed": 0,
                    "last_exit": slot.last_exit, "max_requests": None, "host": None, "agent": None,
                    "restart_pending": slot.restart_handle is not None, "isolation": self.config.isolation,
                })
        rows.sort(key=lambda r: r["slot"])
        return rows

    def counts(self) -> dict:
        """Ready and wanted workers, as status and ls both show them."""
        ready, wanted = self.slot_summary()
        return {"ready": ready, "wanted": wanted}

    def slot_summary(self) -> tuple[int, int]:
        ready = sum(1 for s in self.slots.values() if s.active is not None and s.active.state is WorkerState.READY)
        return ready, len([s for s in self.slots.values() if not s.retired])


__all__ = ["Supervisor", "BootFailure"]
