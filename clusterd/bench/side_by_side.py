"""Sequential latencies of several servers taken side by side, on one CPU, call by call.

``clusterd bench --http`` compares round trips of a few microseconds; on a small VM, where each process
runs and in what order the systems are called move them more than the code does. These two pieces
hold both still: one CPU for everyone, and a fresh order each turn.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import time
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def one_cpu(pids: list[int]) -> Iterator[None]:
    """Run the load generator and the servers' serving threads on one CPU meanwhile (their affinity is
    restored after). On a small VM a sequential round trip otherwise depends on whether the server
    sits on the client's CPU or has to wake an idle one (tens of µs), a placement the scheduler
    keeps per process and that swings between runs more than the code's own cost; on one CPU, every
    system's round trip is its work plus two context switches."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    cpu = min(os.sched_getaffinity(0))
    saved: dict[int, set[int]] = {}
    for pid in [0, *pids]:
        with contextlib.suppress(OSError):
            saved[pid] = os.sched_getaffinity(pid)
            os.sched_setaffinity(pid, {cpu})
    try:
        yield
    finally:
        for pid, cpus in saved.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, cpus)


def side_by_side(ports: dict[str, int], connect: Callable[[int], socket.socket], message: Callable[[int], bytes],
                  count: Callable[[bytearray], int], calls: int) -> dict[str, list[float]]:
    """One call at a time to each system in turn, in a fresh order each turn (A, C, B, B, A, C, ...):
    each call's round trip in µs, by system. Every system is sampled under the same state of the
    machine (on a VM, a vCPU woken from idle adds tens of µs to a round trip, and whether it has to
    depends on the other jobs), so the ratio of two p50s holds when the figures themselves swing.

    The order is shuffled because, on the one CPU they share, a call pays for what the call before it
    left in the caches: in a fixed cycle clusterd_N always came right after clusterd_1, and a call to
    a clusterd worker right after one to another clusterd worker takes 2-4 µs more than after a bare
    echo (measured: the same servers gave clusterd_N / bare 1.25 in that cycle, 1.01 with each
    clusterd after a bare echo). Shuffled, every system follows every other equally often."""
    socks = {key: connect(port) for key, port in ports.items()}
    messages = {key: message(port) for key, port in ports.items()}
    bufs = {key: bytearray() for key in ports}
    samples: dict[str, list[float]] = {key: [] for key in ports}
    clock = time.perf_counter_ns
    warm = calls // 10
    order = list(ports)
    shuffle = random.Random(len(order)).shuffle  # seeded: runs shuffle alike
    try:
        for i in range(calls + warm):
            shuffle(order)
            for key in order:
                sock = socks[key]
                buf = bufs[key]
                t0 = clock()
                sock.sendall(messages[key])
                while not count(buf):
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionError(f"{key} closed its connection")
                    buf += data
                if i >= warm:
                    samples[key].append((clock() - t0) / 1000)
    finally:
        for sock in socks.values():
            sock.close()
    return samples


__all__ = ["one_cpu", "side_by_side"]
