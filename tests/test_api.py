"""The user API of DESIGN.md 2, seen from outside: master methods, worker -> master and worker ->
worker calls, call_shared, forwarding and balancing, hooks, @rpc(name=...)."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from clusterd import protocol
from tests.conftest import Rpc, running_instance, wait_for


@pytest.fixture(scope="module")
def inst():
    with running_instance("--workers", "2", name="api") as inst:
        inst.wait_ready(2)
        yield inst


@pytest.fixture(scope="module")
def rr():
    with running_instance("--workers", "2", "--balance", "round-robin", name="rr") as inst:
        inst.wait_ready(2)
        yield inst


def pids_by_slot(inst) -> dict[int, int]:
    return {w["slot"]: w["pid"] for w in inst.ready_workers()}


def send_many(c: Rpc, calls: list[tuple[str, list]]) -> list[int]:
    """Send every call at once (they are in flight together); return their ids in order."""
    ids = []
    for method, params in calls:
        c._id += 1
        ids.append(c._id)
        c.send_raw(protocol.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": c._id}))
    return ids


def collect(c: Rpc, ids: list[int], timeout: float = 10.0) -> list:
    """The results of the calls with these ids, in the order of ids."""
    got = {}
    while len(got) < len(ids):
        reply = protocol.loads(c.recv_raw(timeout))
        assert "error" not in reply, reply
        got[reply["id"]] = reply["result"]
    return [got[i] for i in ids]


# ---------------------------------------------------------------------------- master methods
def test_master_method_answers_from_the_master(c):
    assert c.result("config") == {"greeting": "hello"}
    assert c.result("master_add", 2, 40) == 42


def test_broadcast_reaches_every_ready_worker(inst, c):
    assert c.result("total", 5) == 5 * 2
    assert c.result("broadcast_pids") == {str(s): p for s, p in pids_by_slot(inst).items()}


def test_call_slot_reaches_the_given_worker(inst, c):
    for slot, pid in pids_by_slot(inst).items():
        assert c.result("via_slot", slot) == pid


def test_call_slot_to_a_missing_slot_is_an_error(c):
    reply = c.call("via_slot", 99)
    assert reply["error"]["code"] == -32001, reply


# ---------------------------------------------------------------------------- worker -> master, worker -> worker
def test_worker_calls_its_master(c):
    assert c.result("ask_master") == {"greeting": "hello"}
    assert c.result("master_sum", 20, 22) == 42


def test_worker_calls_a_given_peer(inst, c):
    pids = pids_by_slot(inst)
    for slot, pid in pids.items():
        for _ in range(2):  # whichever worker runs peer_pid, the answer comes from the named slot
            assert c.result("peer_pid", slot) == pid


def test_worker_broadcasts_to_all_workers(inst, c):
    assert c.result("peers") == {str(s): p for s, p in pids_by_slot(inst).items()}


def test_worker_calls_any_worker(inst, c):
    pids = set(pids_by_slot(inst).values())
    seen = {c.result("any_pid") for _ in range(8)}
    assert seen <= pids and seen


def test_worker_identity(inst, c):
    pids = pids_by_slot(inst)
    me = c.result("whoami")
    assert pids[me["slot"]] == me["pid"] and me["generation"] >= 1


# ---------------------------------------------------------------------------- call_shared
def test_concurrent_identical_shared_calls_share_one_execution(c):
    results = collect(c, send_many(c, [("shared_slow", ["x"])] * 5))
    assert all(r == results[0] for r in results), results
    # and from workers too, joining the same kind of execution
    results = collect(c, send_many(c, [("shared_from_worker", ["w"])] * 4))
    assert all(r == results[0] for r in results), results


def test_shared_call_after_the_execution_finished_runs_again(c):
    first = c.result("shared_slow", "y")
    asked_at = time.time()
    second = c.result("shared_slow", "y")
    assert (second["pid"], second["execution"]) != (first["pid"], first["execution"])
    assert second["at"] > first["at"] and second["at"] >= asked_at


def test_shared_calls_with_different_params_do_not_share(c):
    a, b = collect(c, send_many(c, [("shared_slow", ["p"]), ("shared_slow", ["q"])]))
    assert (a["tag"], b["tag"]) == ("p", "q")
    assert (a["pid"], a["execution"]) != (b["pid"], b["execution"])


# ---------------------------------------------------------------------------- forwarding and balancing
def test_forwarded_call_spreads_over_all_workers(inst, c):
    pids = set(pids_by_slot(inst).values())
    results = collect(c, send_many(c, [("sleep", [0.3])] * 6))
    assert Counter(results) == {p: 3 for p in pids}


def test_least_busy_avoids_the_busy_worker(inst, c):
    (busy_id,) = send_many(c, [("sleep", [1.0])])
    quick = [c.result("pid") for _ in range(4)]
    busy = collect(c, [busy_id])[0]
    assert busy not in quick and len(set(quick)) == 1, (busy, quick)


def test_round_robin_alternates_regardless_of_load(rr):
    c = rr.client()
    (busy_id,) = send_many(c, [("sleep", [1.0])])
    quick = [c.result("pid") for _ in range(4)]
    busy = collect(c, [busy_id])[0]
    assert quick[0] != busy and quick[1] == busy and quick[2] != busy and quick[3] == busy, (busy, quick)
    assert set(quick) == set(pids_by_slot(rr).values())


# ---------------------------------------------------------------------------- hooks and names
def test_on_worker_ready_saw_every_slot(inst, c):
    hooks = c.result("hooks")
    assert sorted(set(hooks["ready"])) == sorted(pids_by_slot(inst))
    assert hooks["exits"] == []


def test_rpc_name_renames_the_method(c):
    assert c.result("sum", 1, 2, 3) == 6
    assert c.call("sum_all", 1, 2)["error"]["code"] == -32601


def test_sync_and_async_methods_both_serve(c):
    assert c.result("add", 1, 2) == 3                      # plain def
    assert isinstance(c.result("sleep", 0), int)           # async def


def test_reload_through_control_sock_replaces_workers(rr):
    c = rr.client()
    before = pids_by_slot(rr)
    result = c.result("clusterd.reload", timeout=30)
    assert result, result
    def replaced():
        now = pids_by_slot(rr)
        return now if len(now) == 2 and not set(now.values()) & set(before.values()) else None

    after = wait_for(replaced, message="every worker replaced")
    assert sorted(after) == sorted(before)
    assert rr.status()["generation"] >= 2
    assert c.result("add", 1, 1) == 2
