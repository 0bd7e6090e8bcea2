"""Moved to clusterd.ops.systemd; this name stays for code that still imports it."""

import sys

from .ops import systemd as _systemd

sys.modules[__name__] = _systemd
