"""Moved to clusterd.ops.log; this name stays for code that still imports it."""

import sys

from .ops import log as _log

sys.modules[__name__] = _log
