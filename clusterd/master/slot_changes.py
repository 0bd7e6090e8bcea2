"""The Supervisor's changes to its slots: replace a worker, recycle, reload generations, scale, agents' slots.

``SlotChanges`` is a base class of ``Supervisor`` (supervisor.py): each change here is "start a worker
for a slot" or "retire a worker", and what the slot needs next is still decided by the supervisor's
``reconcile(slot)``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..ops import log
from .pool import Slot, Worker
from .states import ExitReason, WorkerState

if TYPE_CHECKING:
    from ..worker.handles import Spawner


class SlotChanges:
    """Slot changes, on the supervisor's table (see Supervisor for the attributes and the rest)."""

    loop: asyncio.AbstractEventLoop
    wanted: int
    generation: int
    slots: dict[int, Slot]
    by_ident: dict[bytes, Worker]
    stopping: bool
    spawner: Spawner
    _replacements: dict[int, asyncio.Future]

    def replace(self, index: int, reason: ExitReason) -> asyncio.Future:
        """Start a new worker for the slot; once it is ready the old one drains and stops.

        The future fails with BootFailure when the new worker cannot become ready; the old worker
        then keeps serving.
        """
        existing = self._replacements.get(index)
        if existing is not None:
            return existing
        fut = self.loop.create_future()
        slot = self.slots.get(index)
        if slot is None or self.stopping:
            fut.set_result(None)
            return fut
        old = slot.active
        if old is not None:
            old.retire_reason = reason
        if old is not None and old.state is WorkerState.STARTING and old.generation < self.generation:
            self.kill(old, reason)  # an older generation still starting: start the new one instead
            slot.active = old = None
        if old is None:
            self._cancel_restart(slot)  # nothing serves this slot: start it now
        slot.incoming = self._spawn(index)
        self._replacements[index] = fut
        return fut

    def recycle(self, worker: Worker, reason: ExitReason) -> None:
        """Replace a serving worker gracefully (max-memory, max-requests, runaway call)."""
        slot = self.slots.get(worker.slot)
        if slot is None or slot.active is not worker or slot.incoming is not None or self.stopping:
            return
        log.event("worker-recycle", f"{worker.label()} recycled ({reason})", slot=worker.slot, pid=worker.pid,
                  reason=reason)
        fut = self.replace(worker.slot, reason)
        fut.add_done_callback(lambda f: f.exception())  # a failed recycle keeps the old worker

    def begin_generation(self) -> int:
        """A reload starts: workers started from now on are the next generation, on the code on disk now."""
        self.generation += 1
        self.spawner.reset(self.generation)
        return self.generation

    def abort_generation(self, previous: int) -> None:
        """A reload failed before any slot moved to the new generation: the running one stays current."""
        self.generation = previous

    def finish_generation(self, generation: int) -> None:
        """Every slot runs this generation: older code is no longer needed."""
        self.spawner.retire_generation(generation)

    def local_slots(self) -> list[int]:
        return sorted(i for i, s in self.slots.items() if s.agent is None and not s.retired)

    def _free_index(self, start: int = 0) -> int:
        while start in self.slots:
            start += 1
        return start

    def scale(self, wanted: int) -> None:
        """Reach `wanted` local workers: new slots take the lowest free numbers, the highest retire first."""
        local = self.local_slots()
        old = len(local)
        self.wanted = wanted
        while len(local) < wanted:
            index = self._free_index()
            self.slots[index] = slot = Slot(index)
            slot.active = self._spawn(index)
            local.append(index)
        for index in sorted(local, reverse=True)[:max(0, len(local) - wanted)]:
            self.retire_slot(index, ExitReason.SCALE)
        log.event("scale", f"scaled from {old} to {log.plural(wanted, 'worker')}")

    def add_remote_slots(self, agent: str, count: int) -> list[int]:
        """Slots for an agent's workers (the lowest free numbers); start_slots() starts them."""
        indices = []
        for _ in range(count):
            index = self._free_index()
            self.slots[index] = Slot(index, agent=agent)
            indices.append(index)
        return indices

    def start_slots(self, indices: list[int]) -> None:
        for index in indices:
            slot = self.slots.get(index)
            if slot is not None and slot.active is None and slot.incoming is None:
                slot.active = self._spawn(index)

    def retire_slot(self, index: int, reason: ExitReason) -> None:
        """Take a slot away: its workers finish what they hold and are not replaced."""
        slot = self.slots.get(index)
        if slot is None:
            return
        slot.retired = True
        self._cancel_restart(slot)
        self._settle_replacement(index)
        for worker in (slot.incoming, slot.active):
            if worker is not None:
                self.retire(worker, reason)
        self.reconcile(slot)

    def drop_slots(self, indices: list[int]) -> None:
        """Slots whose workers vanished with their host: gone now, and so are the calls they held."""
        for index in indices:
            self.retire_slot(index, ExitReason.CRASHED)
            for worker in [w for w in self.by_ident.values() if w.slot == index]:
                self.worker_exited(worker, None)
            self.slots.pop(index, None)


__all__ = ["SlotChanges"]
