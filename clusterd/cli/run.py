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
    identity = _process_options(opts)
    cwd_on_path()
    master_cls = import_endpoint(master, "MasterEndpoint", "MASTER")
    worker_cls = import_endpoint(worker, "WorkerEndpoint", "WORKER")
    try:
        cfg = run_config(master, worker, opts, identity)
    except ConfigError as exc:
        fail(str(exc))
    from ..httpdoor import BindError
    from ..master import InstanceBusy
    from ..master.runner import run as run_instance
    from ..ops import log
    from ..runtime_dir import RuntimeDirError
    try:
        log.setup(cfg.log_format, cfg.debug, cfg.name, cfg.log_file)
    except OSError as exc:
        fail(f"--log-file {cfg.log_file}: {exc.strerror}")
    for addr in settings.unencrypted_binds(cfg):
        log.event("insecure-bind", f"--bind {addr} is reachable from other hosts and is not encrypted", level=30)
    public = settings.public_metrics_bind(cfg)
    if public:
        log.event("insecure-metrics-bind", f"--metrics-bind {public} is reachable from other hosts and has no "
                  "authentication: metrics and the dashboard show method names, pids and load", level=30)
    for bind in settings.public_dashboard_binds(cfg):
        log.event("insecure-dashboard", f"--dashboard on --http-bind {bind}: /dashboard is reachable from other "
                  "hosts without the token (as the probes): it shows method names, pids and load", level=30)
    try:
        code = run_instance(cfg, master_cls, worker_cls)
    except (InstanceBusy, RuntimeDirError) as exc:
        fail(str(exc))
    except BindError as exc:  # an --http-bind that cannot be listened on (in use, no permission)
        fail(f"--http-bind: {exc}", EXIT_FAILURE)
    except KeyboardInterrupt:
        code = EXIT_OK
    except __import__("zmq").ZMQError as exc:
        fail(f"cannot open sockets: {exc}", EXIT_FAILURE)
    sys.exit(code)


def run_config(master: str, worker: str, opts: dict[str, Any], identity: Any = None) -> settings.Config:
    """The Config of `run` from its parsed options, checked as `run` checks it (systemd-unit too)."""
    opts = dict(opts)
    name = settings.instance_name(opts.pop("name"), master)
    cfg = settings.Config(master=master, worker=worker, name=name, runtime_dir=str(settings.runtime_root()),
                          worker_identity=identity,
                          **{k: list(v) if isinstance(v, tuple) else v for k, v in opts.items()})
    settings.validate_run(cfg)
    return cfg


def _process_options(opts: dict) -> Any:
    """--chdir, --env, --pythonpath (before anything is imported) and --user/--group: the workers' identity."""
    import os
    if opts["chdir"]:
        try:
            os.chdir(opts["chdir"])
        except OSError as exc:
            fail(f"--chdir {opts['chdir']}: {exc.strerror}")
    for item in opts["env"]:
        key, _sep, value = item.partition("=")
        os.environ[key] = value  # checked by the settings table: KEY=VALUE
    if opts["pythonpath"]:
        dirs = [os.path.abspath(d) for d in opts["pythonpath"].replace(",", os.pathsep).split(os.pathsep) if d]
        missing = [d for d in dirs if not os.path.isdir(d)]
        if missing:
            fail(f"--pythonpath: no such directory {missing[0]}")
        sys.path[0:0] = dirs
        os.environ["PYTHONPATH"] = os.pathsep.join(dirs + [p for p in [os.environ.get("PYTHONPATH")] if p])
    from ..privileges import PrivilegeError, resolve
    try:
        identity = resolve(opts["user"], opts["group"])
    except PrivilegeError as exc:
        fail(str(exc))
    if identity is not None and opts["isolation"] == "thread":
        fail("--user/--group apply to worker processes: with --isolation thread, start clusterd as that user")
    return identity


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
    from ..ops import log
    from ..worker.agent import run as run_agent
    log.setup(cfg.log_format, source="agent")
    try:
        code = run_agent(cfg)
    except KeyboardInterrupt:
        code = EXIT_OK
    sys.exit(code)
