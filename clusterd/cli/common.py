"""What every command shares: exit codes, the one-line failure, importing the user's classes."""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import click

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_NOT_RUNNING = 0, 1, 2, 3   # 3: LSB "program is not running"


class UserError(click.ClickException):
    """Bad input: one line on stderr, exit status 2."""

    exit_code = EXIT_USAGE


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """One line on stderr (a JSON object once `run` logs as JSON), then exit with code."""
    from ..ops import log
    if log.is_json():
        log.event("error", message, level=40, code=code)
    else:
        click.echo(f"clusterd: {message}", err=True)
    sys.exit(code)


def cwd_on_path() -> None:
    """`package.module:Class` resolves from the current directory, as with gunicorn and uvicorn."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def import_endpoint(path: str, base_name: str, label: str) -> type:
    """Import `package.module:ClassName` (as a worker does) and check its base; exit 2 otherwise."""
    if ":" not in path or path.startswith(":") or path.endswith(":"):
        fail(f"{label} must look like package.module:ClassName, got {path!r}")
    module_name, _, attr = path.partition(":")
    from .. import MasterEndpoint, WorkerEndpoint
    from ..worker import import_class
    try:
        obj: Any = import_class(path)
    except ModuleNotFoundError as exc:
        fail(f"cannot import {label} {path}: module {exc.name!r} not found")
    except AttributeError as exc:
        if module_name in sys.modules:  # the module imported: the name is not in it
            fail(f"cannot import {label} {path}: module {module_name!r} has no attribute {attr!r}")
        fail(f"cannot import {label} {path}: importing {module_name!r} raised AttributeError: {exc}")
    except Exception as exc:  # the user's module raised while importing
        fail(f"cannot import {label} {path}: importing {module_name!r} raised {type(exc).__name__}: {exc}"
             f"{_where(exc)}")
    base = MasterEndpoint if base_name == "MasterEndpoint" else WorkerEndpoint
    if not (isinstance(obj, type) and issubclass(obj, base)):
        fail(f"{label} {path} is not a subclass of clusterd.{base_name}")
    return obj


def _where(exc: BaseException) -> str:
    """ ' at FILE:LINE' of the innermost frame outside the import machinery, for an import that raised."""
    import traceback
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" at {exc.filename}:{exc.lineno}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "importlib" not in f.filename]
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def value_origin(exc: click.UsageError) -> str:
    """Where a bad value came from when it was not typed: the variable to fix."""
    if not isinstance(exc, click.BadParameter) or exc.ctx is None or exc.param is None:
        return ""
    source = exc.ctx.get_parameter_source(exc.param.name)
    if source is click.core.ParameterSource.ENVIRONMENT:
        envvar = exc.param.envvar
        return f" (from ${envvar})" if isinstance(envvar, str) else " (from the environment)"
    return ""
