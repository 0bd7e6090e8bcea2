"""`clusterd run`: the master process from start to exit status.

Signals become the control commands (signals.py, admin.py), run on the loop; the loop does the rest.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time

from .. import protocol
from ..event_loop import use_fastest
from ..log_ring import LogRing
from ..ops import log, tracing
from ..ops.reaper import ChildReaper
from ..ops.systemd import Notifier
from ..proctitle import set_title
from ..settings import Config
from .host import BootFailure
from .master_code import MasterCode
from .reload import installed_version, read_version, watch_sources, watch_version
from .router import Router
from .signals import install_signals
from .states import ClusterState, ExitReason

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


async def serve(config: Config, master_cls: type, worker_cls: type) -> int:
    """Run one instance until it is stopped; return the exit status of `clusterd run`."""
    loop = asyncio.get_running_loop()
    set_title(f"clusterd: {config.name} master")
    version = read_version(config.watch_version) if config.watch_version else installed_version(master_cls)
    router = Router(config, master_cls, worker_cls, Notifier.from_environ(), version)
    router.claim()  # raises InstanceBusy: the CLI turns it into exit status 2
    router.log_ring = LogRing(loop)
    router.master_code = MasterCode(master_cls)
    log.logger.addHandler(router.log_ring)
    reaper = ChildReaper(loop, router.supervisor.spawner.owned_pids).install()  # PID 1 in a container
    try:
        router.front.open()  # raises BindError: the CLI prints its one line, exit status 1
        return await _serve(loop, router, config)
    finally:
        reaper.close()  # before the loop closes: a SIGCHLD must not find its wake-up pipe closed
        await router.telemetry.close()
        log.logger.removeHandler(router.log_ring)
        router.release()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # ours needs the loop, which ends here


async def _serve(loop: asyncio.AbstractEventLoop, router: Router, config: Config) -> int:
    router.open_sockets()
    try:
        await router.telemetry.start()
    except OSError as exc:
        sys.stderr.write(f"clusterd: --metrics-bind {config.metrics_bind}: cannot listen: {exc.strerror or exc}\n")
        return EXIT_USAGE
    if router.telemetry.address is not None:
        host, port = router.telemetry.address
        log.event("metrics-listening", f"metrics at http://{_url_host(host)}:{port}/metrics"
                  + (f", dashboard at http://{_url_host(host)}:{port}/dashboard" if config.dashboard else ""),
                  host=host, port=port)
    install_signals(router)
    log.event("master-start", f"{config.name}: master pid {router.endpoint.pid} starting {config.workers} "
              f"workers ({config.worker})", instance=config.name)
    for address, what in listening(router):
        log.event("listening", f"Listening at: {address} ({what})", address=address)

    stop_wait = loop.create_task(router.stopped.wait())
    if not await _start_master_services(loop, router, stop_wait):
        stop_wait.cancel()
        return EXIT_FAILURE
    router.tracing = tracing.load(router.telemetry.exporter_version)  # after start_services: it may set a provider
    if router.stopped.is_set():  # asked to stop while the master's services started: no worker is started
        await _shutdown(router, router.graceful)
        return EXIT_OK
    if not await _boot(loop, router, stop_wait):
        await _shutdown(router, graceful=False)
        return EXIT_FAILURE
    if not router.stopped.is_set():
        await _run_until_stopped(loop, router, stop_wait)
    code = EXIT_OK
    graceful = router.graceful
    if router.supervisor.fatal.done():
        log.event("master-fatal", f"{config.name}: {router.supervisor.fatal.result()}; stopping",
                  level=logging.ERROR)
        code = EXIT_FAILURE
        graceful = False
    await _shutdown(router, graceful)
    return code


async def _boot(loop: asyncio.AbstractEventLoop, router: Router, stop_wait: asyncio.Task) -> bool:
    """Start the workers; False (with the failure reported) if one could not start."""
    boot = loop.create_task(router.supervisor.start())
    await asyncio.wait({boot, stop_wait, router.supervisor.fatal}, return_when=asyncio.FIRST_COMPLETED)
    if not boot.done():
        boot.cancel()
        return True
    failure = boot.exception()
    if failure is None:
        return True
    if isinstance(failure, BootFailure):
        message = f"worker {failure.worker.slot} (pid {failure.worker.pid}) failed to start: {failure.error}"
        if log.is_json():
            log.event("boot-failed", message, level=logging.ERROR, slot=failure.worker.slot,
                      pid=failure.worker.pid, traceback=failure.traceback)
        else:
            sys.stderr.write(f"clusterd: {message}\n{failure.traceback.rstrip()}\n")
    elif isinstance(failure, OSError):  # the worker process itself could not be started
        config = router.config
        who = f" as user {config.user or config.group}" if config.worker_identity is not None else ""
        log.event("boot-failed", f"cannot start a worker process{who}: {failure.strerror}: {failure.filename}"
                  + (" (that user must be able to run the Python interpreter and read the code)" if who else ""),
                  level=logging.ERROR)
    else:
        log.logger.error("start-up failed", exc_info=failure)
    return False


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


async def _run_until_stopped(loop: asyncio.AbstractEventLoop, router: Router, stop_wait: asyncio.Task) -> None:
    """Running: the watchdog and the reload triggers, until a stop or a crash loop."""
    config = router.config
    router.set_state(ClusterState.RUNNING)
    log.event("master-ready", f"{config.name}: {log.plural(config.workers, 'worker')} ready", instance=config.name)
    for bind in config.http_binds:
        log.event("http-listen", f"{config.name}: HTTP and WebSocket on {bind}"
                  + (f", dashboard at http://{bind}/dashboard" if config.dashboard and not bind.startswith("unix:")
                     else ""), bind=bind)
    interval = router.notifier.watchdog_interval() if router.notifier is not None else None
    if interval:
        _keep_watchdog(loop, router.notifier, interval, router)
    watchers = []
    if config.watch_version:
        watchers.append(loop.create_task(watch_version(router, config.watch_version)))
    if config.reload_on_change:
        watchers.append(loop.create_task(watch_sources(router, config.reload_on_change)))
    await asyncio.wait({stop_wait, router.supervisor.fatal}, return_when=asyncio.FIRST_COMPLETED)
    for task in watchers:
        task.cancel()


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
                  f"more){_hurry_hint(router)}", level=logging.WARNING)
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


def _hurry_hint(router: Router) -> str:
    """How to cut a graceful stop short: a second Ctrl-C only makes sense after a Ctrl-C."""
    if router.interrupted:
        return "; press Ctrl-C again to stop at once"
    return f"; `kill -QUIT {os.getpid()}` stops at once"


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
    router.set_state(ClusterState.STOPPING)
    router.queue.fail_all()
    sup = router.supervisor
    if graceful and not router.hurried.is_set():
        workers = list(sup.by_ident.values())
        starting = sum(1 for w in workers if w.ready_at is None)
        calls = sum(len(w.calls) for w in workers)
        log.event("master-stop", f"{config.name}: stopping (graceful): waiting at most {config.graceful_timeout:g}s "
                  f"for {log.plural(len(workers), 'worker')} ({starting} still starting, {calls} calls in flight)"
                  f"{_hurry_hint(router)}")
        stopping = asyncio.ensure_future(sup.stop(graceful=True))
        if not await _finished_unless_hurried(stopping, router, None):
            log.event("master-stop", f"{config.name}: stopping at once", level=logging.WARNING)
            _drop_calls_in_flight(router)
            for worker in list(sup.by_ident.values()):
                sup.kill(worker, ExitReason.STOP)
        await stopping
    else:
        log.event("master-stop", f"{config.name}: stopping (fast)")
        _drop_calls_in_flight(router)
        await sup.stop(graceful=False)
    await _stop_master_services(router)
    router.set_state(ClusterState.STOPPED)
    log.event("master-exit", f"{config.name}: stopped")


async def _stop_master_services(router: Router) -> None:
    services = asyncio.ensure_future(router.endpoint.stop_services())
    if not await _finished_unless_hurried(services, router, max(1.0, router.config.graceful_timeout)):
        if not router.hurried.is_set():
            log.event("master-stop", "the master's stop_services did not finish within the graceful timeout",
                      level=logging.WARNING)
        services.cancel()
        await asyncio.wait({services}, timeout=1.0)
    elif not services.cancelled() and services.exception() is not None:
        log.logger.error("the master's stop_services failed", exc_info=services.exception())


def _keep_watchdog(loop: asyncio.AbstractEventLoop, notifier: Notifier, interval: float, router: Router) -> None:
    """WATCHDOG=1 from the loop itself: a stuck loop stops feeding systemd's watchdog."""
    def beat() -> None:
        if router.state is not ClusterState.STOPPING:
            log.survive("the systemd watchdog notification", notifier.watchdog)
            loop.call_later(interval, beat)
    loop.call_soon(beat)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def run(config: Config, master_cls: type, worker_cls: type) -> int:
    use_fastest()
    return asyncio.run(serve(config, master_cls, worker_cls))
