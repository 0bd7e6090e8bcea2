"""`clusterd bench --http --quick --json` runs and reports every figure and target (not their values)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("http_seq_p50_us", "http_seq_p99_us", "ws_seq_p50_us", "ws_seq_p99_us", "http_1_calls_per_s",
           "http_8_calls_per_s", "http_64_calls_per_s", "ws_1x8_calls_per_s", "ws_8x8_calls_per_s",
           "ws_64x8_calls_per_s")
TARGETS = ("http_64_vs_bare", "ws_8x8_vs_bare", "ws_8x8_vs_zmq", "ws_seq_p50_vs_bare", "ws_seq_p50_vs_zmq",
           "ws_scaling", "master_cpu_us_per_call")


@pytest.mark.timeout(150)
def test_http_bench_reports_clusterd_and_bare_servers_side_by_side() -> None:
    done = subprocess.run([sys.executable, "-m", "clusterd", "bench", "--http", "--quick", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=140)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    systems = result["systems"]
    assert {"clusterd_1", "clusterd_2", "door_1", "door_2"} <= systems.keys()
    for name, figures in systems.items():
        for figure in FIGURES:
            assert figures[figure] > 0, (name, figure)
    for name in ("clusterd_1", "clusterd_2"):
        assert systems[name]["master_cpu_us_per_call"] >= 0
        assert systems[name]["zmq_pipelined_calls_per_s"] > 0 and systems[name]["zmq_seq_p50_us"] > 0
    assert set(result["targets"]) == set(TARGETS)
    for target in result["targets"].values():
        assert isinstance(target["met"], bool) and target["op"] in (">=", "<=")
    assert result["all_met"] == all(t["met"] for t in result["targets"].values())

    from clusterd.bench.http import format_http_table
    table = format_http_table(result)
    assert all(f["label"] in table for f in systems.values())


@pytest.mark.timeout(120)
def test_a_killed_http_bench_leaves_no_server_behind() -> None:
    """SIGTERM (a `kill`, a CI timeout) goes through the same cleanup as Ctrl-C: every clusterd
    instance and echo server the bench started is gone when it exits."""
    import signal
    import time

    import psutil
    proc = subprocess.Popen([sys.executable, "-m", "clusterd", "bench", "--http", "--quick"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # its progress lines: the servers are up once rounds begin
            line = proc.stderr.readline()
            started |= {child.pid for child in psutil.Process(proc.pid).children(recursive=True)}
            if not line or ("round" in line.lower() and len(started) >= 4):
                break
        assert len(started) >= 4, "the bench's servers never started"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM
        alive = []
        for pid in started:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        assert not alive, f"left running: {alive}"
    finally:
        for pid in started:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
