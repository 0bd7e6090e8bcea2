"""What the bench measures and for how long: the systems, the constants, the Plan."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .references import PAYLOAD

Progress = Callable[[str], None]

RESULT_VERSION = 1
WINDOW = 128
CLIENTS = 3
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 2.0  # for a throwaway instance to stop on SIGTERM, before SIGKILL
CHILD_MODULE = "_clusterd_bench_child"

SYSTEM_LABELS = {
    "c_proxy": "C zmq.proxy",
    "handwritten": "hand-written master",
    "process_pool": "ProcessPoolExecutor",
    "clusterd": "clusterd",
}


@dataclass(frozen=True)
class Plan:
    """How long each measurement runs."""

    quick: bool
    workers: int
    rounds: int             # of the sequential + pipelined measurements, interleaved
    seq_calls: int          # per round
    duration_s: float       # of a pipelined run, per round
    multi_duration_s: float
    warmup_s: float
    burn_ms: float
    burn_calls: int
    burn_repeats: int
    burn_warmup_s: float
    restart_repeats: int
    restart_gap_s: float
    window: int = WINDOW
    clients: int = CLIENTS

    @classmethod
    def make(cls, *, quick: bool, workers: int) -> Plan:
        if quick:
            return cls(quick=True, workers=workers, rounds=1, seq_calls=300, duration_s=0.4,
                       multi_duration_s=0.4, warmup_s=0.1, burn_ms=25.0,
                       burn_calls=2 * workers, burn_repeats=2, burn_warmup_s=0.2,
                       restart_repeats=2, restart_gap_s=0.2)
        return cls(quick=False, workers=workers, rounds=3, seq_calls=1000, duration_s=1.0,
                   multi_duration_s=3.0, warmup_s=0.5, burn_ms=50.0, burn_calls=8 * workers,
                   burn_repeats=3, burn_warmup_s=0.5, restart_repeats=7, restart_gap_s=0.5)

    def as_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, "payload_bytes": len(PAYLOAD), "window": self.window,
                "clients": self.clients, "rounds": self.rounds,
                "seq_calls": self.seq_calls * self.rounds,
                "duration_s": self.duration_s * self.rounds,
                "multi_duration_s": self.multi_duration_s, "burn_ms": self.burn_ms,
                "burn_calls": self.burn_calls, "restart_repeats": self.restart_repeats}

