"""Blocks of shared memory owned by the master and attached by its workers (DESIGN.md 11).

A block is a POSIX shared memory segment (`multiprocessing.shared_memory`) named

    clusterd-<master pid>.<master start time>-<instance>-<block>

so that a master starting under a name can tell the blocks of a dead master of that name (the
pid is gone, or now belongs to a process started later) from those of a live one, and remove
them: nothing is left in /dev/shm for long, even after a SIGKILL.

Neither side lets multiprocessing's resource tracker know about a segment. The master unlinks
its blocks itself; a worker only maps them, and a tracker in a worker would unlink the master's
blocks (or warn about "leaked" ones) when the worker exits. On Python < 3.13 SharedMemory always
registers with the tracker (track=False came in 3.13), so the tracker is swapped out around
the few calls that would reach it.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING

import psutil

from . import protocol
from .protocol import RPCError

PREFIX = "clusterd-"
SHM_DIR = "/dev/shm"
_NAME_MAX = 200          # segment names stay well under NAME_MAX (255)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.]")
_OWNER = re.compile(r"^clusterd-(\d+)\.(\d+)-(.+)$")

if TYPE_CHECKING:
    from multiprocessing import shared_memory


def _shm() -> ModuleType:
    """multiprocessing.shared_memory, loaded with the first block (about 1 MB a master without blocks
    does not pay)."""
    from multiprocessing import shared_memory
    return shared_memory


@functools.cache
def _has_track() -> bool:
    """Python 3.13's SharedMemory(track=False) keeps the resource tracker out by itself."""
    return "track" in inspect.signature(_shm().SharedMemory).parameters


class BlockError(RPCError, ValueError):
    """A bad block request (a size that differs from the existing block's, a bad name): -32602."""

    def __init__(self, message: str) -> None:
        super().__init__(protocol.INVALID_PARAMS, message)


class _NoTracker:
    @staticmethod
    def register(name: str, rtype: str) -> None:
        pass

    @staticmethod
    def unregister(name: str, rtype: str) -> None:
        pass


_tracker_lock = threading.Lock()


@contextmanager
def _untracked() -> Iterator[None]:
    """Keep the resource tracker (and its helper process) out of SharedMemory's calls."""
    if _has_track():
        yield
        return
    module = _shm()
    with _tracker_lock:
        saved = module.resource_tracker
        module.resource_tracker = _NoTracker
        try:
            yield
        finally:
            module.resource_tracker = saved


def _open(name: str, create: bool = False, size: int = 0) -> shared_memory.SharedMemory:
    kwargs = {"track": False} if _has_track() else {}
    with _untracked():
        return _shm().SharedMemory(name=name, create=create, size=size, **kwargs)


def _unlink(shm: shared_memory.SharedMemory) -> None:
    with _untracked():
        try:
            shm.unlink()
        except FileNotFoundError:
            pass


def _close(shm: shared_memory.SharedMemory) -> None:
    try:
        shm.close()
    except BufferError:
        # The user still holds views of it (a cast): the mapping lives until they are released;
        # forget it here so that SharedMemory.__del__ does not complain at exit.
        shm._mmap = None
        shm.close()


def _part(text: str) -> str:
    """A name part safe in a segment name; a short hash keeps distinct names distinct."""
    safe = _UNSAFE.sub("_", text)[:60]
    if safe != text:
        safe += "~" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return safe


def _start_time(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _check_request(name: object, size: object) -> None:
    if not isinstance(name, str) or not name:
        raise BlockError(f"a shared block needs a non-empty name, got {name!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise BlockError(f"shared block {name!r}: size must be a positive number of bytes, got {size!r}")


class SharedBlocks:
    """The master's blocks of one instance: created on first request, unlinked by close()."""

    def __init__(self, instance_name: str) -> None:
        self.instance = instance_name
        pid = os.getpid()
        self._owner = f"{pid}.{_start_time(pid) or 0}"
        self._blocks: dict[str, shared_memory.SharedMemory] = {}
        self._lock = threading.Lock()  # thread workers ask through the master's loop, users may not
        self.removed_leftovers = remove_leftovers(instance_name)

    def segment_name(self, name: str) -> str:
        return f"{PREFIX}{self._owner}-{_part(self.instance)}-{_part(name)}"[:_NAME_MAX]

    def _get(self, name: str, size: int) -> shared_memory.SharedMemory:
        _check_request(name, size)
        with self._lock:
            shm = self._blocks.get(name)
            if shm is None:
                shm = _open(self.segment_name(name), create=True, size=size)
                self._blocks[name] = shm
            elif shm.size != size:
                raise BlockError(f"shared block {name!r} already exists with size {shm.size} bytes; "
                                 f"asked for {size} bytes")
            return shm

    def block(self, name: str, size: int) -> memoryview:
        """The block `name` of `size` bytes: created zero-filled on first request, the same one after."""
        shm = self._get(name, size)
        return shm.buf[:size]

    def describe(self, name: str, size: int) -> dict:
        """Create the block if needed; what a worker needs to attach to it."""
        shm = self._get(name, size)
        return {"name": name, "shm_name": shm.name.lstrip("/"), "size": size}

    def names(self) -> list[str]:
        return sorted(self._blocks)

    def close(self) -> None:
        """Unlink every block (the memory is freed once the last process unmaps it)."""
        with self._lock:
            blocks, self._blocks = self._blocks, {}
        for shm in blocks.values():
            _unlink(shm)
            _close(shm)


def remove_leftovers(instance_name: str) -> list[str]:
    """Unlink the blocks of this instance name whose master is dead; the names removed."""
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return []
    instance = _part(instance_name) + "-"
    removed = []
    for entry in entries:
        m = _OWNER.match(entry)
        if m is None or not m.group(3).startswith(instance):
            continue
        pid, started = int(m.group(1)), int(m.group(2))
        now_started = _start_time(pid)
        if now_started is not None and abs(now_started - started) <= 2:
            continue  # its master is alive (another runtime dir may run the same name)
        try:
            os.unlink(os.path.join(SHM_DIR, entry))
        except OSError:
            continue  # gone already, or another user's
        removed.append(entry)
    return removed


_attached: dict[str, shared_memory.SharedMemory] = {}
_attach_lock = threading.Lock()


def attach(shm_name: str, size: int) -> memoryview:
    """Map a block the master created; it stays mapped for the life of this process."""
    with _attach_lock:
        shm = _attached.get(shm_name)
        if shm is None:
            shm = _attached[shm_name] = _open(shm_name)
    if shm.size < size:
        raise BlockError(f"shared memory segment {shm_name!r} has {shm.size} bytes, expected {size}")
    return shm.buf[:size]


__all__ = ["PREFIX", "BlockError", "SharedBlocks", "attach", "remove_leftovers"]
