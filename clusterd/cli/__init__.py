"""The `clusterd` command: click parsing and printing only; the work is done by the library.

Each command lives beside its printing: run.py (`run`, `worker`), control.py (`status`, `ls`,
`reload`, `scale`, `stop`, `call`; their tables are in tables.py), tools.py (`systemd-unit`,
`keygen`, `bench`). Options shared
between commands, with their defaults and `CLUSTERD_*` variables, come from clusterd/settings.py.
"""

from __future__ import annotations

import sys

import click

from ..help_examples import teach
from ..runtime_dir import RuntimeDirError
from . import control, run, tools
from .common import EXIT_USAGE, fail, value_origin


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="clusterd")
def cli() -> None:
    """Run two Python classes as a supervised, multi-core JSON-RPC service over ZeroMQ."""


for _command in (run.run, *control.COMMANDS, *tools.COMMANDS, run.worker_agent):
    cli.add_command(_command)
teach(cli)  # examples, defaults and variables in every command's help (help_examples.py)


def main() -> None:
    """Entry point (`clusterd = "clusterd.cli:main"`): usage errors are one line and exit status 2."""
    try:
        rv = cli.main(standalone_mode=False, prog_name="clusterd")
    except click.UsageError as exc:
        message = exc.format_message().splitlines()[0] if exc.format_message() else str(exc)
        fail(message + value_origin(exc), EXIT_USAGE)
    except click.ClickException as exc:
        fail(exc.format_message(), exc.exit_code)
    except RuntimeDirError as exc:  # `ls`: a root that is not safe to trust
        fail(str(exc), EXIT_USAGE)
    except click.Abort:
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)
