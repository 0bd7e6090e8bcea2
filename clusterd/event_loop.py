"""The event loop clusterd's processes run on: uvloop when it is installed (pip install "clusterd[fast]"),
asyncio's own otherwise.

A loop turn on uvloop costs a fraction of one on asyncio's loop, and a call between the master and a
worker is a few turns on each side: with the master on uvloop too, a worker's call to the master is
about 10% faster at any depth (`clusterd bench --links`). Only the processes clusterd starts itself
(`clusterd run`'s master, its workers) set the policy; a program that imports clusterd keeps its own.
"""

from __future__ import annotations

import asyncio


def use_fastest() -> str:
    """Make asyncio.run() use uvloop when it is installed; the loop's name, for the logs."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


__all__ = ["use_fastest"]
