"""Prometheus metrics of a whole instance, built at scrape time from what the master already knows.

No exposition code of our own: a custom prometheus_client Collector in a private registry turns the
status document (DESIGN section 6) and the merged per-method statistics into metric families, and
`generate_latest` writes the text. Nothing is kept between scrapes, so the numbers are exactly the
master's, whichever process serves the scrape.

Fields of the status document read here (those marked * are not in it yet, see INPUT_FIELDS):

    name, state, generation, queued, calls_inflight*
    master: pid, started_at, version, rss_bytes, cpu_seconds*, loop_lag_s*, open_fds*, max_fds*,
            clients*
    workers[]: slot, state, generation, started_at, rss_bytes, cpu_seconds*, inflight, served, failed
    counters*: {"refused": {code: n}, "rejected": {reason: n}, "restarts": {reason: n},
                "reloads": {outcome: n}}                       # cumulative since the master started

A field that is absent leaves its family without samples (never a made-up zero).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from .meters import LoopLagMeter, fd_usage
from .method_stats import PROM_BUCKETS, MethodStats, cumulative_at_prom_buckets

WORKER_STATES = ("starting", "ready", "draining", "stopping")

INPUT_FIELDS = {
    "calls_inflight": "calls being answered now, all doors (else the sum of workers[].inflight)",
    "master.cpu_seconds": "CPU seconds (user + system) of the master process",
    "master.loop_lag_s": "how late the master's periodic tick ran, latest (LoopLagMeter.take())",
    "master.open_fds": "open file descriptors of the master (fd_usage())",
    "master.max_fds": "the soft RLIMIT_NOFILE of the master (fd_usage())",
    "master.clients": "clients connected now (ZeroMQ peers with calls in flight, HTTP/WS connections)",
    "workers[].cpu_seconds": "CPU seconds (user + system) of that worker process",
    "counters.refused": "{code: n}: calls answered -32001, -32004 or -32005 without reaching a worker",
    "counters.rejected": "{reason: n}: messages dropped before routing: too-large, malformed",
    "counters.restarts": "{reason: n}: workers replaced, by last_exit reason (crashed, hung, max-memory, ...)",
    "counters.reloads": "{outcome: n}: rolling reloads finished, ok or failed",
}


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _gauge(name: str, doc: str, value: Any) -> Iterator[Metric]:
    number = _num(value)
    if number is not None:
        family = GaugeMetricFamily(name, doc)
        family.add_metric([], number)
        yield family


def _by_label(family: GaugeMetricFamily | CounterMetricFamily, mapping: Any) -> None:
    if isinstance(mapping, dict):
        for label in sorted(mapping, key=str):
            number = _num(mapping[label])
            if number is not None:
                family.add_metric([str(label)], number)


def slot_rows(workers: list[dict]) -> dict[int, dict]:
    """One worker per slot: during a reload or a recycle a slot briefly holds two (the draining one
    and its replacement); the series follow the one that serves, else the newest."""
    rank = {"ready": 3, "starting": 2, "draining": 1, "stopping": 0}
    chosen: dict[int, dict] = {}
    for w in workers:
        slot = w.get("slot")
        if not isinstance(slot, int) or w.get("pid") is None:
            continue
        best = chosen.get(slot)
        key = (rank.get(w.get("state"), 0), w.get("generation") or 0, w.get("started_at") or 0.0)
        if best is None or key > (rank.get(best.get("state"), 0), best.get("generation") or 0,
                                  best.get("started_at") or 0.0):
            chosen[slot] = w
    return chosen


class ClusterCollector:
    """Collects on every scrape from `status()` (the status document) and `stats` (merged calls)."""

    def __init__(self, status: Callable[[], dict], stats: MethodStats, clusterd_version: str) -> None:
        self.status = status
        self.stats = stats
        self.clusterd_version = clusterd_version

    def describe(self) -> list:
        return []  # nothing to check at registration; collect() needs a live master

    def collect(self) -> Iterator[Metric]:
        doc = self.status()
        yield from self._calls()
        yield from self._instance(doc)
        yield from self._workers(doc.get("workers") or [])
        yield from self._master(doc.get("master") or {})

    def _calls(self) -> Iterator[Metric]:
        snap = self.stats.snapshot()
        calls = CounterMetricFamily("clusterd_calls", "Calls answered, by method, front door and outcome "
                                    "(ok or the JSON-RPC error code).", labels=["method", "door", "outcome"])
        for (method, door, outcome), n in sorted(snap.calls.items()):
            calls.add_metric([method, door, outcome], n)
        yield calls
        duration = HistogramMetricFamily("clusterd_call_duration_seconds", "Time from a call's arrival "
                                         "to its answer, by method.", labels=["method"])
        les = [floatToGoString(b) for b in PROM_BUCKETS] + ["+Inf"]
        for method in sorted(snap.hist):
            cumulative = cumulative_at_prom_buckets(snap.hist[method])
            duration.add_metric([method], list(zip(les, cumulative)), snap.sums.get(method, 0.0))
        yield duration

    def _instance(self, doc: dict) -> Iterator[Metric]:
        master = doc.get("master") or {}
        info = GaugeMetricFamily("clusterd_build_info", "Always 1: the clusterd version and the app's "
                                 "version (--watch-version or its package).", labels=["version", "app_version"])
        info.add_metric([self.clusterd_version, str(master.get("version") or "")], 1)
        yield info
        yield from _gauge("clusterd_generation", "Code generation the workers run (grows with each reload).",
                          doc.get("generation"))
        inflight = doc.get("calls_inflight")
        if inflight is None:
            inflight = sum(w.get("inflight") or 0 for w in doc.get("workers") or [])
        yield from _gauge("clusterd_calls_in_flight", "Calls being answered now.", inflight)
        yield from _gauge("clusterd_calls_queued", "Calls waiting for a ready worker.", doc.get("queued"))
        counters = doc.get("counters") or {}
        for key, name, label, text in (
                ("refused", "clusterd_calls_refused", "code", "Calls refused without reaching a worker "
                 "(-32001 no worker ready, -32004 shutting down, -32005 too busy)."),
                ("rejected", "clusterd_messages_rejected", "reason", "Messages dropped before routing "
                 "(too large, malformed)."),
                ("restarts", "clusterd_worker_restarts", "reason", "Workers replaced, by reason."),
                ("reloads", "clusterd_reloads", "outcome", "Rolling reloads finished, by outcome.")):
            family = CounterMetricFamily(name, text, labels=[label])
            _by_label(family, counters.get(key))
            yield family

    def _workers(self, workers: list[dict]) -> Iterator[Metric]:
        states = GaugeMetricFamily("clusterd_workers", "Worker processes by state.", labels=["state"])
        counts = dict.fromkeys(WORKER_STATES, 0)
        for w in workers:  # a slot waiting out its restart backoff is a row "starting" without a pid
            state = str(w.get("state"))
            counts[state] = counts.get(state, 0) + 1
        for state, n in counts.items():
            states.add_metric([state], n)
        yield states
        rss = GaugeMetricFamily("clusterd_worker_rss_bytes", "Resident memory of the worker serving a slot.",
                                labels=["slot"])
        cpu = CounterMetricFamily("clusterd_worker_cpu_seconds", "CPU time of the worker serving a slot "
                                  "(starts again at 0 when it is replaced).", labels=["slot"])
        served = CounterMetricFamily("clusterd_worker_calls_served", "Calls the worker serving a slot "
                                     "answered, through the master and on its HTTP/WebSocket door.", labels=["slot"])
        failed = CounterMetricFamily("clusterd_worker_calls_failed", "Calls the worker serving a slot "
                                     "answered with an error.", labels=["slot"])
        for slot, w in sorted(slot_rows(workers).items()):
            for family, key in ((rss, "rss_bytes"), (cpu, "cpu_seconds"), (served, "served"), (failed, "failed")):
                number = _num(w.get(key))
                if number is not None:
                    family.add_metric([str(slot)], number)
        yield from (rss, cpu, served, failed)

    def _master(self, master: dict) -> Iterator[Metric]:
        yield from _gauge("clusterd_master_loop_lag_seconds", "How late the master's periodic tick ran.",
                          master.get("loop_lag_s"))
        yield from _gauge("clusterd_master_rss_bytes", "Resident memory of the master.", master.get("rss_bytes"))
        cpu = _num(master.get("cpu_seconds"))
        if cpu is not None:
            family = CounterMetricFamily("clusterd_master_cpu_seconds", "CPU time of the master.")
            family.add_metric([], cpu)
            yield family
        yield from _gauge("clusterd_master_start_time_seconds", "When the master started (Unix time).",
                          master.get("started_at"))
        yield from _gauge("clusterd_open_fds", "Open file descriptors of the master.", master.get("open_fds"))
        yield from _gauge("clusterd_max_fds", "The master's limit of open file descriptors.", master.get("max_fds"))
        yield from _gauge("clusterd_clients_connected", "Clients connected now.", master.get("clients"))


class Exporter:
    """A private registry holding one ClusterCollector; `render()` answers GET /metrics."""

    def __init__(self, status: Callable[[], dict], stats: MethodStats, clusterd_version: str) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ClusterCollector(status, stats, clusterd_version))

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The body and its content type for a request's Accept header: Prometheus text 0.0.4 unless
        the scraper asks for OpenMetrics (prometheus_client negotiates)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


__all__ = ["ClusterCollector", "Exporter", "INPUT_FIELDS", "LoopLagMeter", "fd_usage", "slot_rows"]
