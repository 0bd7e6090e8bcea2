"""`clusterd run MASTER WORKER` and `clusterd worker WORKER --connect ADDR`: parse, check, hand over."""

from __future__ import annotations

import sys
from typing import Any

import click

from .. import settings
from ..ops.reaper import exit_on_sigterm_until_handled
from ..settings import ConfigError
from .common import EXIT_FAILURE, EXIT_OK, cwd_on_path, fail, import_endpoint
from .options import setting_options


@click.command()
@click.argument("master", required=False, envvar="CLUSTERD_MASTER")
@click.argument("worker", required=False, envvar="CLUSTERD_WORKER")
@setting_options(settings.RUN)
def run(master: str | None, worker: str | None, config: str | None, **opts: Any) -> None:
    """Run MASTER and WORKER (package.module:ClassName) in the foreground."""
    exit_on_sigterm_until_handled()  # as PID 1 of a container (ops/reaper.py)
    if not master or not worker:
        fail("run needs MASTER and WORKER, e.g. clusterd run myapp.rpc:Master myapp.rpc:Worker")
    cwd_on_path()
    master_cls = import_endpoint(master, "MasterEndpoint", "MASTER")
    worker_cls = import_endpoint(worker, "WorkerEndpoint", "WORKER")
    try:
        name = settings.instance_name(opts.pop("name"), master)
        cfg = settings.Config(master=master, worker=worker, name=name, runtime_dir=str(settings.runtime_root()),
                              **{k: list(v) if isinstance(v, tuple) else v for k, v in opts.items()})
        settings.validate_run(cfg)
    except ConfigError as exc:
        fail(str(exc))
    from ..master import InstanceBusy
    from ..ops import log
    from ..master.runner import run as run_instance
    from ..runtime_dir import RuntimeDirError
    log.setup(cfg.log_format, cfg.debug)
    for addr in settings.unencrypted_binds(cfg):
        log.event("insecure-bind", f"--bind {addr} is reachable from other hosts and is not encrypted", level=30)
    try:
        code = run_instance(cfg, master_cls, worker_cls)
    except (InstanceBusy, RuntimeDirError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        code = EXIT_OK
    except __import__("zmq").ZMQError as exc:
        fail(f"cannot open sockets: {exc}", EXIT_FAILURE)
    sys.exit(code)


@click.command(name="worker")
@click.argument("worker", envvar="CLUSTERD_WORKER")
@setting_options(settings.AGENT)
def worker_agent(worker: str, **opts: Any) -> None:
    """Run WORKER processes on this host for the master at --connect (an agent)."""
    exit_on_sigterm_until_handled()
    cwd_on_path()
    import_endpoint(worker, "WorkerEndpoint", "WORKER")
    try:
        cfg = settings.AgentConfig(worker=worker, **opts)
        cfg.name = settings.instance_name(cfg.name, worker)
        settings.validate_agent(cfg)
    except ConfigError as exc:
        fail(str(exc))
    from ..worker.agent import run as run_agent
    from ..ops import log
    log.setup(cfg.log_format)
    try:
        code = run_agent(cfg)
    except KeyboardInterrupt:
        code = EXIT_OK
    sys.exit(code)
