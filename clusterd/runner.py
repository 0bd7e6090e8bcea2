"""`clusterd run`: the master process from start to exit status.

Signals only set flags or enqueue work (as gunicorn's arbiter does); the loop does the rest.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from . import log, protocol
from .config import Config
from .master import Router
from .reload import ReloadManager, installed_version, read_version, watch_sources, watch_version
from .supervisor import BootFailure
from .log_ring import LogRing
from .systemd import Notifier
from .worker import set_title

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


async def serve(config: Config, master_cls: type, worker_cls: type) -> int:
    """Run one instance until it is stopped; return the exit status of `clusterd run`."""
    loop = asyncio.get_running_loop()
    set_title(f"clusterd: {config.name} master")
    router = Router(config, master_cls, worker_cls)
    router.dir.claim(config.name)  # raises InstanceBusy: the CLI turns it into exit status 2
    router.log_ring = LogRing(loop)
    log.logger.addHandler(router.log_ring)
    try:
        return await _serve(loop, router, config, master_cls)
    finally:
        log.logger.removeHandler(router.log_ring)
        if router.shared is not None:
            router.shared.close()
        router.close_sockets()
        router.dir.release()


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

    try:
        await router.endpoint.start_services()
    except Exception:
        log.logger.exception("the master's start_services failed")
        return EXIT_FAILURE

    boot = loop.create_task(router.supervisor.start())
    stop_wait = loop.create_task(router.stopped.wait())
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


async def _shutdown(router: Router, graceful: bool) -> None:
    """Stop taking calls, let calls in flight finish, stop workers, then the master's services."""
    config = router.config
    router.state = "stopping"
    if router.notifier is not None:
        router.notifier.stopping()
    log.event("master-stop", f"{config.name}: stopping ({'graceful' if graceful else 'fast'})")
    router.fail_pending()
    sup = router.supervisor
    if not graceful:
        for worker in list(sup.by_ident.values()):
            for call in list(worker.calls.values()):
                router.reply_error(call, protocol.SHUTTING_DOWN)
            worker.calls.clear()
    await sup.stop(graceful=graceful)
    try:
        await asyncio.wait_for(router.endpoint.stop_services(), max(1.0, config.graceful_timeout))
    except TimeoutError:
        log.event("master-stop", "the master's stop_services did not finish within the graceful timeout",
                  level=logging.WARNING)
    except Exception:
        log.logger.exception("the master's stop_services failed")
    log.event("master-exit", f"{config.name}: stopped")


def listening(router: Router) -> list[tuple[str, str]]:
    """Every endpoint this instance listens on, with what it is for (the start-up's "Listening at:")."""
    config = router.config
    out = [(addr, "clients") for addr in config.binds]
    out.append((f"ipc://{config.instance_dir / 'control.sock'}", "control: clients and clusterd commands"))
    out.append((router.worker_endpoint, "worker link"))
    out += [(addr, "workers from agents") for addr in config.worker_binds]
    return out


def _install_signals(loop: asyncio.AbstractEventLoop, router: Router) -> None:
    def scale_by(delta: int) -> None:
        if router.state in ("running", "reloading"):
            target = router.supervisor.wanted + delta
            if target >= 1:
                router.supervisor.scale(target)
                router.update_status_line()

    loop.add_signal_handler(signal.SIGTERM, router.request_stop, True)
    loop.add_signal_handler(signal.SIGINT, router.request_stop, True)
    loop.add_signal_handler(signal.SIGQUIT, router.request_stop, False)
    loop.add_signal_handler(signal.SIGHUP, lambda: router.state in ("running", "reloading")
                            and router.reloads.trigger("SIGHUP"))
    loop.add_signal_handler(signal.SIGTTIN, scale_by, 1)
    loop.add_signal_handler(signal.SIGTTOU, scale_by, -1)


def _keep_watchdog(loop: asyncio.AbstractEventLoop, notifier: Notifier, interval: float, router: Router) -> None:
    """WATCHDOG=1 from the loop itself: a stuck loop stops feeding systemd's watchdog."""
    def beat() -> None:
        if router.state != "stopping":
            notifier.watchdog()
            loop.call_later(interval, beat)
    loop.call_soon(beat)


def run(config: Config, master_cls: type, worker_cls: type) -> int:
    return asyncio.run(serve(config, master_cls, worker_cls))
