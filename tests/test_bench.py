"""`clusterd bench --quick --json` runs and reports every figure (not the figures' values)."""

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
    assert set(result["systems"]) == set(SYSTEMS)
    for name in SYSTEMS:
        figures = result["systems"][name]
        for key in SYSTEM_FIGURES:
            assert _positive(figures[key]), (name, key, figures[key])
        assert figures["seq_p50_us"] <= figures["seq_p99_us"]
        rounds = figures["pipelined_rounds_calls_per_s"]
        assert rounds and all(_positive(rate) for rate in rounds), name
    for name in ("c_proxy", "handwritten", "clusterd"):
        for key in ("multi_client_calls_per_s", "master_cpu_us_per_call",
                    "workers_cpu_us_per_call"):
            assert _positive(result["systems"][name][key]), (name, key)


@pytest.mark.timeout(120)
def test_bench_reports_speedup_restart_and_memory(result: dict[str, Any]) -> None:
    for key in ("burn_n", "burn_ms", "calls", "workers", "time_1_worker_s", "time_n_workers_s",
                "speedup"):
        assert _positive(result["cpu"][key]), key
    restart = result["restart"]
    assert restart["samples_ms"] and all(_positive(v) for v in restart["samples_ms"])
    assert _positive(restart["median_ms"]) and _positive(restart["max_ms"])
    for key in ("master_rss_mb", "master_rss_fresh_mb", "worker_rss_mb"):
        assert _positive(result["memory"][key]), key


@pytest.mark.timeout(120)
def test_bench_judges_every_target(result: dict[str, Any]) -> None:
    assert set(result["targets"]) == set(TARGETS)
    for name, target in result["targets"].items():
        assert _positive(target["value"]), name
        assert target["op"] in (">=", "<=")
        assert isinstance(target["met"], bool)
    assert result["all_met"] == all(t["met"] for t in result["targets"].values())
    assert result["quick"] is True and _positive(result["elapsed_s"])


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
