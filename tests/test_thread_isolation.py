"""`--isolation thread` (issue 9, DESIGN.md 11): the same API, protocol and status with workers as
threads of the master; a thread whose loop died is restarted, a hung one is abandoned and replaced."""

from __future__ import annotations

import signal

import pytest

from clusterd import protocol
from tests.conftest import call_in_thread, running_instance, wait_for

APP = ("tests.apps.threaded:Master", "tests.apps.threaded:Worker")


@pytest.fixture(scope="module")
def inst():
    with running_instance("--workers", "2", "--isolation", "thread", master=APP[0], worker=APP[1],
                          name="thr") as inst:
        inst.wait_ready(2)
        yield inst


def worker_in_slot(inst, slot: int, state: str = "ready") -> dict | None:
    for w in inst.status()["workers"]:
        if w["slot"] == slot and w["state"] == state:
            return w
    return None


# ---------------------------------------------------------------------------- the same API
def test_status_says_thread_isolation(inst):
    doc = inst.status()
    assert doc["config"]["isolation"] == "thread"
    assert [w["isolation"] for w in doc["workers"]] == ["thread", "thread"]
    assert {w["pid"] for w in doc["workers"]} == {doc["master"]["pid"]}
    assert all(w["rss_bytes"] is None for w in doc["workers"])  # memory is the master's
    threads = doc["threads"]
    assert threads["abandoned"] == [] and isinstance(threads["gil"], bool)
    assert any("cannot be killed" in line for line in threads["limits"])


def test_workers_are_threads_of_the_master(c):
    seen = {}
    for _ in range(6):
        info = c.result("thread")
        seen[info["slot"]] = info
    assert all(not t["main"] and t["thread"].startswith("clusterd-worker-") for t in seen.values())


def test_forwarded_calls_spread_over_the_threads(c):
    ids = []
    for _ in range(4):
        c._id += 1
        ids.append(c._id)
        c.send_raw(protocol.dumps({"jsonrpc": "2.0", "method": "sleep", "params": [0.3], "id": c._id}))
    for _ in ids:
        reply = protocol.loads(c.recv_raw(10))
        assert "result" in reply, reply
    assert c.result("add", 2, 3) == 5
    assert c.result("sum", 1, 2, 3) == 6
    assert c.call("fail", "boom")["error"]["code"] == -32000


def test_worker_calls_its_master(c):
    assert c.result("ask_master") == {"greeting": "hello"}
    assert c.result("master_sum", 20, 22) == 42


def test_broadcast_and_call_slot(c):
    assert c.result("total", 5) == 10
    assert sorted(c.result("peers")) == ["0", "1"]
    assert c.result("slot_of", 0) == 0 and c.result("slot_of", 1) == 1


def test_call_shared_shares_one_execution(c):
    ids = []
    for _ in range(4):
        c._id += 1
        ids.append(c._id)
        c.send_raw(protocol.dumps({"jsonrpc": "2.0", "method": "shared_slow", "params": ["t"], "id": c._id}))
    results = [protocol.loads(c.recv_raw(10))["result"] for _ in ids]
    assert all(r == results[0] for r in results), results


# ---------------------------------------------------------------------------- supervision of threads
@pytest.mark.parametrize("method", ["exit_loop", "exit_loop_async"])
def test_a_thread_whose_loop_died_is_restarted_in_its_slot(cluster, method):
    inst = cluster(*APP, "--workers", "2", "--isolation", "thread")
    inst.wait_ready(2)
    c = inst.client()
    reply = c.call(method, 5)
    assert reply["error"]["code"] == -32002, reply     # the caller hears of it at once
    def restarted_once():
        ws = inst.ready_workers()
        return ws if len(ws) == 2 and sum(w["restarts"] for w in ws) == 1 else None
    new = wait_for(restarted_once, timeout=10, message="the thread restarted")
    restarted = next(w for w in new if w["restarts"] == 1)
    assert restarted["last_exit"]["code"] == 5 and restarted["last_exit"]["reason"] == "crashed"
    assert c.result("total", 1) == 2
    assert inst.proc.poll() is None                     # the master lives on


def test_a_hung_thread_is_abandoned_and_replaced(cluster):
    inst = cluster(*APP, "--workers", "1", "--isolation", "thread", "--heartbeat-timeout", "1")
    inst.wait_ready(1)
    c = inst.client()
    t, box = call_in_thread(c, "hang")
    def abandoned():
        doc = inst.status()
        return doc if doc["threads"]["abandoned"] else None
    doc = wait_for(abandoned, timeout=15, message="the hung thread abandoned")
    (gone,) = doc["threads"]["abandoned"]
    assert gone["slot"] == 0 and gone["alive"] is True
    t.join(10)
    assert box["reply"]["error"]["code"] == -32002, box
    new = wait_for(lambda: worker_in_slot(inst, 0), timeout=10, message="a new thread in slot 0")
    assert new["last_exit"]["reason"] == "hung"
    assert inst.client().result("add", 1, 1) == 2
    inst.signal(signal.SIGTERM)                          # a hung thread does not keep the master from exiting
    assert inst.wait_exit(timeout=20) == 0


def test_boot_failure_of_a_thread_fails_fast_with_the_traceback(cluster):
    inst = cluster("tests.apps.crashy:Master", "tests.apps.crashy:BootFails", "--workers", "2",
                   "--isolation", "thread", start=False)
    inst.start(wait=False)
    assert inst.wait_exit(timeout=20) == 1
    err = inst.stderr()
    assert "database unreachable at boot" in err and "Traceback" in err


def test_isolation_comes_from_the_environment(cluster):
    inst = cluster(*APP, "--workers", "1", env={"CLUSTERD_ISOLATION": "thread"})
    assert inst.status()["config"]["isolation"] == "thread"


def test_a_bad_isolation_is_a_usage_error(cluster):
    inst = cluster(*APP, "--isolation", "fork", start=False)
    inst.start(wait=False)
    assert inst.wait_exit(timeout=20) == 2
    assert "isolation" in inst.stderr() and "Traceback" not in inst.stderr()


def test_stop_and_reload_with_thread_workers(cluster):
    inst = cluster(*APP, "--workers", "2", "--isolation", "thread")
    inst.wait_ready(2)
    c = inst.client()
    assert c.result("clusterd.reload", timeout=30)
    wait_for(lambda: inst.status()["generation"] >= 2 and len(inst.ready_workers()) == 2
             and all(w["generation"] >= 2 for w in inst.ready_workers()), message="generation 2 ready")
    assert c.result("add", 1, 1) == 2
    inst.signal(signal.SIGTERM)
    assert inst.wait_exit(timeout=20) == 0
