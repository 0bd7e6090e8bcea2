"""Commands that talk to a running instance over its control socket, each with its printing.

status -> clusterd.status (of every instance without --name), logs -> clusterd.logs, health ->
clusterd.status, reload -> clusterd.reload + clusterd.reload_wait, scale -> clusterd.scale, stop ->
clusterd.stop, call -> any method, ls -> clusterd.status of every instance.

Exit codes (DESIGN.md 8): 0 ok, 1 failed, 2 usage error, 3 the instance is not running (`stop` of
an instance that is not running is 0, as `systemctl stop`).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from .. import protocol, settings
from ..control import AmbiguousInstance, ControlClient, Instance, NoInstance, find_instance, list_instances
from ..protocol import RemoteError
from ..runtime_dir import RuntimeDirError
from .common import EXIT_FAILURE, EXIT_NOT_RUNNING, EXIT_OK, EXIT_USAGE, fail
from .options import setting_options


def _find(name: str | None) -> Instance:
    """The instance to talk to; exit 3 when it is not running, 2 when several run and none is named
    or its directory is not safe."""
    try:
        return find_instance(name)
    except NoInstance as exc:
        not_running(exc)
    except RuntimeDirError as exc:
        fail(str(exc))


def not_running(exc: NoInstance) -> None:
    """No such instance: exit 3 (LSB "not running"); several and none chosen: a usage error."""
    fail(str(exc), EXIT_USAGE if isinstance(exc, AmbiguousInstance) else EXIT_NOT_RUNNING)


def _control(name: str | None, timeout: float | None = 10.0) -> ControlClient:
    return ControlClient(_find(name).control_address, timeout)


def _admin(name: str | None, method: str, params: Any = None, timeout: float | None = 10.0) -> Any:
    with _control(name, timeout) as conn:
        try:
            return conn.call(method, params)
        except RemoteError as exc:
            fail(f"{method} failed: error {exc.code}: {exc.message}", EXIT_FAILURE)
        except TimeoutError as exc:
            fail(str(exc), EXIT_FAILURE)


# ---------------------------------------------------------------------------- status, ls
@click.command()
@setting_options("status")
@click.option("--json", "as_json", is_flag=True,
              help="Print the status document (an array of them when several instances run).")
@click.option("--watch", is_flag=True, help="Redraw every second until Ctrl-C.")
@click.option("--methods", is_flag=True, help="Also show calls, errors and p50/p99 per method (last minute).")
def status(name: str | None, as_json: bool, watch: bool, methods: bool) -> None:
    """Show the workers of the running instances (one block each), or of --name."""
    if not watch:
        click.echo(_status_text(name, as_json, methods))
        return
    try:
        while True:
            click.echo("\x1b[H\x1b[2J" + _status_text(name, as_json, methods), nl=True)
            sys.stdout.flush()
            time.sleep(1.0)  # a screen refresh for a person, like top
    except KeyboardInterrupt:
        pass


def _status_text(name: str | None, as_json: bool, methods: bool = False) -> str:
    from .tables import render_many, render_methods, render_table
    if name is not None:
        doc = _admin(name, "clusterd.status")
        if as_json:
            return protocol.dumps(doc).decode()
        return render_table(doc) + ("\n\n" + render_methods(doc) if methods else "")
    instances = list_instances()
    if not instances:
        fail(f"no clusterd instance is running (looked in {settings.runtime_root()})", EXIT_NOT_RUNNING)
    docs = []
    for inst in instances:
        try:
            with ControlClient(inst.control_address, 10.0) as conn:
                docs.append(conn.call("clusterd.status"))
        except (RemoteError, TimeoutError):
            docs.append({"name": inst.name, "state": "unresponsive", "master": {"pid": inst.pid}, "workers": []})
    if as_json:
        return protocol.dumps(docs[0] if len(docs) == 1 else docs).decode()
    if methods:
        return "\n\n".join(render_table(d) + "\n\n" + render_methods(d) for d in docs)
    return render_many(docs)


# ---------------------------------------------------------------------------- logs, health
@click.command()
@setting_options("logs")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines as they are logged, until Ctrl-C.")
@click.option("--slot", type=click.IntRange(min=0), default=None,
              help="Only the lines of this worker slot (its output and the master's lines about it).")
@click.option("-n", "--lines", type=click.IntRange(min=0), default=50, show_default=True,
              help="How many recent lines to print first.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def logs(name: str | None, follow: bool, slot: int | None, lines: int, as_json: bool) -> None:
    """Print the recent log of a running instance, kept in memory by its master (as `pm2 logs`)."""
    from ..log_ring import format_entry
    with _control(name, None) as conn:
        def fetch(after: int, count: int | None, wait: float) -> dict:
            try:
                return conn.call("clusterd.logs", {"after": after, "slot": slot, "lines": count, "wait": wait},
                                 timeout=wait + 10)
            except RemoteError as exc:
                fail(f"logs failed: {describe_error(exc)}", EXIT_FAILURE)
            except TimeoutError:
                try:
                    find_instance(name)
                except NoInstance:
                    click.echo("clusterd: the instance stopped", err=True)
                    sys.exit(EXIT_OK)
                fail("the instance stopped answering", EXIT_FAILURE)

        def show(entries: list[dict]) -> None:
            for entry in entries:
                click.echo(protocol.dumps(entry).decode() if as_json else format_entry(entry))

        page = fetch(0, lines, 0.0) if lines else fetch(0, 1, 0.0) | {"entries": []}
        show(page["entries"])
        after = page["next"]
        try:
            while follow:
                page = fetch(after, None, 10.0)
                show(page["entries"])
                after = page["next"]
        except KeyboardInterrupt:
            pass


@click.command()
@setting_options("health")
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds to wait for the master.")
def health(name: str | None, timeout: float) -> None:
    """For probes: exit 0 ready, 1 degraded (fewer ready workers than wanted, starting, reloading,
    stopping, --drain-delay), 3 not running; one line says why."""
    from .tables import DEGRADED, health_verdict
    instance = _find(name)
    try:
        with ControlClient(instance.control_address, timeout) as conn:
            doc = conn.call("clusterd.status")
    except TimeoutError:
        click.echo(f"{instance.name}: the master (pid {instance.pid}) did not answer within {timeout:g}s")
        sys.exit(DEGRADED)
    except RemoteError as exc:
        click.echo(f"{instance.name}: status failed: {exc.message}")
        sys.exit(DEGRADED)
    code, line = health_verdict(doc)
    click.echo(line)
    sys.exit(code)


@click.command(name="ls")
def list_cmd() -> None:
    """List the running instances."""
    unsafe: list[str] = []
    instances = list_instances(unsafe=unsafe)
    for problem in unsafe:
        click.echo(f"clusterd: skipped: {problem}", err=True)
    if not instances:
        click.echo(f"no instances running (in {settings.runtime_root()})")
        return
    from .tables import render_list
    rows = []
    for inst in instances:
        try:
            with ControlClient(inst.control_address, 2.0) as conn:
                rows.append(conn.call("clusterd.status"))
        except (RemoteError, TimeoutError):
            rows.append({"name": inst.name, "state": "unresponsive", "master": {"pid": inst.pid}, "workers": []})
    click.echo(render_list(rows))


# ---------------------------------------------------------------------------- reload
@click.command()
@setting_options("reload")
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
        progress = _follow_reload(conn, started["id"])
    if not progress.get("ok"):
        tb = progress.get("traceback")
        fail(f"reload failed: {progress.get('error')}" + (f"\n{tb.rstrip()}" if tb else ""), EXIT_FAILURE)
    click.echo("reload done")


def _follow_reload(conn: ControlClient, reload_id: Any) -> dict:
    """Print the reload's events as they come; its last progress report."""
    seen = 0
    while True:
        try:
            progress = conn.call("clusterd.reload_wait", {"id": reload_id, "after": seen})
        except RemoteError as exc:
            fail(f"reload: {exc}", EXIT_FAILURE)
        for event in progress["events"]:
            _print_reload_event(event)
        seen += len(progress["events"])
        if progress["done"]:
            return progress


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


# ---------------------------------------------------------------------------- scale, stop
@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("workers")
@setting_options("scale")
def scale(workers: str, name: str | None) -> None:
    """Set the number of workers of a running instance (0 is allowed: no worker serves until scaled up)."""
    try:
        count = settings.parse_workers(workers)
    except settings.ConfigError:
        fail(f"scale needs a number of workers (0 or more) or 'auto', not {workers!r}")
    result = _admin(name, "clusterd.scale", {"workers": count})
    click.echo(f"scaled from {result['from']} to {result['to']} workers")


@click.command()
@setting_options("stop")
@click.option("--timeout", type=float, default=None, help="Graceful timeout for this stop (seconds).")
def stop(name: str | None, timeout: float | None) -> None:
    """Stop a running instance gracefully and wait until it has exited (0 also when it was not running)."""
    try:
        instance = find_instance(name)
    except AmbiguousInstance as exc:
        not_running(exc)
    except NoInstance as exc:
        click.echo(f"{exc}: nothing to stop")  # idempotent, as `systemctl stop`
        return
    except RuntimeDirError as exc:
        fail(str(exc))
    with ControlClient(instance.control_address, 10) as conn:
        try:
            result = conn.call("clusterd.stop", {"timeout": timeout} if timeout is not None else {})
        except (RemoteError, TimeoutError) as exc:
            fail(f"stop failed: {exc}", EXIT_FAILURE)
    pid = result.get("pid") or instance.pid
    deadline = time.monotonic() + (timeout if timeout is not None else settings.default("graceful-timeout")) + 15
    while pid and _running(pid):
        if time.monotonic() > deadline:
            fail(f"{instance.name} (pid {pid}) is still stopping", EXIT_FAILURE)
        time.sleep(0.05)
    click.echo(f"{instance.name} stopped")


def _running(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting for its parent."""
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ---------------------------------------------------------------------------- call
@click.command()
@click.argument("method")
@click.argument("params", nargs=-1)
@setting_options("call")
@click.option("--connect", "address", help="Call this address (a --bind endpoint) instead of an instance.")
@click.option("--json-params", help="Params as one JSON array or object, e.g. '{\"n\": 30}'.")
@click.option("--timeout", type=float, default=None, help="Seconds to wait for the answer.")
def call(method: str, params: tuple[str, ...], name: str | None, address: str | None, json_params: str | None,
         timeout: float | None) -> None:
    """Call METHOD with PARAMS (JSON values; a bare word is a string) and print the JSON result."""
    values = _call_params(params, json_params)
    if address is None:
        address = _find(name).control_address
    with ControlClient(address, timeout) as conn:
        try:
            result = conn.call(method, values)
        except RemoteError as exc:
            fail(describe_error(exc), EXIT_FAILURE)
        except TimeoutError as exc:
            fail(str(exc), EXIT_FAILURE)
    click.echo(protocol.dumps(result).decode())


def describe_error(exc: RemoteError) -> str:
    """An error answer in one line (a traceback under it when the server sent one): the message once,
    the data only for what it adds."""
    data = exc.data
    tb = None
    if isinstance(data, dict):
        tb = data.get("traceback")
        extra = {k: v for k, v in data.items() if k not in ("type", "message", "traceback")}
        data = extra or None
    text = f"error {exc.code}: {exc.message}"
    if data is not None and (not isinstance(data, str) or data not in exc.message):
        text += f" ({data if isinstance(data, str) else protocol.dumps(data).decode()})"
    return text + (f"\n{tb.rstrip()}" if isinstance(tb, str) else "")


def _call_params(params: tuple[str, ...], json_params: str | None) -> list | dict:
    """PARAMS as JSON values (a bare word is a string), or --json-params as one array or object."""
    if json_params is None:
        return [_json_value(p) for p in params]
    if params:
        fail("give either PARAMS or --json-params, not both")
    try:
        values = protocol.loads(json_params)
    except ValueError as exc:
        fail(f"--json-params is not valid JSON: {exc}")
    if not isinstance(values, (list, dict)):
        fail("--json-params must be a JSON array or object")
    return values


def _json_value(text: str) -> Any:
    try:
        return protocol.loads(text)
    except ValueError:
        return text


COMMANDS = (status, logs, health, list_cmd, reload, scale, stop, call)
