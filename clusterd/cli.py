"""The `clusterd` command: click parsing and printing only; the work is done by the library."""

from __future__ import annotations

import importlib
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import click

from . import protocol
from .config import Config, ConfigError, check_address, parse_size, parse_workers, runtime_root
from .control import ControlClient, NoInstance, find_instance, list_instances
from .ops.reaper import exit_on_sigterm_until_handled
from .protocol import RemoteError
from .runtime_dir import RuntimeDirError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UserError(click.ClickException):
    """Bad input: one line on stderr, exit status 2."""

    exit_code = EXIT_USAGE


def fail(message: str, code: int = EXIT_USAGE) -> None:
    """One line on stderr (a JSON object once `run` logs as JSON), then exit with code."""
    from . import log
    if log.is_json():
        log.event("error", message, level=40, code=code)
    else:
        click.echo(f"clusterd: {message}", err=True)
    sys.exit(code)


# ---------------------------------------------------------------------------- option types
class SizeType(click.ParamType):
    name = "size"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | None:
        if value is None or isinstance(value, int):
            return value
        try:
            return parse_size(value)
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


class WorkersType(click.ParamType):
    name = "auto|N"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        try:
            return parse_workers(value)
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


def _positive(ctx: Any, param: click.Parameter, value: Any) -> Any:
    if value is not None and value < 0:
        raise click.BadParameter("must not be negative")
    return value


# ---------------------------------------------------------------------------- configuration file
def _addresses(ctx: Any, param: click.Parameter, value: Any) -> Any:
    for addr in value or ():
        try:
            check_address(addr)
        except ConfigError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def _load_config_file(ctx: click.Context, param: click.Parameter, path: str | None) -> str | None:
    """-c FILE: TOML keys become defaults under flags and CLUSTERD_* variables (click's own order).

    Every key is checked here, as its option would check it, so that a bad file is reported with
    the file and the key; keys may be spelt with dashes (as the flags) or underscores, at the top
    level or in a [clusterd] table.
    """
    if not path:
        return path
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise UserError(f"cannot read configuration file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    if isinstance(data.get("clusterd"), dict):
        extra = sorted(k for k in data if k != "clusterd")
        if extra:
            raise UserError(f"{path}: unknown key {extra[0]!r} (options go in the [clusterd] table)")
        data = data["clusterd"]
    params = {p.name: p for p in ctx.command.params if p.name != "config"}
    defaults: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        name = {"bind": "binds", "worker_bind": "worker_binds"}.get(name, name)
        target = params.get(name)
        if target is None:
            raise UserError(f"{path}: unknown key {key!r}")
        if isinstance(target, click.Option) and target.multiple and not isinstance(value, list):
            value = [value]
        why = _file_value_problem(target, value)
        if why is None:
            try:
                target.process_value(ctx, value)  # the option's own type and checks
            except click.BadParameter as exc:
                why = exc.message
        if why is not None:
            raise UserError(f"{path}: bad value for {key!r}: {why}")
        defaults[name] = value
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return path


def _file_value_problem(target: click.Parameter, value: Any) -> str | None:
    """What click would silently coerce but a TOML value should not be: 1.5 for a count, true for a number."""
    is_flag = isinstance(target, click.Option) and target.is_flag
    values = value if isinstance(value, list) else [value]
    for v in values:
        if isinstance(v, (dict, list)):
            return f"expected a single value, got {v!r}"
        if is_flag:
            if not isinstance(v, bool):
                return f"expected true or false, got {v!r}"
        elif isinstance(v, bool):
            return f"expected a value, not {str(v).lower()}"
        elif isinstance(v, float) and isinstance(target.type, (click.types.IntParamType, WorkersType)):
            return f"expected a whole number, got {v!r}"
    return None


def _env(name: str) -> str:
    return "CLUSTERD_" + name.upper().replace("-", "_")


def run_options(func: Any) -> Any:
    """The options of `run`, each also from CLUSTERD_<OPTION> and from the -c file."""
    opts = [
        click.option("-c", "--config", "config", type=click.Path(dir_okay=False), is_eager=True,
                     expose_value=True, callback=_load_config_file, envvar="CLUSTERD_CONFIG",
                     help="TOML file with option defaults (flags and CLUSTERD_* variables win)."),
        click.option("--workers", type=WorkersType(), default="auto", show_default=True, envvar=_env("workers"),
                     help="Worker processes: 'auto' is one per usable CPU."),
        click.option("--name", envvar=_env("name"), help="Instance name (default: MASTER's top-level package)."),
        click.option("--bind", "binds", multiple=True, envvar=_env("bind"), callback=_addresses,
                     help="Also serve clients on this ZeroMQ address, e.g. tcp://127.0.0.1:7000 (repeatable)."),
        click.option("--graceful-timeout", type=float, default=30.0, show_default=True, callback=_positive,
                     envvar=_env("graceful-timeout"), help="Seconds calls and stop_services get on stop/reload."),
        click.option("--heartbeat-timeout", type=float, default=10.0, show_default=True, callback=_positive,
                     envvar=_env("heartbeat-timeout"), help="Seconds without a heartbeat before a worker is killed."),
        click.option("--call-timeout", type=float, default=None, callback=_positive, envvar=_env("call-timeout"),
                     help="Seconds a call may take; past it the caller gets -32003 and the worker is recycled."),
        click.option("--queue-timeout", type=float, default=2.0, show_default=True, callback=_positive,
                     envvar=_env("queue-timeout"), help="Seconds a call waits for a ready worker before -32001."),
        click.option("--crash-limit", type=int, default=20, show_default=True, callback=_positive,
                     envvar=_env("crash-limit"), help="Failures per worker within --crash-window before giving up."),
        click.option("--crash-window", type=float, default=120.0, show_default=True, callback=_positive,
                     envvar=_env("crash-window")),
        click.option("--max-memory", type=SizeType(), default=None, envvar=_env("max-memory"),
                     help="Recycle a worker whose RSS exceeds this (512M, 2G)."),
        click.option("--max-requests", type=int, default=0, callback=_positive, envvar=_env("max-requests"),
                     help="Recycle a worker after this many calls (0: never)."),
        click.option("--max-requests-jitter", type=int, default=0, callback=_positive,
                     envvar=_env("max-requests-jitter")),
        click.option("--balance", type=click.Choice(["least-busy", "round-robin"]), default="least-busy",
                     show_default=True, envvar=_env("balance")),
        click.option("--isolation", type=click.Choice(["process", "thread"]), default="process",
                     show_default=True, envvar=_env("isolation"),
                     help="Workers as processes, or as threads of the master (I/O-bound services; see README)."),
        click.option("--watch-version", type=click.Path(), default=None, envvar=_env("watch-version"),
                     help="Rolling reload when the version in this file changes."),
        click.option("--reload-on-change", is_flag=False, flag_value=".", default=None, metavar="[DIR]",
                     envvar=_env("reload-on-change"), help="Development: reload on any .py change under DIR."),
        click.option("--max-message-size", type=SizeType(), default="16M", show_default=True,
                     envvar=_env("max-message-size")),
        click.option("--max-batch", type=int, default=1000, show_default=True, callback=_positive,
                     envvar=_env("max-batch"), help="Most requests in one batch; a bigger batch gets -32600."),
        click.option("--max-client-inflight", type=int, default=10000, show_default=True, callback=_positive,
                     envvar=_env("max-client-inflight"),
                     help="Most calls one client may have in flight; past it calls get -32005 at once (0: no limit)."),
        click.option("--max-clients", type=int, default=0, callback=_positive, envvar=_env("max-clients"),
                     help="Most connections per client endpoint (control.sock, each --bind); new ones past it are "
                          "closed at once (0: derived from the open-file limit, at most 10000)."),
        click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
                     envvar=_env("log-format")),
        click.option("--debug", is_flag=True, default=False, envvar=_env("debug"),
                     help="Send tracebacks to callers; log at debug level."),
        click.option("--worker-bind", "worker_binds", multiple=True, envvar=_env("worker-bind"),
                     callback=_addresses,
                     help="Accept workers from agents on this address (see --curve-dir)."),
        click.option("--curve-dir", type=click.Path(), default=None, envvar=_env("curve-dir"),
                     help="Directory of keys from `clusterd keygen`: encrypt and authenticate the worker link."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


# ---------------------------------------------------------------------------- importing user classes
def import_endpoint(path: str, base_name: str, label: str) -> type:
    """Import `package.module:ClassName` and check it subclasses the right base; exit 2 otherwise."""
    if ":" not in path or path.startswith(":") or path.endswith(":"):
        fail(f"{label} must look like package.module:ClassName, got {path!r}")
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        fail(f"cannot import {label} {path}: module {exc.name!r} not found")
    except Exception as exc:  # the user's module raised while importing
        fail(f"cannot import {label} {path}: importing {module_name!r} raised {type(exc).__name__}: {exc}")
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            fail(f"cannot import {label} {path}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    from . import MasterEndpoint, WorkerEndpoint
    base = MasterEndpoint if base_name == "MasterEndpoint" else WorkerEndpoint
    if not (isinstance(obj, type) and issubclass(obj, base)):
        fail(f"{label} {path} is not a subclass of clusterd.{base_name}")
    return obj


# ---------------------------------------------------------------------------- commands
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="clusterd")
def cli() -> None:
    """Run two Python classes as a supervised, multi-core JSON-RPC service over ZeroMQ."""


@cli.command()
@click.argument("master", required=False, envvar="CLUSTERD_MASTER")
@click.argument("worker", required=False, envvar="CLUSTERD_WORKER")
@run_options
def run(master: str | None, worker: str | None, config: str | None, **opts: Any) -> None:
    """Run MASTER and WORKER (package.module:ClassName) in the foreground."""
    exit_on_sigterm_until_handled()  # as PID 1 of a container (ops/reaper.py)
    if not master or not worker:
        fail("run needs MASTER and WORKER, e.g. clusterd run myapp.rpc:Master myapp.rpc:Worker")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    master_cls = import_endpoint(master, "MasterEndpoint", "MASTER")
    worker_cls = import_endpoint(worker, "WorkerEndpoint", "WORKER")
    name = opts.pop("name") or master.partition(":")[0].split(".")[0]
    if not name or "/" in name or name.startswith("."):
        fail(f"bad instance name {name!r}")
    if opts.get("curve_dir") is None:
        for addr in opts["worker_binds"]:
            if not _is_loopback(addr):
                fail(f"--worker-bind {addr} is not a loopback address: give --curve-dir (see clusterd keygen) "
                     "so that only holders of a worker key can join")
    if opts.get("curve_dir") is not None:
        from .curve import server_keys
        try:
            server_keys(opts["curve_dir"])
        except ValueError as exc:
            fail(f"--curve-dir: {exc}")
    if opts["watch_version"] and not Path(opts["watch_version"]).is_file():
        fail(f"--watch-version: no such file {opts['watch_version']}")
    if opts["reload_on_change"] and not Path(opts["reload_on_change"]).is_dir():
        fail(f"--reload-on-change: no such directory {opts['reload_on_change']}")
    cfg = Config(master=master, worker=worker, name=name, binds=list(opts.pop("binds")),
                 worker_binds=list(opts.pop("worker_binds")), runtime_dir=str(runtime_root()), **opts)
    from . import log
    from .master import InstanceBusy
    from .master.runner import run as run_instance
    log.setup(cfg.log_format, cfg.debug)
    for addr in cfg.binds:
        if not _is_loopback(addr) and not cfg.curve_dir:
            log.event("insecure-bind", f"--bind {addr} is reachable from other hosts and is not encrypted",
                      level=30)
    try:
        code = run_instance(cfg, master_cls, worker_cls)
    except (InstanceBusy, RuntimeDirError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        code = EXIT_OK
    except __import__("zmq").ZMQError as exc:
        fail(f"cannot open sockets: {exc}", EXIT_FAILURE)
    sys.exit(code)


def _is_loopback(addr: str) -> bool:
    if not addr.startswith("tcp://"):
        return True
    host = addr[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def _control(name: str | None, timeout: float | None = 10.0) -> ControlClient:
    try:
        instance = find_instance(name)
    except (NoInstance, RuntimeDirError) as exc:
        fail(str(exc))
    return ControlClient(instance.control_address, timeout)


def _admin(name: str | None, method: str, params: Any = None, timeout: float | None = 10.0) -> Any:
    with _control(name, timeout) as conn:
        try:
            return conn.call(method, params)
        except RemoteError as exc:
            fail(f"{method} failed: error {exc.code}: {exc.message}", EXIT_FAILURE)
        except TimeoutError as exc:
            fail(str(exc), EXIT_FAILURE)


@cli.command()
@click.option("--name", envvar="CLUSTERD_NAME")
@click.option("--json", "as_json", is_flag=True, help="Print the status document.")
@click.option("--watch", is_flag=True, help="Redraw every second until Ctrl-C.")
def status(name: str | None, as_json: bool, watch: bool) -> None:
    """Show the workers of a running instance."""
    from .status import render_table
    if not watch:
        doc = _admin(name, "clusterd.status")
        click.echo(protocol.dumps(doc).decode() if as_json else render_table(doc))
        return
    try:
        while True:
            doc = _admin(name, "clusterd.status")
            text = protocol.dumps(doc).decode() if as_json else render_table(doc)
            click.echo("\x1b[H\x1b[2J" + text, nl=True)
            sys.stdout.flush()
            time.sleep(1.0)  # a screen refresh for a person, like top
    except KeyboardInterrupt:
        pass


@cli.command()
@click.option("--name", envvar="CLUSTERD_NAME")
@click.option("--no-wait", is_flag=True, help="Return as soon as the reload is started.")
def reload(name: str | None, no_wait: bool) -> None:
    """Rolling reload: replace every worker with one running the code on disk now."""
    with _control(name, None) as conn:
        try:
            started = conn.call("clusterd.reload", {"wait": False}, timeout=10)
        except (RemoteError, TimeoutError) as exc:
            fail(f"reload refused: {exc}", EXIT_FAILURE)
        if no_wait:
            click.echo(f"reload {started['id']} started")
            return
        seen = 0
        while True:
            try:
                progress = conn.call("clusterd.reload_wait", {"id": started["id"], "after": seen})
            except RemoteError as exc:
                fail(f"reload: {exc}", EXIT_FAILURE)
            for event in progress["events"]:
                _print_reload_event(event)
            seen += len(progress["events"])
            if progress["done"]:
                break
    if not progress.get("ok"):
        tb = progress.get("traceback")
        fail(f"reload failed: {progress.get('error')}" + (f"\n{tb.rstrip()}" if tb else ""), EXIT_FAILURE)
    click.echo("reload done")


def _print_reload_event(event: dict) -> None:
    kind = event["event"]
    if kind == "start":
        click.echo(f"reloading to generation {event['generation']} (slots {event.get('slots')})")
    elif kind == "slot-starting":
        click.echo(f"  slot {event['slot']}: starting new worker")
    elif kind == "slot-ready":
        click.echo(f"  slot {event['slot']}: new worker ready (pid {event.get('pid')})")
    elif kind == "draining":
        click.echo("  waiting for old workers to finish their calls")
    elif kind == "queued":
        click.echo("another reload is running: this one is queued after it")


@cli.command()
@click.argument("workers", type=WorkersType())
@click.option("--name", envvar="CLUSTERD_NAME")
def scale(workers: int, name: str | None) -> None:
    """Set the number of workers of a running instance."""
    result = _admin(name, "clusterd.scale", {"workers": workers})
    click.echo(f"scaled from {result['from']} to {result['to']} workers")


@cli.command()
@click.option("--name", envvar="CLUSTERD_NAME")
@click.option("--timeout", type=float, default=None, help="Graceful timeout for this stop (seconds).")
def stop(name: str | None, timeout: float | None) -> None:
    """Stop a running instance gracefully and wait until it has exited."""
    try:
        instance = find_instance(name)
    except (NoInstance, RuntimeDirError) as exc:
        fail(str(exc))
    with ControlClient(instance.control_address, 10) as conn:
        try:
            result = conn.call("clusterd.stop", {"timeout": timeout} if timeout is not None else {})
        except (RemoteError, TimeoutError) as exc:
            fail(f"stop failed: {exc}", EXIT_FAILURE)
    pid = result.get("pid") or instance.pid
    deadline = time.monotonic() + (timeout if timeout is not None else 30) + 15
    while pid and _running(pid):
        if time.monotonic() > deadline:
            fail(f"{instance.name} (pid {pid}) is still stopping", EXIT_FAILURE)
        time.sleep(0.05)
    click.echo(f"{instance.name} stopped")


@cli.command()
@click.argument("method")
@click.argument("params", nargs=-1)
@click.option("--name", envvar="CLUSTERD_NAME")
@click.option("--connect", "address", help="Call this address (a --bind endpoint) instead of an instance.")
@click.option("--json-params", help="Params as one JSON array or object, e.g. '{\"n\": 30}'.")
@click.option("--timeout", type=float, default=None, help="Seconds to wait for the answer.")
def call(method: str, params: tuple[str, ...], name: str | None, address: str | None, json_params: str | None,
         timeout: float | None) -> None:
    """Call METHOD with PARAMS (JSON values; a bare word is a string) and print the JSON result."""
    if json_params is not None:
        if params:
            fail("give either PARAMS or --json-params, not both")
        try:
            values = protocol.loads(json_params)
        except ValueError as exc:
            fail(f"--json-params is not valid JSON: {exc}")
        if not isinstance(values, (list, dict)):
            fail("--json-params must be a JSON array or object")
    else:
        values = [_json_value(p) for p in params]
    if address is None:
        try:
            address = find_instance(name).control_address
        except (NoInstance, RuntimeDirError) as exc:
            fail(str(exc))
    with ControlClient(address, timeout) as conn:
        try:
            result = conn.call(method, values)
        except RemoteError as exc:
            data = f" {protocol.dumps(exc.data).decode()}" if exc.data is not None else ""
            fail(f"error {exc.code}: {exc.message}{data}", EXIT_FAILURE)
        except TimeoutError as exc:
            fail(str(exc), EXIT_FAILURE)
    click.echo(protocol.dumps(result).decode())


def _running(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting for its parent."""
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _json_value(text: str) -> Any:
    try:
        return protocol.loads(text)
    except ValueError:
        return text


@cli.command(name="ls")
def list_cmd() -> None:
    """List the running instances."""
    instances = list_instances()
    if not instances:
        click.echo(f"no instances running (in {runtime_root()})")
        return
    from .status import render_list
    rows = []
    for inst in instances:
        try:
            with ControlClient(inst.control_address, 2.0) as conn:
                rows.append(conn.call("clusterd.status"))
        except (RemoteError, TimeoutError):
            rows.append({"name": inst.name, "state": "unresponsive", "master": {"pid": inst.pid}, "workers": []})
    click.echo(render_list(rows))


@cli.command(name="systemd-unit", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("master")
@click.argument("worker")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--name", default=None)
@click.option("--user", default=None, help="User= for the service.")
def systemd_unit(master: str, worker: str, args: tuple[str, ...], name: str | None, user: str | None) -> None:
    """Print a ready-to-install systemd unit for this app (extra options go to `clusterd run`)."""
    from .systemd import render_unit
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    import_endpoint(master, "MasterEndpoint", "MASTER")  # a unit that cannot start is refused here
    import_endpoint(worker, "WorkerEndpoint", "WORKER")
    name = name or master.partition(":")[0].split(".")[0]
    try:
        run.make_context("clusterd run", [master, worker, "--name", name, *args])  # `run` must accept them
    except click.UsageError as exc:
        message = exc.format_message().splitlines()[0] if exc.format_message() else str(exc)
        fail(f"clusterd run would refuse these options: {message}")
    executable, prefix = _own_command()
    try:
        click.echo(render_unit(master, worker, name=name, workdir=os.getcwd(), executable=executable,
                               executable_args=prefix, args=list(args), user=user), nl=False)
    except ValueError as exc:
        fail(str(exc))


def _own_command() -> tuple[str, list[str]]:
    """How to run this very clusterd again: its script, or this interpreter with -m clusterd."""
    script = sys.argv[0]
    if os.path.basename(script) == "clusterd" and os.path.isfile(script):
        return os.path.abspath(script), []
    return sys.executable, ["-m", "clusterd"]


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite existing key files.")
def keygen(directory: str, force: bool) -> None:
    """Write CURVE keys for the master and its workers (ZeroMQ certificate files)."""
    from .keygen import KeyFilesExist, write_keys
    try:
        paths = write_keys(directory, force=force)
    except KeyFilesExist as exc:
        fail(str(exc))
    for path in paths:
        click.echo(str(path))


def _value_origin(exc: click.UsageError) -> str:
    """Where a bad value came from when it was not typed: the variable to fix."""
    if not isinstance(exc, click.BadParameter) or exc.ctx is None or exc.param is None:
        return ""
    source = exc.ctx.get_parameter_source(exc.param.name)
    if source is click.core.ParameterSource.ENVIRONMENT:
        envvar = exc.param.envvar
        return f" (from ${envvar})" if isinstance(envvar, str) else " (from the environment)"
    return ""


@cli.command()
@click.option("--quick", is_flag=True, help="Short measurements (about 10 s), as the test suite runs it.")
@click.option("--json", "as_json", is_flag=True, help="Print the result document instead of the table.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Workers of the measured instance; the speedup compares it with 1.")
@click.option("--chaos", type=float, default=None, metavar="SECONDS",
              help="Instead: clients call while workers are SIGKILLed at random; print the tallies.")
def bench(quick: bool, as_json: bool, workers: int, chaos: float | None) -> None:
    """Measure clusterd against a C zmq.proxy, a hand-written master and ProcessPoolExecutor."""
    from .bench import BenchError, format_table, run_bench

    live = sys.stderr.isatty()

    def progress(message: str) -> None:
        click.echo(f"\r\x1b[K{message}" if live else message, err=True, nl=not live)

    if chaos is not None:
        from .chaos import run_chaos_bench
        result = run_chaos_bench(chaos, workers=max(workers, 2), progress=progress)
        if live:
            click.echo("\r\x1b[K", err=True, nl=False)
        from .chaos import format_tallies
        click.echo(protocol.dumps(result).decode() if as_json else format_tallies(result))
        sys.exit(EXIT_OK if result.get("passed") else EXIT_FAILURE)
    try:
        result = run_bench(quick=quick, workers=workers, progress=progress)
    except BenchError as exc:
        fail(f"bench failed: {exc}", EXIT_FAILURE)
    finally:
        if live:
            click.echo("\r\x1b[K", err=True, nl=False)
    click.echo(protocol.dumps(result).decode() if as_json else format_table(result))


@cli.command(name="worker")
@click.argument("worker", envvar="CLUSTERD_WORKER")
@click.option("--connect", required=True, envvar="CLUSTERD_CONNECT",
              help="The master's --worker-bind address, e.g. tcp://master-host:7100.")
@click.option("--workers", type=WorkersType(), default="auto", show_default=True, envvar="CLUSTERD_WORKERS")
@click.option("--curve-dir", type=click.Path(), default=None, envvar="CLUSTERD_CURVE_DIR",
              help="Directory holding worker.key_secret and master.key (from clusterd keygen).")
@click.option("--heartbeat-timeout", type=float, default=10.0, show_default=True, callback=_positive,
              envvar="CLUSTERD_HEARTBEAT_TIMEOUT")
@click.option("--graceful-timeout", type=float, default=30.0, show_default=True, callback=_positive,
              envvar="CLUSTERD_GRACEFUL_TIMEOUT")
@click.option("--name", default=None, envvar="CLUSTERD_NAME", help="A label for logs and process titles.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", envvar="CLUSTERD_LOG_FORMAT")
def worker_agent(worker: str, connect: str, workers: int, curve_dir: str | None, heartbeat_timeout: float,
                 graceful_timeout: float, name: str | None, log_format: str) -> None:
    """Run WORKER processes on this host for the master at --connect (an agent)."""
    exit_on_sigterm_until_handled()
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    import_endpoint(worker, "WorkerEndpoint", "WORKER")
    if curve_dir is None and not _is_loopback(connect):
        fail(f"--connect {connect} is not a loopback address: give --curve-dir so the link is encrypted")
    if curve_dir is not None:
        from .curve import client_configurer
        try:
            client_configurer({"dir": curve_dir})
        except ValueError as exc:
            fail(str(exc))
    from . import log
    from .worker.agent import run as run_agent
    log.setup(log_format)
    name = name or worker.partition(":")[0].split(".")[0]
    try:
        code = run_agent(worker, connect, workers, curve_dir, heartbeat_timeout, graceful_timeout, name)
    except KeyboardInterrupt:
        code = EXIT_OK
    sys.exit(code)


def main() -> None:
    try:
        rv = cli.main(standalone_mode=False, prog_name="clusterd")
    except click.UsageError as exc:
        message = exc.format_message().splitlines()[0] if exc.format_message() else str(exc)
        fail(message + _value_origin(exc), EXIT_USAGE)
    except click.ClickException as exc:
        fail(exc.format_message(), exc.exit_code)
    except RuntimeDirError as exc:  # `ls`: a root that is not safe to trust
        fail(str(exc), EXIT_USAGE)
    except click.Abort:
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)
