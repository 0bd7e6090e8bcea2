"""`clusterd run`: the master process from start to exit status.

Signals become the control commands (admin.py) run on the loop, as gunicorn's arbiter queues them.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from .. import log, protocol
from ..config import Config
from ..ops.reaper import ChildReaper
from ..systemd import Notifier
from .host import BootFailure
from .reload import installed_version, read_version, watch_sources, watch_version
from .router import Router
from .states import ClusterState

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


async def serve(config: Config, master_cls: type, worker_cls: type) -> int:
    """Run one instance until it is stopped; return the exit status of `clusterd run`."""
    loop = asyncio.get_running_loop()
    version = read_version(config.watch_version) if config.watch_version else installed_version(master_cls)
    router = Router(config, master_cls, worker_cls, Notifier.from_environ(), version)
    router.claim()  # raises InstanceBusy: the CLI turns it into exit status 2
    try:
        return await _serve(loop, router, config)
    finally:
        router.release()


async def _serve(loop: asyncio.AbstractEventLoop, router: Router, config: Config) -> int:
    notifier = router.notifier
    router.open_sockets()
    router.admin.install_signals()
    ChildReaper(loop, router.supervisor.spawner.owned_pids).install()  # PID 1 in a container (ops/reaper.py)
    log.event("master-start", f"{config.name}: master pid {router.endpoint.pid} starting {config.workers} "
              f"workers ({config.worker})", instance=config.name)

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
        router.set_state(ClusterState.RUNNING)
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
    graceful = router.graceful
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
    router.set_state(ClusterState.STOPPING)
    log.event("master-stop", f"{config.name}: stopping ({'graceful' if graceful else 'fast'})")
    router.queue.fail_all()
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
    router.set_state(ClusterState.STOPPED)
    log.event("master-exit", f"{config.name}: stopped")


def _keep_watchdog(loop: asyncio.AbstractEventLoop, notifier: Notifier, interval: float, router: Router) -> None:
    """WATCHDOG=1 from the loop itself: a stuck loop stops feeding systemd's watchdog."""
    def beat() -> None:
        if router.state is not ClusterState.STOPPING:
            notifier.watchdog()
            loop.call_later(interval, beat)
    loop.call_soon(beat)


def run(config: Config, master_cls: type, worker_cls: type) -> int:
    return asyncio.run(serve(config, master_cls, worker_cls))
