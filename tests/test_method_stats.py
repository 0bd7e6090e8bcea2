"""Per-method statistics: exact counts, mergeable deltas, a last-minute window, bounded quantile error."""

from __future__ import annotations

import random
import threading

import orjson
import pytest

from clusterd.ops.method_stats import (
    BOUNDS,
    NBUCKETS,
    OK,
    OTHER,
    PROM_BUCKETS,
    DeltaTracker,
    MethodStats,
    Snapshot,
    Window,
    cumulative_at_prom_buckets,
    quantile,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_record_counts_by_method_door_and_outcome():
    stats = MethodStats()
    for _ in range(3):
        stats.record("fib", "zmq", OK, 0.001)
    stats.record("fib", "http", "-32000", 0.5)
    stats.record("add", "worker", OK, 0.00001)
    assert stats.calls == {("fib", "zmq", OK): 3, ("fib", "http", "-32000"): 1, ("add", "worker", OK): 1}
    assert sum(stats.hist["fib"]) == 4 and sum(stats.hist["add"]) == 1
    assert stats.sums["fib"] == pytest.approx(0.503)
    assert stats.hist["add"][0] == 1                 # under the first bound
    assert stats.hist["fib"][BOUNDS.index(0.5)] == 1  # on a bound: counted in that bucket (le)


def test_durations_beyond_the_last_bound_are_counted():
    stats = MethodStats()
    stats.record("slow", "zmq", OK, 120.0)
    assert stats.hist["slow"][NBUCKETS - 1] == 1
    assert cumulative_at_prom_buckets(stats.hist["slow"])[-2:] == [0, 1]   # le=60 then +Inf


def test_method_names_are_capped():
    stats = MethodStats(max_methods=4)
    for i in range(10):
        stats.record(f"m{i}", "zmq", "-32601", 0.001)
    assert set(stats.hist) == {"m0", "m1", "m2", OTHER}
    assert sum(n for (m, _d, _o), n in stats.calls.items() if m == OTHER) == 7


def test_a_prepared_record_counts_as_record_does_and_respects_the_cap():
    stats, plain = MethodStats(max_methods=3), MethodStats(max_methods=3)
    plain.record("first", "ws", "-32000", 0.2)
    stats.record("first", "ws", "-32000", 0.2)
    for name in ("add", "fib", "late"):  # "late" is past the cap: counted as OTHER, as record() would
        prepared = stats.prepared(name, "ws", OK)
        for duration in (0.00001, 0.002, 0.5, 120.0):
            prepared(duration)
            plain.record(name, "ws", OK, duration)
    assert stats.calls == plain.calls and stats.hist == plain.hist and stats.sums == plain.sums
    assert set(stats.hist) == {"first", "add", OTHER}
    assert stats.prepared("never", "ws", OK).key == (OTHER, "ws", OK)


def test_delta_roundtrip_through_json_merges_exactly():
    worker, master = MethodStats(), MethodStats()
    rng = random.Random(7)
    for _ in range(500):
        worker.record(rng.choice(["a", "b"]), rng.choice(["http", "ws"]), rng.choice([OK, OK, "-32000"]),
                      rng.uniform(0.0001, 2.0))
    master.record("a", "zmq", OK, 0.01)
    tracker = DeltaTracker(worker)
    delta = tracker.delta()
    tracker.commit()
    master.merge(orjson.loads(orjson.dumps(delta)))
    assert tracker.delta() is None                          # nothing new since
    for key, n in worker.calls.items():
        assert master.calls[key] == n
    assert master.calls[("a", "zmq", OK)] == 1
    for method, counts in worker.hist.items():
        expected = [x + y for x, y in zip(counts, [0] * NBUCKETS)]
        if method == "a":
            expected[BOUNDS.index(0.01)] += 1
        assert master.hist[method] == expected
    assert master.sums["b"] == pytest.approx(worker.sums["b"])


def test_delta_not_committed_is_sent_again():
    worker, master = MethodStats(), MethodStats()
    worker.record("a", "http", OK, 0.001)
    tracker = DeltaTracker(worker)
    tracker.delta()                          # the send failed: no commit
    worker.record("a", "http", OK, 0.001)
    master.merge(tracker.delta())
    tracker.commit()
    assert master.calls == {("a", "http", OK): 2}
    worker.record("a", "http", OK, 0.001)
    master.merge(tracker.delta())
    assert master.calls == {("a", "http", OK): 3}


@pytest.mark.parametrize("bad", [None, [], {"v": 99, "c": [["a", "zmq", "ok", 1]]}, {"v": 1, "c": "x"},
                                 {"v": 1, "c": [["a", "zmq", "ok", -3], ["a", 1, "ok", 1], ["a"]]},
                                 {"v": 1, "h": {"a": [0.1, NBUCKETS, 1]}}, {"v": 1, "h": {"a": ["x", 0, 1]}},
                                 {"v": 1, "h": {"a": [0.1, 0]}}, {"v": 1, "h": {"a": [0.1, 0, -1]}},
                                 {"v": 1, "h": {"a": [float("nan"), 0, 1]}}])
def test_malformed_deltas_change_nothing_and_never_raise(bad):
    stats = MethodStats()
    stats.merge(bad)
    assert stats.calls == {} and all(not any(c) for c in stats.hist.values())


def test_snapshot_from_another_thread_while_recording():
    stats = MethodStats()
    stop = threading.Event()
    errors = []

    def reader():
        tracker = DeltaTracker(stats)
        while not stop.is_set():
            try:
                tracker.delta()
                tracker.commit()
            except Exception as exc:  # a torn read must never raise
                errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(20000):
            stats.record(f"m{i % 300}", "http", OK, 0.001)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert sum(stats.calls.values()) == 20000


def test_window_covers_the_last_minute_and_expires():
    clock = FakeClock()
    stats = MethodStats()
    window = Window(stats, span=60.0, step=5.0, clock=clock)
    for _ in range(10):
        stats.record("old", "zmq", OK, 0.001)
    for _ in range(14):  # 70 s of ticks, every 5 s
        clock.now += 5
        window.tick()
    stats.record("new", "zmq", "-32000", 0.002)
    stats.record("new", "zmq", OK, 0.002)
    assert window.methods() == {"new": {"calls": 2, "errors": 1, "p50_ms": pytest.approx(2.0, rel=0.25),
                                        "p99_ms": pytest.approx(2.0, rel=0.25)}}
    for _ in range(11):  # 55 s later the calls are still within the last minute
        clock.now += 5
        window.tick()
    assert window.methods()["new"]["calls"] == 2
    for _ in range(3):   # and 70 s later they are gone
        clock.now += 5
        window.tick()
    assert window.methods() == {}


def test_window_before_a_minute_has_passed_counts_everything():
    clock = FakeClock()
    stats = MethodStats()
    window = Window(stats, clock=clock)
    stats.record("a", "zmq", OK, 0.001)
    clock.now += 20
    window.tick()
    stats.record("a", "zmq", OK, 0.001)
    assert window.methods()["a"]["calls"] == 2


def test_window_ring_stays_bounded():
    clock = FakeClock()
    stats = MethodStats()
    window = Window(stats, span=60.0, step=5.0, clock=clock)
    for _ in range(1000):
        clock.now += 1
        window.tick()
    assert len(window._ring) <= 60 / 5 + 2


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("spread", [(50e-6, 60.0), (0.001, 0.002), (0.2, 3.0)])
def test_quantiles_are_within_one_bucket(q, spread):
    rng = random.Random(1)
    low, high = spread
    values = sorted(low * (high / low) ** rng.random() for _ in range(5000))
    stats = MethodStats()
    for v in values:
        stats.record("m", "zmq", OK, v)
    true = values[int(q * len(values)) - 1]
    estimate = quantile(stats.hist["m"], q)
    assert true / 1.34 <= estimate <= true * 1.34   # bounds are at most 4/3 apart


def test_quantile_of_nothing_is_none():
    assert quantile([0] * NBUCKETS, 0.5) is None
    assert Snapshot.empty().methods() == {}


def test_bucket_layout():
    assert BOUNDS[0] == 5e-5 and BOUNDS[-1] == 60.0
    assert all(b / a <= 4 / 3 + 1e-9 for a, b in zip(BOUNDS, BOUNDS[1:]))
    assert set(PROM_BUCKETS) <= set(BOUNDS)
    assert list(PROM_BUCKETS) == sorted(PROM_BUCKETS)
