"""Rolling reloads, and what triggers them: version files and source changes.

A reload replaces the workers slot by slot: the new worker must be ready before the old one
stops taking calls, so callers never notice. When a new worker cannot become ready the reload
stops there and the old workers go on serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import tomllib
from pathlib import Path
from typing import Any

from ..ops import log
from .host import BootFailure
from .states import ClusterState, ExitReason
from .view import MasterView


def read_version(path: str | Path) -> str | None:
    """The version in a pyproject.toml, a package.json, or a plain VERSION file; None if unreadable."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    try:
        if path.name == "pyproject.toml" or path.suffix == ".toml":
            data = tomllib.loads(text)
            version = data.get("project", {}).get("version") or data.get("tool", {}).get("poetry", {}).get("version")
            return str(version) if version is not None else None
        if path.suffix == ".json":
            version = json.loads(text).get("version")
            return str(version) if version is not None else None
    except (ValueError, AttributeError):
        return None
    first = text.strip().splitlines()
    return first[0].strip() if first else None


def installed_version(cls: type) -> str | None:
    """The installed version of the distribution that holds cls, if it is installed as one."""
    from importlib import metadata
    top = cls.__module__.split(".")[0]
    try:
        for dist in metadata.packages_distributions().get(top, []):
            return metadata.version(dist)
    except Exception:  # broken metadata must not stop a master
        return None
    return None


class Reload:
    """One rolling reload: its progress events, for `clusterd reload` to show as they happen."""

    def __init__(self, rid: int, trigger: str) -> None:
        self.id = rid
        self.trigger = trigger
        self.events: list[dict] = []
        self.done = asyncio.get_running_loop().create_future()
        self._changed = asyncio.Event()
        self.started_at = time.time()
        self.ok: bool | None = None

    def add(self, kind: str, **fields: Any) -> None:
        self.events.append({"event": kind, "at": time.time(), **fields})
        self._changed.set()
        self._changed = asyncio.Event()

    def result(self) -> dict:
        out = {"id": self.id, "ok": self.ok, "done": self.done.done(), "events": self.events,
               "trigger": self.trigger}
        failed = [e for e in self.events if e["event"] == "failed"]
        if failed:
            out["error"] = failed[-1].get("error")
            out["traceback"] = failed[-1].get("traceback")
        return out


class ReloadManager:
    """Runs reloads one at a time; a trigger during a reload queues exactly one more."""

    def __init__(self, router: MasterView) -> None:
        self.router = router
        self.loop = asyncio.get_running_loop()
        self._next_id = 0
        self.current: Reload | None = None
        self.queued: Reload | None = None
        self.last: Reload | None = None
        self.history: dict[int, Reload] = {}

    def trigger(self, source: str) -> None:
        """Start (or queue) a reload without waiting for it: file watchers."""
        log.event("reload-requested", f"reload requested ({source})")
        self._schedule(source)

    async def request(self, wait: bool = True, source: str = "clusterd reload") -> dict:
        log.event("reload-requested", f"reload requested ({source})")
        reload = self._schedule(source)
        if wait:
            await asyncio.shield(reload.done)
        return reload.result()

    async def progress(self, rid: int, after: int = 0) -> dict:
        """Events of reload rid past the first `after`; waits until there is one or it is done."""
        reload = self.history.get(rid)
        if reload is None:
            return {"id": rid, "unknown": True, "done": True, "ok": None, "events": []}
        while len(reload.events) <= after and not reload.done.done():
            await reload._changed.wait()
        out = reload.result()
        out["events"] = reload.events[after:]
        return out

    def _schedule(self, source: str) -> Reload:
        if self.current is not None and not self.current.done.done():
            if self.queued is None:
                self.queued = self._new(source)
                self.queued.add("queued")
            return self.queued
        reload = self._new(source)
        self._start(reload)
        return reload

    def _new(self, source: str) -> Reload:
        self._next_id += 1
        reload = Reload(self._next_id, source)
        self.history[reload.id] = reload
        while len(self.history) > 20:
            self.history.pop(next(iter(self.history)))
        return reload

    def _start(self, reload: Reload) -> None:
        self.current = reload
        task = self.loop.create_task(self._run(reload))
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.logger.error("reload failed unexpectedly", exc_info=task.exception())
            if self.current is not None and not self.current.done.done():
                self.current.ok = False
                self.current.add("failed", error=str(task.exception()))
                self.current.done.set_result(None)
        if self.current is not None:
            self.router.telemetry.count("reloads", "ok" if self.current.ok else "failed")
        self.last = self.current
        self.current = None
        if self.queued is not None and self.router.state is not ClusterState.STOPPING:
            queued, self.queued = self.queued, None
            self._start(queued)

    async def _run(self, reload: Reload) -> None:
        router = self.router
        sup = router.supervisor
        if router.state is ClusterState.STOPPING:
            reload.ok = False
            reload.add("failed", error="the instance is stopping")
            reload.done.set_result(None)
            return
        previous_state = router.state
        router.set_state(ClusterState.RELOADING)
        old_generation = sup.generation
        generation = sup.begin_generation()
        reload.add("start", generation=generation, slots=sorted(i for i, s in sup.slots.items() if not s.retired))
        log.event("reload-start", f"rolling reload to generation {generation} ({reload.trigger})",
                  generation=generation)
        replaced = 0
        try:
            for index in sorted(sup.slots):
                slot = sup.slots.get(index)
                if slot is None or slot.retired or router.state is ClusterState.STOPPING:
                    continue
                reload.add("slot-starting", slot=index)
                try:
                    await sup.replace(index, ExitReason.RELOAD)
                except BootFailure as failure:
                    reload.ok = False
                    reload.add("failed", slot=index, error=failure.error, traceback=failure.traceback)
                    log.event("reload-failed", f"reload to generation {generation} failed in slot {index}: "
                              f"{failure.error}; the running workers keep serving", level=logging.ERROR,
                              generation=generation, slot=index)
                    if replaced == 0:
                        sup.abort_generation(old_generation)
                    return
                replaced += 1
                slot = sup.slots.get(index)
                new = slot.active if slot is not None else None
                reload.add("slot-ready", slot=index, pid=new.pid if new else None)
                log.event("reload-slot", f"slot {index} now runs generation {generation}", slot=index,
                          generation=generation)
            reload.add("draining")
            await sup.wait_generation_gone(generation, router.config.graceful_timeout + 5)
            reload.ok = True
            sup.finish_generation(generation)
            reload.add("done", generation=generation)
            log.event("reload-done", f"rolling reload to generation {generation} done", generation=generation)
        finally:
            if router.state is ClusterState.RELOADING:
                router.set_state(ClusterState.STARTING if previous_state is ClusterState.STARTING
                                 else ClusterState.RUNNING)
            if not reload.done.done():
                reload.done.set_result(None)

    def summary(self) -> dict | None:
        reload = self.current or self.last
        if reload is None:
            return None
        return {"id": reload.id, "ok": reload.ok, "done": reload.done.done(), "trigger": reload.trigger,
                "started_at": reload.started_at, "queued": self.queued is not None,
                "last_event": reload.events[-1]["event"] if reload.events else None}


async def watch_version(router: MasterView, path: str) -> None:
    """Reload when the version in the file changes (not on every touch of the file)."""
    from watchfiles import awatch
    target = Path(path).resolve()
    current = read_version(target)
    async for _changes in awatch(target.parent, debounce=200, step=50,
                                 watch_filter=lambda _c, p: Path(p).resolve() == target):
        version = read_version(target)
        if version is not None and version != current:
            log.event("version-changed", f"{target.name}: version {current} -> {version}")
            current = version
            router.version = version
            router.reloads.trigger(f"version {version}")
            note_master_code(router)


async def watch_sources(router: MasterView, directory: str) -> None:
    """Development: a debounced reload on any .py change under directory."""
    from watchfiles import PythonFilter, awatch
    async for changes in awatch(directory, watch_filter=PythonFilter(), debounce=400, step=50):
        names = sorted({Path(p).name for _c, p in changes})
        router.reloads.trigger("changed: " + ", ".join(names[:5]))
        note_master_code(router)


def note_master_code(router: MasterView) -> None:
    """The workers reload; when the master's own files changed too, say once that it needs a restart."""
    code = getattr(router, "master_code", None)
    stale = code.check() if code is not None else None
    if stale:
        log.event("master-stale", f"the master's code changed ({', '.join(Path(p).name for p in stale)}): the "
                  "workers reload, the master keeps its old code until restarted (systemctl restart)",
                  level=logging.WARNING)
