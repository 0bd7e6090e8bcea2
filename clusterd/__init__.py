"""clusterd: two Python classes become a supervised, multi-core JSON-RPC service over ZeroMQ."""

from __future__ import annotations

from typing import Any

from .endpoint import rpc
from .protocol import RemoteError, RPCError
from .worker import WorkerEndpoint

__version__ = "0.1.0"

_LAZY = {
    "MasterEndpoint": "master", "WorkerInfo": "master",
    "Client": "client", "AsyncClient": "client",
}


def __getattr__(name: str) -> Any:
    """Import the master and client sides only when used: workers start faster without them."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'clusterd' has no attribute {name!r}")
    from importlib import import_module
    return getattr(import_module(f".{module}", __name__), name)


__all__ = ["MasterEndpoint", "WorkerEndpoint", "WorkerInfo", "rpc", "RPCError", "RemoteError", "Client",
           "AsyncClient", "__version__"]
