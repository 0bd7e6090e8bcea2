"""Workers SIGKILLed at random while clients call continuously: every call is answered, failures are
only -32002/-32001, idempotent calls never fail, and the cluster heals (clusterd.bench.chaos.run_chaos, which
`clusterd bench --chaos SECONDS` runs for longer)."""

from __future__ import annotations

from clusterd import protocol
from clusterd.bench.chaos import format_tallies, run_chaos

from .conftest import free_port


def test_random_worker_kills_under_load_lose_no_call(cluster):
    port = free_port()
    inst = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "3",
                   "--bind", f"tcp://127.0.0.1:{port}", "--crash-limit", "1000", "--queue-timeout", "10")
    pid = inst.status()["master"]["pid"]
    tallies = run_chaos(inst, 12.0, clients=4, window=4, call_address=f"tcp://127.0.0.1:{port}", seed=8)
    print("\n" + format_tallies(tallies))
    assert tallies["kills"] >= 10, tallies
    assert tallies["calls"] > 1000 and tallies["answered"] == tallies["calls"], tallies
    assert tallies["unanswered"] == 0 and tallies["stray"] == 0, tallies
    assert set(tallies["errors"]) <= {str(protocol.WORKER_DIED), str(protocol.NO_WORKER)}, tallies
    assert tallies["idempotent_calls"] > 300 and tallies["idempotent_failed"] == 0, tallies
    assert tallies["healed"] and tallies["master_same"] and tallies["master_pid"] == pid, tallies
    assert tallies["passed"]
    doc = inst.status()
    assert [w["state"] for w in doc["workers"]] == ["ready"] * 3
    assert doc["queued"] == 0 and doc["client_inflight"] == 0 and all(w["inflight"] == 0 for w in doc["workers"])
    assert inst.client().result("add", 1, 2) == 3
