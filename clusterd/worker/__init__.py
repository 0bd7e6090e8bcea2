"""The worker side: the process entry and its link to the master (process), the heartbeat thread,
the zygote that forks workers, the spawners the master and agents start workers with, thread
isolation, and the agent that runs workers on another host.

Only the worker endpoint is imported here: a worker process starts without the master's code.
"""

from __future__ import annotations

from ..protocol import RPCError
from .process import WorkerEndpoint, import_class, main

__all__ = ["WorkerEndpoint", "RPCError", "import_class", "main"]
