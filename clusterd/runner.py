"""`clusterd run`: the master process from start to exit status.

Signals only set flags or enqueue work (as gunicorn's arbiter does); the loop does the rest.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time

from . import log, protocol
from .config import Config
from .log_ring import LogRing
from .master import Router
from .master_code import MasterCode
from .reload import ReloadManager, installed_version, read_version, watch_sources, watch_version
from .supervisor import BootFailure
from .systemd import Notifier
from .worker import set_title

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # a Ctrl-C the blocked loop could not take: 128 + SIGINT, as shells report it


async def serve(config: Config, master_cls: type, worker_cls: type) -> int:
    """Run one instance until it is stopped; return the exit status of `clusterd run`."""
    loop = asyncio.get_running_loop()
    set_title(f"clusterd: {config.name} master")
    router = Router(config, master_cls, worker_cls)
    router.dir.claim(config.name)  # raises InstanceBusy: the CLI turns it into exit status 2
    router.log_ring = LogRing(loop)
    router.master_code = MasterCode(master_cls)
    log.logger.addHandler(router.log_ring)
    try:
        return await _serve(loop, router, config, master_cls)
    finally:
        log.logger.removeHandler(router.log_ring)
        if router.shared is not None:
            router.shared.close()
        router.close_sockets()
        router.dir.release()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # ours needs the loop, which ends here


async def _serve(loop: asyncio.AbstractEventLoop, router: Router, config: Config, master_cls: type) -> int:
    router.notifier = notifier = Notifier.from_environ()
    router.reloads = ReloadManager(router)
    router.version = read_version(config.watch_version) if config.watch_version else installed_version(master_cls)
    try:
        from .shared import SharedBlocks
        router.shared = SharedBlocks(config.name)
    except ImportError:
        router.shared = None
    router.open_sockets()
    _install_signals(loop, router)
    log.event("master-start", f"{config.name}: master pid {router.endpoint.pid} starting {config.workers} "
              f"workers ({config.worker})", instance=config.name)
    for address, what in listening(router):
        log.event("listening", f"Listening at: {address} ({what})", address=address)

    stop_wait = loop.create_task(router.stopped.wait())
    if not await _start_master_services(loop, router, stop_wait):
        stop_wait.cancel()
        return EXIT_FAILURE
    if router.stopped.is_set():  # asked to stop while the master's services started: no worker is started
        await _shutdown(router, getattr(router, "_graceful", True))
        return EXIT_OK

    boot = loop.create_task(router.supervisor.start())
    await asyncio.wait({boot, stop_wait, router.supervisor.fatal}, return_when=asyncio.FIRST_COMPLETED)
    if boot.done() and boot.exception() is not None:
        failure = boot.exception()
        if isinstance(failure, BootFailure):
            message = f"worker {failure.worker.slot} (pid {failure.worker.pid}) failed to start: {failure.error}"
            if log.is_json():
                log.event("boot-failed", message, level=logging.ERROR, slot=failure.worker.slot,
                          pid=failure.worker.pid, traceback=failure.traceback)
            else:
                sys.stderr.write(f"clusterd: {message}\n{failure.traceback.rstrip()}\n")
        elif isinstance(failure, OSError):  # the worker process itself could not be started
            who = f" as user {config.user or config.group}" if config.worker_identity is not None else ""
            log.event("boot-failed", f"cannot start a worker process{who}: {failure.strerror}: {failure.filename}"
                      + (" (that user must be able to run the Python interpreter and read the code)" if who
                         else ""), level=logging.ERROR)
        else:
            log.logger.error("start-up failed", exc_info=failure)
        await _shutdown(router, graceful=False)
        return EXIT_FAILURE
    if not boot.done():
        boot.cancel()

    watchers = []
    if not router.stopped.is_set():
        router.state = "running"
        notifier.ready()
        router.update_status_line()
        log.event("master-ready", f"{config.name}: {config.workers} workers ready", instance=config.name)
        interval = notifier.watchdog_interval()
        if interval:
            _keep_watchdog(loop, notifier, interval, router)
        if config.watch_version:
            watchers.append(loop.create_task(watch_version(router, config.watch_version)))
        if config.reload_on_change:
            watchers.append(loop.create_task(watch_sources(router, config.reload_on_change)))
        await asyncio.wait({stop_wait, router.supervisor.fatal}, return_when=asyncio.FIRST_COMPLETED)

    for task in watchers:
        task.cancel()
    code = EXIT_OK
    graceful = getattr(router, "_graceful", True)
    if router.supervisor.fatal.done():
        log.event("master-fatal", f"{config.name}: {router.supervisor.fatal.result()}; stopping",
                  level=logging.ERROR)
        code = EXIT_FAILURE
        graceful = False
    await _shutdown(router, graceful)
    return code


async def _start_master_services(loop: asyncio.AbstractEventLoop, router: Router, stop_wait: asyncio.Task) -> bool:
    """Run the master's start_services; False if it failed.

    A stop asked for meanwhile says what it waits for; it waits at most the graceful timeout, and a
    second Ctrl-C (or SIGQUIT) cuts it short: start_services is cancelled."""
    config = router.config
    started = time.monotonic()
    services = loop.create_task(router.endpoint.start_services())
    await asyncio.wait({services, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    if not services.done():
        log.event("master-stop", f"{config.name}: stopping once the master's start_services has finished "
                  f"(running for {time.monotonic() - started:.1f}s; waiting at most {config.graceful_timeout:g}s "
                  "more); press Ctrl-C again to stop at once", level=logging.WARNING)
        if not await _finished_unless_hurried(services, router, config.graceful_timeout):
            services.cancel()
            await asyncio.wait({services}, timeout=1.0)
            return True
    if services.cancelled():
        return True
    if services.exception() is not None:
        log.logger.error("the master's start_services failed", exc_info=services.exception())
        return False
    return True


async def _finished_unless_hurried(task: asyncio.Future, router: Router, timeout: float | None) -> bool:
    """Wait for task until the timeout or a fast stop; True if it finished."""
    hurried = asyncio.ensure_future(router.hurried.wait())
    try:
        await asyncio.wait({task, hurried}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hurried.cancel()
    return task.done()


def _drop_calls_in_flight(router: Router) -> None:
    for worker in list(router.supervisor.by_ident.values()):
        for call in list(worker.calls.values()):
            router.reply_error(call, protocol.SHUTTING_DOWN)
        worker.calls.clear()


async def _shutdown(router: Router, graceful: bool) -> None:
    """Stop taking calls, let calls in flight finish, stop workers, then the master's services.

    A fast stop asked for meanwhile (a second Ctrl-C, SIGQUIT) kills what is still running."""
    config = router.config
    router.state = "stopping"
    if router.notifier is not None:
        router.notifier.stopping()
    router.fail_pending()
    sup = router.supervisor
    if graceful and not router.hurried.is_set():
        workers = list(sup.by_ident.values())
        starting = sum(1 for w in workers if w.ready_at is None)
        calls = sum(len(w.calls) for w in workers)
        log.event("master-stop", f"{config.name}: stopping (graceful): waiting at most {config.graceful_timeout:g}s "
                  f"for {len(workers)} workers ({starting} still starting, {calls} calls in flight); "
                  "press Ctrl-C again to stop at once")
        stopping = asyncio.ensure_future(sup.stop(graceful=True))
        if not await _finished_unless_hurried(stopping, router, None):
            log.event("master-stop", f"{config.name}: stopping at once", level=logging.WARNING)
            _drop_calls_in_flight(router)
            for worker in list(sup.by_ident.values()):
                sup.kill(worker, "stop")
        await stopping
    else:
        log.event("master-stop", f"{config.name}: stopping (fast)")
        _drop_calls_in_flight(router)
        await sup.stop(graceful=False)
    services = asyncio.ensure_future(router.endpoint.stop_services())
    if not await _finished_unless_hurried(services, router, max(1.0, config.graceful_timeout)):
        if not router.hurried.is_set():
            log.event("master-stop", "the master's stop_services did not finish within the graceful timeout",
                      level=logging.WARNING)
        services.cancel()
        await asyncio.wait({services}, timeout=1.0)
    elif not services.cancelled() and services.exception() is not None:
        log.logger.error("the master's stop_services failed", exc_info=services.exception())
    log.event("master-exit", f"{config.name}: stopped")


def listening(router: Router) -> list[tuple[str, str]]:
    """Every endpoint this instance listens on, with what it is for (the start-up's "Listening at:")."""
    config = router.config
    out = [(addr, "clients") for addr in config.binds]
    out.append((f"ipc://{config.instance_dir / 'control.sock'}", "control: clients and clusterd commands"))
    out.append((router.worker_endpoint, "worker link"))
    out += [(addr, "workers from agents") for addr in config.worker_binds]
    # the HTTP front door and the metrics server, where this build has them (DESIGN.md 12, 13)
    out += [(f"http://{addr}", "HTTP and WebSocket clients") for addr in getattr(config, "http_binds", None) or ()]
    metrics = getattr(config, "metrics_bind", None)
    if metrics:
        out.append((f"http://{metrics}", "metrics"))
    return out


def _install_signals(loop: asyncio.AbstractEventLoop, router: Router) -> None:
    def scale_by(delta: int) -> None:
        if router.state in ("running", "reloading"):
            target = router.supervisor.wanted + delta
            if target >= 1:
                router.supervisor.scale(target)
                router.update_status_line()

    loop.add_signal_handler(signal.SIGTERM, router.request_stop, True)
    signal.signal(signal.SIGINT, _Interrupts(loop, router))
    loop.add_signal_handler(signal.SIGQUIT, router.request_stop, False)
    loop.add_signal_handler(signal.SIGHUP, lambda: router.state in ("running", "reloading")
                            and router.reloads.trigger("SIGHUP"))
    loop.add_signal_handler(signal.SIGTTIN, scale_by, 1)
    loop.add_signal_handler(signal.SIGTTOU, scale_by, -1)


class _Interrupts:
    """Ctrl-C: the first asks for a graceful stop, the next one for a fast stop (as uvicorn, gunicorn).

    A plain signal handler, not the loop's: it runs in the main thread even while user code blocks
    the loop (a time.sleep in start_services). If the loop has not taken the previous Ctrl-C within
    a second, the next one exits right there with status 130, after removing the instance's files:
    its workers and zygotes die with it (parent-death signal)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, router: Router) -> None:
        self.loop = loop
        self.router = router
        self.pending_since: float | None = None

    def __call__(self, signum: int, frame: object) -> None:
        now = time.monotonic()
        if self.pending_since is not None and now - self.pending_since > 1.0:
            sys.stderr.write(f"clusterd: {self.router.config.name}: the master's event loop is blocked (by user "
                             "code?) and did not take the previous Ctrl-C: exiting at once\n")
            sys.stderr.flush()
            self.router.dir.release()
            os._exit(EXIT_INTERRUPTED)
        if self.pending_since is None:
            self.pending_since = now
        try:
            self.loop.call_soon_threadsafe(self._in_loop)
        except RuntimeError:  # the loop has already closed: the master is on its way out
            raise KeyboardInterrupt from None

    def _in_loop(self) -> None:
        self.pending_since = None
        self.router.request_stop(graceful=not self.router.stopped.is_set())


def _keep_watchdog(loop: asyncio.AbstractEventLoop, notifier: Notifier, interval: float, router: Router) -> None:
    """WATCHDOG=1 from the loop itself: a stuck loop stops feeding systemd's watchdog."""
    def beat() -> None:
        if router.state != "stopping":
            log.survive("the systemd watchdog notification", notifier.watchdog)
            loop.call_later(interval, beat)
    loop.call_soon(beat)


def run(config: Config, master_cls: type, worker_cls: type) -> int:
    return asyncio.run(serve(config, master_cls, worker_cls))
