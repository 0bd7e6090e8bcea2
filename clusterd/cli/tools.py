"""Commands that need no running instance: keygen, systemd-unit, bench."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import click

from .. import protocol, settings
from .common import EXIT_FAILURE, EXIT_OK, cwd_on_path, fail, import_endpoint
from .options import setting_options


@click.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite existing key files.")
def keygen(directory: str, force: bool) -> None:
    """Write CURVE keys for the master and its workers (ZeroMQ certificate files)."""
    from ..keygen import KeyFilesExist, write_keys
    try:
        paths = write_keys(directory, force=force)
    except KeyFilesExist as exc:
        fail(str(exc))
    for path in paths:
        click.echo(str(path))


@click.command(name="systemd-unit", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("master")
@click.argument("worker")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@setting_options(settings.UNIT)
def systemd_unit(master: str, worker: str, args: tuple[str, ...], name: str | None, user: str | None) -> None:
    """Print a ready-to-install systemd unit for this app (extra options go to `clusterd run`)."""
    from ..ops.systemd import render_unit
    from .run import run, run_config
    cwd_on_path()
    import_endpoint(master, "MasterEndpoint", "MASTER")  # a unit that cannot start is refused here
    import_endpoint(worker, "WorkerEndpoint", "WORKER")
    name = name or master.partition(":")[0].split(".")[0]
    try:  # `run` must accept them: parsed and checked exactly as `run` does
        ctx = run.make_context("clusterd run", [master, worker, "--name", name, *args])
        params = {k: v for k, v in ctx.params.items() if k not in ("master", "worker", "config")}
        run_config(master, worker, params)
    except click.UsageError as exc:
        message = exc.format_message().splitlines()[0] if exc.format_message() else str(exc)
        fail(f"clusterd run would refuse these options: {message}")
    except settings.ConfigError as exc:
        fail(f"clusterd run would refuse these options: {exc}")
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


@click.command()
@click.option("--quick", is_flag=True, help="Short measurements (about 10 s), as the test suite runs it.")
@click.option("--json", "as_json", is_flag=True, help="Print the result document instead of the table.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Workers of the measured instance; the speedup compares it with 1.")
@click.option("--chaos", type=float, default=None, metavar="SECONDS",
              help="Instead: clients call while workers are SIGKILLed at random; print the tallies.")
@click.option("--links", is_flag=True,
              help="Instead: the master and a worker calling each other (1 and 64 in flight), beside a "
                   "hand-made DEALER link.")
@click.option("--baseline", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="With --links: another clusterd source tree (say a worktree of an older commit), "
                   "measured in the same rounds.")
@click.option("--rounds", type=click.IntRange(min=1), default=None,
              help="With --links or --http: interleaved rounds, each target the median of its rounds' "
                   "values (default 5; 1 with --quick).")
@click.option("--http", "http_door", is_flag=True,
              help="Instead: the HTTP and WebSocket front door against bare echo servers (1 and N processes).")
def bench(quick: bool, as_json: bool, workers: int, chaos: float | None, links: bool, baseline: Path | None,
          rounds: int | None, http_door: bool) -> None:
    """Measure clusterd against a C zmq.proxy, a hand-written master and ProcessPoolExecutor."""
    signal.signal(signal.SIGTERM, _exit_on_term)  # a `kill` cleans up as Ctrl-C does: no server left behind
    live = sys.stderr.isatty()

    def progress(message: str) -> None:
        click.echo(f"\r\x1b[K{message}" if live else message, err=True, nl=not live)

    def clear_progress() -> None:
        if live:
            click.echo("\r\x1b[K", err=True, nl=False)

    if links:
        from ..bench.links import LinksBenchError, format_links_table, run_links_bench
        try:
            doc = run_links_bench(quick=quick, baseline=baseline, rounds=rounds, progress=progress)
        except LinksBenchError as exc:
            fail(f"bench failed: {exc}", EXIT_FAILURE)
        finally:
            clear_progress()
        click.echo(protocol.dumps(doc).decode() if as_json else format_links_table(doc))
        return
    if chaos is not None:
        from ..bench.chaos import format_tallies, run_chaos_bench
        result = run_chaos_bench(chaos, workers=max(workers, 2), progress=progress)
        clear_progress()
        click.echo(protocol.dumps(result).decode() if as_json else format_tallies(result))
        sys.exit(EXIT_OK if result.get("passed") else EXIT_FAILURE)
    if http_door:
        from ..bench.http import HttpBenchError, format_http_table, run_http_bench
        try:
            http_result = run_http_bench(quick=quick, workers=workers, rounds=rounds, progress=progress)
        except (HttpBenchError, OSError) as exc:
            fail(f"bench failed: {exc}", EXIT_FAILURE)
        finally:
            clear_progress()
        click.echo(protocol.dumps(http_result).decode() if as_json else format_http_table(http_result))
        return
    from ..bench import BenchError, format_table, run_bench
    try:
        result = run_bench(quick=quick, workers=workers, progress=progress)
    except BenchError as exc:
        fail(f"bench failed: {exc}", EXIT_FAILURE)
    finally:
        clear_progress()
    click.echo(protocol.dumps(result).decode() if as_json else format_table(result))


def _exit_on_term(_signum: int, _frame: object) -> None:
    """SIGTERM leaves through the same cleanup (finally blocks) as Ctrl-C, with the shell's exit status."""
    sys.exit(128 + signal.SIGTERM)


COMMANDS = (systemd_unit, keygen, bench)
