"""The master process: routing of calls (router), worker lifecycle (supervisor), rolling reloads,
agents on other hosts (remote), the control commands (admin) and the run from start to exit (runner).

See docs/architecture.md for how the parts fit together.
"""

from __future__ import annotations

from ..protocol import RemoteError
from ..runtime_dir import InstanceBusy, RuntimeDir
from .endpoint import MasterEndpoint, WorkerInfo, WorkersProxy
from .router import Router

__all__ = ["MasterEndpoint", "WorkersProxy", "WorkerInfo", "Router", "RuntimeDir", "InstanceBusy", "RemoteError"]
