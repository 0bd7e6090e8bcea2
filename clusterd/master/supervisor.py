"""Worker lifecycle: spawning, restart with backoff, crash loops, heartbeats, recycling, scaling
and the generations of a rolling reload.

Like gunicorn's arbiter, it reconciles the wanted set of workers with the actual one; every change
(restart, scale, recycle, reload) is "start a worker for a slot" or "retire a worker", and what a
slot needs next is decided in one place, `reconcile(slot)`. It owns the worker table and knows
nothing of sockets: it tells the rest of the master what happens through a `SupervisorHost`
(the router implements it), so it can be driven in a test with a fake host and a fake spawner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .. import protocol
from ..ops import log
from ..settings import Config
from ..worker.handles import OnExit, OnLine, Spawner
from .balancer import Balancer
from .health import HealthCheck
from .host import BootFailure, SupervisorHost, exit_info
from .launch import Launcher
from .pool import Slot, Worker
from .restart import BACKOFF_MAX_S, CrashLoop, RestartPolicy
from .slot_changes import SlotChanges
from .states import ExitReason, WorkerState

# recycled for these, a worker's replacement counts as a restart of its slot (as pm2 and supervisord count)
RESTART_REASONS = (ExitReason.HUNG, ExitReason.MAX_MEMORY, ExitReason.MAX_REQUESTS, ExitReason.CRASHED)


def _how(info: dict) -> str:
    """ "code 1, " or "signal 9, " for an exit line: only what is known (an agent's worker may have neither)."""
    return "".join(f"{key} {info[key]}, " for key in ("code", "signal") if info[key] is not None)


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


class Supervisor(SlotChanges):
    """The worker table and every change to it; slot changes (replace, scale, generations) in SlotChanges."""

    def __init__(self, config: Config, host: SupervisorHost,
                 make_spawner: Callable[[OnLine, OnExit], Spawner]) -> None:
        self.config = config
        self.host = host
        self.loop = asyncio.get_running_loop()
        self.wanted = config.workers
        self.generation = 1
        self.slots: dict[int, Slot] = {}
        self.by_ident: dict[bytes, Worker] = {}
        self.balancer = Balancer(least_busy=config.balance != "round-robin")
        self.policy = RestartPolicy(config.crash_limit, config.crash_window)
        self.booting = True
        self.stopping = False
        self.fatal: asyncio.Future = self.loop.create_future()
        self._boot_waiter: asyncio.Future | None = None
        self._replacements: dict[int, asyncio.Future] = {}
        self._exited = asyncio.Event()
        self.launcher = Launcher(config, host, make_spawner, self.worker_exited, self.on_boot_failure)
        self.spawner = self.launcher.spawner
        self._exit_waiters: list[asyncio.Future] = []
        self.health = HealthCheck(self)

    # ------------------------------------------------------------------ start and spawn
    async def start(self) -> None:
        """Start every slot; raise BootFailure if any worker dies before it is ready (fail fast)."""
        self._boot_waiter = self.loop.create_future()
        for index in range(self.wanted):
            self.slots[index] = slot = Slot(index)
            slot.active = self._spawn(index)
        self.health.start()
        if self.wanted:
            await self._boot_waiter
        self.booting = False

    def _spawn(self, index: int) -> Worker:
        slot = self.slots.get(index)
        worker = self.launcher.start(index, self.generation, slot.agent if slot is not None else None)
        self.by_ident[worker.ident] = worker
        return worker

    def set_worker_state(self, worker: Worker, state: WorkerState) -> None:
        """The one place a worker's state changes (and leaves the balancer unless it is READY)."""
        worker.state = state
        if state is not WorkerState.READY:
            self.balancer.remove(worker)

    # ------------------------------------------------------------------ messages from workers
    def on_hello(self, ident: bytes, info: dict) -> None:
        worker = self.by_ident.get(ident)
        if worker is None or worker.state is not WorkerState.STARTING:
            return
        self.set_worker_state(worker, WorkerState.READY)
        worker.ready_at = time.time()
        worker.pid = info.get("pid") or worker.pid
        worker.methods = info.get("methods") or {}
        if worker.generation == self.generation:
            self.host.learn_methods(worker.methods)
        slot = self.slots.get(worker.slot)
        log.event("worker-ready", f"{worker.label()} ready", slot=worker.slot, pid=worker.pid,
                  generation=worker.generation)
        if slot is None or self.stopping:
            self.retire(worker, ExitReason.STOP if self.stopping else ExitReason.SCALE)
            return
        if slot.incoming is worker:
            self._promote(slot, worker)
        if slot.active is worker:
            self.balancer.add(worker)
        self.host.on_worker_ready(worker)
        if self.booting and self._boot_waiter is not None and not self._boot_waiter.done():
            if all(s.active is not None and s.active.state is WorkerState.READY for s in self.slots.values()):
                self._boot_waiter.set_result(None)

    def _promote(self, slot: Slot, worker: Worker) -> None:
        """A replacement is ready: it serves the slot, and the worker it replaces drains."""
        old = slot.active
        slot.incoming = None
        slot.active = worker
        if old is not None and old.state in (WorkerState.READY, WorkerState.STARTING):
            self.retire(old, old.retire_reason or ExitReason.RELOAD)
        if old is not None and old.retire_reason in RESTART_REASONS:
            slot.restarts += 1  # recycled (hung, memory, requests): a restart, as pm2 and supervisord count
        self._settle_replacement(slot.index)

    def _settle_replacement(self, index: int, failure: BaseException | None = None) -> None:
        fut = self._replacements.pop(index, None)
        if fut is not None and not fut.done():
            if failure is None:
                fut.set_result(None)
            else:
                fut.set_exception(failure)

    def on_boot_failure(self, ident: bytes, info: dict) -> None:
        """A worker's report of why it could not start (its FAILURE message, or the same line on its
        output pipe, whichever comes first): kept for the boot failure, and logged once after boot."""
        worker = self.by_ident.get(ident)
        if worker is None or worker.boot_reported:
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
            worker.heard = True
            stalled = info.get("stalled", 0.0) if isinstance(info, dict) else 0.0
            worker.stalled = stalled if isinstance(stalled, (int, float)) else 0.0
            http = info.get("http") if isinstance(info, dict) else None
            if isinstance(http, dict):
                self.on_door_figures(worker, http)

    def on_door_figures(self, worker: Worker, http: dict) -> None:
        """Its HTTP/WebSocket door's figures (with a beat, or at once when its calls reach --max-requests):
        the door's calls count toward --max-requests as the calls the master sends it do."""
        worker.http = http
        served = http.get("served")
        if type(served) is int and served > worker.door_served:  # a beat may arrive after a later report
            worker.door_served = served
        if worker.state is WorkerState.READY and worker.past_max_requests():
            self.recycle(worker, ExitReason.MAX_REQUESTS)

    def on_idle(self, worker: Worker) -> None:
        """A retiring worker finished its last call: tell it to stop."""
        if worker.state is WorkerState.DRAINING and not worker.calls:
            self._send_stop(worker)

    # ------------------------------------------------------------------ retiring and exits
    def retire(self, worker: Worker, reason: ExitReason) -> None:
        """Take a worker out of service: it finishes its calls, then stops (bounded by graceful timeout)."""
        if worker.state in (WorkerState.STOPPING, WorkerState.EXITED):
            return
        worker.retire_reason = worker.retire_reason or reason
        if worker.state is WorkerState.STARTING:
            self._send_stop(worker)
            return
        self.set_worker_state(worker, WorkerState.DRAINING)
        worker.stop_deadline = time.monotonic() + self.config.graceful_timeout
        log.event("worker-drain", f"{worker.label()} draining ({worker.retire_reason})", slot=worker.slot,
                  pid=worker.pid, reason=worker.retire_reason)
        if not worker.calls:
            self._send_stop(worker)

    def _send_stop(self, worker: Worker) -> None:
        self.set_worker_state(worker, WorkerState.STOPPING)
        if worker.stop_deadline is None:
            worker.stop_deadline = time.monotonic() + self.config.graceful_timeout
        self.host.send_stop(worker)

    def kill(self, worker: Worker, reason: ExitReason) -> None:
        """Kill a worker that cannot be stopped gracefully (hung, runaway, past its deadline)."""
        if worker.retire_reason is None:
            worker.retire_reason = reason
        if worker.state is not WorkerState.EXITED:
            self.set_worker_state(worker, WorkerState.STOPPING)
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
            self.host.flush_worker_messages()
        self.set_worker_state(worker, WorkerState.EXITED)
        self.by_ident.pop(worker.ident, None)
        reason = worker.retire_reason or ExitReason.CRASHED
        info = exit_info(returncode, reason)
        running = _methods_running(worker) if worker.calls else None
        log.event("worker-exit", f"{worker.label()} exited ({_how(info)}{reason})"
                  + (f" while running {', '.join(map(repr, running))}" if running else ""),
                  level=logging.WARNING if reason.failure else logging.INFO,
                  slot=worker.slot, pid=worker.pid, reason=reason, code=info["code"], signal=info["signal"],
                  methods=running)
        self.host.on_worker_gone(worker, info)
        slot = self.slots.get(worker.slot)
        if not was_ready and self.booting and self._boot_waiter is not None and not self._boot_waiter.done():
            self._boot_waiter.set_exception(BootFailure.of(worker, returncode))  # fail fast
            if slot is not None:
                slot.last_exit = info
        elif slot is not None:
            if was_ready or slot.incoming is not worker:
                slot.last_exit = info  # a newcomer that never started (refused reload) is not the slot's history
            if not was_ready and slot.incoming is worker:
                # a replacement (reload, recycle) that could not start: whoever serves the slot goes on
                slot.incoming = None
                self._settle_replacement(slot.index, BootFailure.of(worker, returncode))
                self.reconcile(slot, failed=worker)
            elif slot.active is worker:
                slot.active = None
                if reason.failure and slot.incoming is not None:
                    slot.restarts += 1  # its replacement was already starting (a recycled runaway)
                self.reconcile(slot, failed=worker if reason.failure else None)
            elif slot.retired:
                self.reconcile(slot)
        if not self.by_ident:
            self._exited.set()
        waiters, self._exit_waiters = self._exit_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def reconcile(self, slot: Slot, failed: Worker | None = None) -> None:
        """What a slot needs next, decided in one place: let it go, leave it, or start its worker
        (after a backoff when its workers keep failing; a crash loop stops the instance)."""
        if slot.retired:
            if slot.active is None and slot.incoming is None:
                self.slots.pop(slot.index, None)
            return
        if self.stopping or slot.active is not None:
            return
        delay = 0.0
        if failed is not None:
            served_for = time.time() - failed.ready_at if failed.ready_at is not None else None
            try:
                slot.consecutive_failures, delay = self.policy.failed(slot.consecutive_failures, served_for,
                                                                      len(self.slots))
            except CrashLoop as loop:
                if not self.fatal.done():
                    self.fatal.set_result(str(loop))
                return
        if slot.incoming is not None or slot.restart_handle is not None:
            return  # a worker is already starting (or due to) for this slot
        if delay > 0:
            log.event("worker-backoff", f"slot {slot.index} keeps failing: restarting in {delay:.1f}s",
                      slot=slot.index)
            slot.restart_handle = self.loop.call_later(delay, self._restart_due, slot)
            return
        slot.restarts += 1
        try:
            slot.active = self._spawn(slot.index)
        except Exception:  # e.g. no file descriptor left for its pipes: try again, never give the slot up
            log.logger.exception("could not start a worker for slot %s; retrying in %.0fs", slot.index,
                                 BACKOFF_MAX_S)
            slot.restart_handle = self.loop.call_later(BACKOFF_MAX_S, self._restart_due, slot)

    def _restart_due(self, slot: Slot) -> None:
        slot.restart_handle = None
        if self.slots.get(slot.index) is slot:
            self.reconcile(slot)

    def _cancel_restart(self, slot: Slot) -> None:
        if slot.restart_handle is not None:
            slot.restart_handle.cancel()
            slot.restart_handle = None

    # ------------------------------------------------------------------ waiting for workers, stop
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

    async def stop(self, graceful: bool = True) -> None:
        """Stop every worker: gracefully (drain, stop_services) within the timeout, else kill."""
        self.stopping = True
        for slot in self.slots.values():
            self._cancel_restart(slot)
        for index in list(self._replacements):
            self._settle_replacement(index)
        for worker in list(self.by_ident.values()):
            if graceful:
                self.retire(worker, ExitReason.STOP)
            else:
                self.kill(worker, ExitReason.STOP)
        if self.by_ident:
            try:
                await asyncio.wait_for(self._exited.wait(), self.config.graceful_timeout + 5)
            except TimeoutError:
                for worker in list(self.by_ident.values()):
                    self.kill(worker, ExitReason.STOP)
                try:
                    await asyncio.wait_for(self._exited.wait(), 5)
                except TimeoutError:
                    pass
        self.health.stop()
        self.spawner.close()

    def counts(self) -> dict:
        """Ready and wanted workers, as status, ls and health all show them."""
        ready, wanted = self.slot_summary()
        return {"ready": ready, "wanted": wanted}

    def slot_summary(self) -> tuple[int, int]:
        ready = sum(1 for s in self.slots.values() if s.active is not None and s.active.state is WorkerState.READY)
        return ready, len([s for s in self.slots.values() if not s.retired])


__all__ = ["Supervisor", "SupervisorHost", "BootFailure"]
