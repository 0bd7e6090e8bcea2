"""The traceback of a worker that failed to start, cut to the user's own frames.

A broken deploy (a SyntaxError, an import that raises) reaches `clusterd reload` and the log through
clusterd's worker start-up and importlib: those frames say nothing to the user, so they are left out,
as `run` does for a master or worker that does not import (cli/common.py).
"""

from __future__ import annotations

import importlib
import os
import traceback

_MACHINERY = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,  # clusterd/
              os.path.dirname(importlib.__file__) + os.sep)                           # importlib/


def _is_machinery(filename: str) -> bool:
    return filename.startswith("<frozen importlib") or filename.startswith(_MACHINERY)


def _trim(exc: traceback.TracebackException) -> None:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # the exception and the ones it was raised from
        seen.add(id(exc))
        exc.stack = traceback.StackSummary.from_list([f for f in exc.stack if not _is_machinery(f.filename)])
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def user_traceback(exc: BaseException) -> str:
    """`traceback.format_exception(exc)` without clusterd's and importlib's frames (a SyntaxError then
    shows just its file, line and caret)."""
    tb = traceback.TracebackException.from_exception(exc)
    _trim(tb)
    return "".join(tb.format())
