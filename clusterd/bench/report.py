"""The bench's verdict and its table: the targets of issue 6, judged; the human-readable report."""

from __future__ import annotations

from typing import Any


def targets(systems: dict[str, dict[str, Any]], cpu: dict[str, Any], restart: dict[str, Any],
             memory: dict[str, Any], workers: int) -> dict[str, dict[str, Any]]:
    forwarded = systems["clusterd"]["pipelined_calls_per_s"]

    def ratio(a: float, b: float) -> float:
        return round(a / b, 2) if b else 0.0

    rows: list[tuple[str, str, float, str, float]] = [
        ("forwarded_vs_handwritten", "forwarded calls/s ÷ hand-written master",
         ratio(forwarded, systems["handwritten"]["pipelined_calls_per_s"]), ">=", 1.0),
        ("forwarded_vs_c_proxy", "forwarded calls/s ÷ C proxy",
         ratio(forwarded, systems["c_proxy"]["pipelined_calls_per_s"]), ">=", 0.5),
        ("forwarded_vs_process_pool", "forwarded calls/s ÷ ProcessPoolExecutor",
         ratio(forwarded, systems["process_pool"]["pipelined_calls_per_s"]), ">=", 2.5),
        ("seq_p50_vs_c_proxy", "sequential p50 ÷ C proxy's",
         ratio(systems["clusterd"]["seq_p50_us"], systems["c_proxy"]["seq_p50_us"]), "<=", 1.3),
        ("speedup", f"CPU-bound speedup, {workers} workers ÷ 1", cpu["speedup"], ">=",
         round(0.9 * workers, 2)),
        ("restart_median_ms", "killed worker serving again, median ms", restart["median_ms"],
         "<=", 100.0),
        ("master_rss_mb", "master RSS idle, MB", memory["master_rss_mb"], "<=", 40.0),
    ]
    return {key: {"label": label, "value": value, "op": op, "target": target,
                  "met": value >= target if op == ">=" else value <= target}
            for key, label, value, op, target in rows}


def format_table(result: dict[str, Any]) -> str:
    """The human-readable report of a ``run_bench()`` result."""
    params, machine = result["params"], result["machine"]
    lines = [
        f"clusterd bench{' --quick' if result['quick'] else ''}: {params['workers']} workers, "
        f"{machine['cpus']} CPUs, Python {machine['python']}, pyzmq {machine['pyzmq']} "
        f"(libzmq {machine['libzmq']}); echo of {params['payload_bytes']} bytes, "
        f"window {params['window']}",
        "",
        f"{'':<22}{'sequential µs':^16}  {'pipelined calls/s':^22}  {'CPU µs per call':^18}",
        f"{'system':<22}{'p50':>8}{'p99':>8}  {'1 client':>10}"
        f"{str(params['clients']) + ' clients':>12}  {'master':>9}{'workers':>9}",
    ]
    for figures in result["systems"].values():
        lines.append(
            f"{figures['label']:<22}{figures['seq_p50_us']:>8.0f}{figures['seq_p99_us']:>8.0f}  "
            f"{figures['pipelined_calls_per_s']:>10,.0f}"
            f"{_maybe(figures['multi_client_calls_per_s'], ',.0f'):>12}  "
            f"{_maybe(figures['master_cpu_us_per_call'], '.1f'):>9}"
            f"{_maybe(figures['workers_cpu_us_per_call'], '.1f'):>9}")
    cpu, restart, memory = result["cpu"], result["restart"], result["memory"]
    lines += [
        "",
        f"CPU-bound: {cpu['calls']} × burn ({cpu['burn_ms']:.0f} ms) in "
        f"{cpu['time_1_worker_s']:.2f} s on 1 worker, {cpu['time_n_workers_s']:.2f} s on "
        f"{cpu['workers']}: speedup {cpu['speedup']:.2f}",
        f"killed worker serving again: median {restart['median_ms']:.0f} ms, max "
        f"{restart['max_ms']:.0f} ms over {len(restart['samples_ms'])} kills",
        f"RSS: master {memory['master_rss_mb']:.1f} MB idle after load "
        f"({memory['master_rss_fresh_mb']:.1f} MB fresh), worker {memory['worker_rss_mb']:.1f} MB",
        "",
        f"{'target':<44}{'value':>9}  {'goal':<8}met",
    ]
    for target in result["targets"].values():
        lines.append(f"{target['label']:<44}{target['value']:>9g}  "
                     f"{target['op'] + ' ' + format(target['target'], 'g'):<8}"
                     f"{'yes' if target['met'] else 'NO'}")
    lines.append(f"\nall targets met: {'yes' if result['all_met'] else 'no'} "
                 f"(run took {result['elapsed_s']:.0f} s)")
    return "\n".join(lines)


def _maybe(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)

