"""Which ready worker gets the next call."""

from __future__ import annotations

from .pool import Worker


class Balancer:
    """Picks a ready worker: fewest calls in flight, round robin among equals (or plain round robin)."""

    def __init__(self, least_busy: bool = True) -> None:
        self.least_busy = least_busy
        self.ready: list[Worker] = []
        self._next = 0

    def add(self, worker: Worker) -> None:
        if worker not in self.ready:
            self.ready.append(worker)
            self.ready.sort(key=lambda w: w.slot)

    def remove(self, worker: Worker) -> None:
        try:
            self.ready.remove(worker)
        except ValueError:
            pass

    def pick(self, exclude: Worker | None = None) -> Worker | None:
        ready = self.ready
        n = len(ready)
        if n == 0:
            return None
        start = self._next % n
        self._next = start + 1
        best = ready[start]
        if n == 1:
            return None if best is exclude else best
        if not self.least_busy:
            if best is exclude:
                best = ready[(start + 1) % n]
            return best
        best_load = len(best.calls) if best is not exclude else 1 << 60
        if best_load == 0:
            return best
        for i in range(1, n):
            w = ready[(start + i) % n]
            if w is exclude:
                continue
            load = len(w.calls)
            if load < best_load:
                best, best_load = w, load
                if load == 0:
                    break
        return None if best is exclude else best
