"""An app whose code starts processes of its own, as a master running as PID 1 must tolerate."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from clusterd import MasterEndpoint, rpc
from tests.apps.basic import Worker as BasicWorker


class Master(MasterEndpoint):
    @rpc
    def child_exit(self, code: int) -> int:
        """The exit status of a subprocess, as subprocess.run sees it (the reaper must not take it)."""
        return subprocess.run([sys.executable, "-c", f"import sys; sys.exit({int(code)})"]).returncode

    @rpc
    async def async_child_exit(self, code: int, delay: float = 0.0) -> int:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", f"import sys, time; time.sleep({float(delay)}); sys.exit({int(code)})")
        return await proc.wait()


class Worker(BasicWorker):
    @rpc
    def leave_orphan(self, seconds: float) -> int:
        """Start a shell that leaves a `sleep` behind: an orphan that reaches the master (subreaper/PID 1)."""
        return subprocess.run(["sh", "-c", f"sleep {float(seconds)} >/dev/null 2>&1 &"]).returncode
