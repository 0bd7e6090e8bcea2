"""`clusterd bench --quick --json` runs and reports every figure, consistent with its parameters (the
figures' speeds are not asserted); the verdict on the targets is checked on known figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = [sys.executable, "-m", "clusterd", "bench", "--quick", "--json"]

SYSTEMS = ("c_proxy", "handwritten", "process_pool", "clusterd")
SYSTEM_FIGURES = ("seq_p50_us", "seq_p99_us", "seq_mean_us", "pipelined_calls_per_s")
TARGETS = ("forwarded_vs_handwritten", "forwarded_vs_c_proxy", "forwarded_vs_process_pool",
           "seq_p50_vs_c_proxy", "speedup", "restart_median_ms", "master_rss_mb")


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    done = subprocess.run(BENCH, cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr
    parsed: dict[str, Any] = json.loads(done.stdout)
    return parsed


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


@pytest.mark.timeout(120)
def test_bench_reports_every_system(result: dict[str, Any]) -> None:
    from clusterd.bench.plan import SYSTEM_LABELS

    assert result["version"] == 1 and result["quick"] is True and 0 < result["elapsed_s"] < 110
    params = result["params"]
    assert params["workers"] == 2 and params["payload_bytes"] == 50 and params["rounds"] == 1
    assert set(result["systems"]) == set(SYSTEMS)
    for name in SYSTEMS:
        figures = result["systems"][name]
        assert figures["label"] == SYSTEM_LABELS[name]
        for key in SYSTEM_FIGURES:
            assert _positive(figures[key]), (name, key, figures[key])
        assert figures["seq_p50_us"] <= figures["seq_p99_us"]
        rounds = figures["pipelined_rounds_calls_per_s"]
        assert len(rounds) == params["rounds"] and all(_positive(rate) for rate in rounds), name
        assert figures["pipelined_calls_per_s"] == max(rounds)          # the best round's
    for name in ("c_proxy", "handwritten", "clusterd"):
        for key in ("multi_client_calls_per_s", "master_cpu_us_per_call",
                    "workers_cpu_us_per_call"):
            assert _positive(result["systems"][name][key]), (name, key)
    pool = result["systems"]["process_pool"]
    assert pool["multi_client_calls_per_s"] is None and pool["master_cpu_us_per_call"] is None


@pytest.mark.timeout(120)
def test_bench_reports_speedup_restart_and_memory(result: dict[str, Any]) -> None:
    cpu, params = result["cpu"], result["params"]
    for key in ("burn_n", "burn_ms", "time_1_worker_s", "time_n_workers_s", "speedup"):
        assert _positive(cpu[key]), key
    assert cpu["workers"] == params["workers"] == 2 and cpu["calls"] == params["burn_calls"]
    # the times are rounded to the millisecond and the speedup to 0.01, from the unrounded times
    t1, tn = cpu["time_1_worker_s"], cpu["time_n_workers_s"]
    assert (t1 - 0.0005) / (tn + 0.0005) - 0.005 <= cpu["speedup"] <= (t1 + 0.0005) / (tn - 0.0005) + 0.005
    restart = result["restart"]
    samples = restart["samples_ms"]
    assert len(samples) == params["restart_repeats"] and all(_positive(v) for v in samples)
    assert min(samples) <= restart["median_ms"] <= max(samples) and restart["max_ms"] == max(samples)
    for key in ("master_rss_mb", "master_rss_fresh_mb", "worker_rss_mb"):
        assert 1 < result["memory"][key] < 1000, key


@pytest.mark.timeout(120)
def test_bench_targets_are_the_documented_goals_of_its_own_figures(result: dict[str, Any]) -> None:
    targets, systems = result["targets"], result["systems"]
    assert set(targets) == set(TARGETS)
    goals = {"forwarded_vs_handwritten": (">=", 1.0), "forwarded_vs_c_proxy": (">=", 0.5),
             "forwarded_vs_process_pool": (">=", 2.5), "seq_p50_vs_c_proxy": ("<=", 1.3),
             "speedup": (">=", 1.8), "restart_median_ms": ("<=", 100.0), "master_rss_mb": ("<=", 40.0)}
    for name, (op, goal) in goals.items():
        assert (targets[name]["op"], targets[name]["target"]) == (op, goal), name
    forwarded = systems["clusterd"]["pipelined_calls_per_s"]
    assert targets["forwarded_vs_c_proxy"]["value"] == pytest.approx(
        forwarded / systems["c_proxy"]["pipelined_calls_per_s"], abs=0.01)
    assert targets["speedup"]["value"] == result["cpu"]["speedup"]
    assert targets["restart_median_ms"]["value"] == result["restart"]["median_ms"]
    assert targets["master_rss_mb"]["value"] == result["memory"]["master_rss_mb"]
    assert isinstance(result["all_met"], bool)


def _figures(clusterd_rate: float, p50: float = 100.0) -> dict[str, dict[str, Any]]:
    rates = {"c_proxy": 100_000.0, "handwritten": 40_000.0, "process_pool": 10_000.0, "clusterd": clusterd_rate}
    return {name: {"pipelined_calls_per_s": rate, "seq_p50_us": p50 if name == "clusterd" else 100.0}
            for name, rate in rates.items()}


def test_targets_met_and_missed_on_known_figures() -> None:
    from clusterd.bench.report import targets

    cpu, restart, memory = {"speedup": 1.9}, {"median_ms": 12.0}, {"master_rss_mb": 30.0}
    good = targets(_figures(60_000.0), cpu, restart, memory, workers=2)
    assert all(t["met"] for t in good.values()), good
    assert good["forwarded_vs_c_proxy"]["value"] == 0.6 and good["forwarded_vs_process_pool"]["value"] == 6.0
    # each figure just on the wrong side of its goal misses that target and no other
    bad = targets(_figures(45_000.0, p50=131.0), {"speedup": 1.7}, {"median_ms": 100.5},
                  {"master_rss_mb": 40.1}, workers=2)
    assert {name for name, t in bad.items() if not t["met"]} == {
        "forwarded_vs_c_proxy", "seq_p50_vs_c_proxy", "speedup", "restart_median_ms", "master_rss_mb"}
    on_goal = targets(_figures(50_000.0, p50=130.0), {"speedup": 1.8}, {"median_ms": 100.0},
                      {"master_rss_mb": 40.0}, workers=2)
    assert all(t["met"] for t in on_goal.values()), on_goal          # a goal reached is met
    assert targets(_figures(1.0), cpu, restart, memory, workers=4)["speedup"]["target"] == 3.6


@pytest.mark.timeout(120)
def test_bench_table_shows_every_system_and_target(result: dict[str, Any]) -> None:
    from clusterd.bench import format_table

    table = format_table(result)
    for figures in result["systems"].values():
        assert figures["label"] in table
    for target in result["targets"].values():
        assert target["label"] in table


@pytest.mark.timeout(60)
def test_bench_chaos_reports_tallies_and_passes() -> None:
    done = subprocess.run([sys.executable, "-m", "clusterd", "bench", "--chaos", "3", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=55)
    assert done.returncode == 0, done.stderr
    tallies = json.loads(done.stdout)
    assert tallies["passed"] is True
    assert tallies["kills"] >= 1 and tallies["unanswered"] == 0
    assert tallies["idempotent_failed"] == 0
