"""Supervision (issue 3): whatever a worker does, every call is answered and status says what happened."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from tests.conftest import call_in_thread, terminal_signals, wait_exit, wait_for

BASIC = ("tests.apps.basic:Master", "tests.apps.basic:Worker")


def worker_in_slot(inst, slot: int, state: str = "ready") -> dict | None:
    for w in inst.status()["workers"]:
        if w["slot"] == slot and w["state"] == state:
            return w
    return None


def test_killed_worker_is_replaced_in_its_slot(cluster):
    inst = cluster(*BASIC, "--workers", "2")
    before = {w["slot"]: w["pid"] for w in inst.wait_ready(2)}
    os.kill(before[0], signal.SIGKILL)
    new = wait_for(lambda: (lambda w: w if w and w["pid"] != before[0] else None)(worker_in_slot(inst, 0)),
                   timeout=5, message="slot 0 replaced")
    assert new["restarts"] == 1
    assert new["last_exit"]["reason"] == "crashed"
    assert new["last_exit"]["signal"] == signal.SIGKILL
    assert worker_in_slot(inst, 1)["pid"] == before[1]
    assert inst.client().result("add", 1, 1) == 2


def test_boot_failure_fails_fast_with_the_traceback(cluster):
    inst = cluster("tests.apps.crashy:Master", "tests.apps.crashy:BootFails", "--workers", "2", start=False)
    inst.start(wait=False)
    code = inst.wait_exit(timeout=20)
    assert code == 1
    err = inst.stderr()
    assert "database unreachable at boot" in err
    assert "Traceback" in err  # the worker's traceback is shown, as gunicorn does


def test_crash_loop_stops_the_master_with_exit_1(cluster):
    inst = cluster("tests.apps.crashy:Master", "tests.apps.crashy:DiesAfterReady", "--workers", "1",
                   "--crash-limit", "3", "--crash-window", "60", start=False)
    inst.start(wait=False)
    assert inst.wait_exit(timeout=30) == 1


def test_repeated_failures_back_off(cluster):
    inst = cluster("tests.apps.crashy:Master", "tests.apps.crashy:DiesAfterReady", "--workers", "1",
                   "--crash-limit", "1000", start=False)
    inst.start(wait=False)
    # restarts accumulate, but with growing pauses: after ~3 s far fewer than the ~12 an instant restart loop makes
    wait_for(lambda: inst.status()["workers"] and inst.status()["workers"][0]["restarts"] >= 3, timeout=15,
             message="three restarts")
    start = time.monotonic()
    def restarts() -> int:
        return max(w["restarts"] for w in inst.status()["workers"])

    r0 = restarts()
    wait_for(lambda: time.monotonic() - start > 2.5, timeout=5)
    r1 = restarts()
    assert r1 - r0 <= 3
    # ... and the restarts go on (backing off is not giving up)
    wait_for(lambda: restarts() > r1, timeout=15, message="another restart after the backoff")
    assert inst.proc.poll() is None


def test_stopped_worker_is_killed_after_the_heartbeat_timeout(cluster):
    inst = cluster(*BASIC, "--workers", "2", "--heartbeat-timeout", "1")
    before = {w["slot"]: w["pid"] for w in inst.wait_ready(2)}
    os.kill(before[1], signal.SIGSTOP)
    new = wait_for(lambda: (lambda w: w if w and w["pid"] != before[1] else None)(worker_in_slot(inst, 1)),
                   timeout=8, message="stopped worker replaced")
    assert new["last_exit"]["reason"] == "hung"
    assert not psutil.pid_exists(before[1]) or psutil.Process(before[1]).status() == psutil.STATUS_ZOMBIE


def test_busy_pure_python_call_is_not_hung(cluster):
    inst = cluster(*BASIC, "--workers", "1", "--heartbeat-timeout", "1")
    pid = inst.wait_ready(1)[0]["pid"]
    reply = inst.client().call("spin", 3.5, timeout=15)
    assert reply["result"] == pid
    assert inst.status()["workers"][0]["restarts"] == 0


def test_deadlocked_worker_is_replaced_and_its_call_fails(cluster):
    inst = cluster(*BASIC, "--workers", "1", "--heartbeat-timeout", "1")
    pid = inst.wait_ready(1)[0]["pid"]
    reply = inst.client().call("deadlock", timeout=15)
    assert reply["error"]["code"] == -32002
    w = wait_for(lambda: worker_in_slot(inst, 0), timeout=8)
    assert w["pid"] != pid and w["last_exit"]["reason"] == "hung"


def test_call_timeout_answers_at_the_deadline_and_recycles_the_worker(cluster):
    inst = cluster(*BASIC, "--workers", "1", "--call-timeout", "1")
    pid = inst.wait_ready(1)[0]["pid"]
    t0 = time.monotonic()
    reply = inst.client().call("block", 30, timeout=15)
    elapsed = time.monotonic() - t0
    assert reply["error"]["code"] == -32003
    assert elapsed < 10
    wait_for(lambda: (lambda w: w and w["pid"] != pid)(worker_in_slot(inst, 0)), timeout=10,
             message="runaway worker replaced")
    assert inst.client().result("add", 2, 2) == 4


def test_method_timeout_overrides_default(cluster):
    # the default (--call-timeout 60) would let the call run for 20 s; the method's own 0.5 s ends it
    inst = cluster(*BASIC, "--workers", "1", "--call-timeout", "60")
    reply = inst.client().call("slow_with_timeout", 20, timeout=15)
    assert reply["error"]["code"] == -32003
    assert "0.5s" in reply["error"]["message"]


def test_call_on_a_dying_worker_gets_32002_at_once(cluster):
    inst = cluster(*BASIC, "--workers", "2")
    c = inst.client()
    t, box = call_in_thread(c, "sleep", 30)
    busy = wait_for(lambda: [w for w in inst.status()["workers"] if w["inflight"] == 1], timeout=5)[0]
    t0 = time.monotonic()
    os.kill(busy["pid"], signal.SIGKILL)
    t.join(10)
    assert time.monotonic() - t0 < 3
    assert box["reply"]["error"]["code"] == -32002


def test_idempotent_call_is_retried_on_another_worker(cluster):
    inst = cluster(*BASIC, "--workers", "2")
    c = inst.client()
    t, box = call_in_thread(c, "idem_sleep", 1.0)
    busy = wait_for(lambda: [w for w in inst.status()["workers"] if w["inflight"] == 1], timeout=5)[0]
    os.kill(busy["pid"], signal.SIGKILL)
    t.join(15)
    assert "result" in box["reply"], box
    assert box["reply"]["result"] != busy["pid"]


def test_call_waits_briefly_for_a_restarting_worker(cluster):
    inst = cluster(*BASIC, "--workers", "1")
    pid = inst.wait_ready(1)[0]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not worker_in_slot(inst, 0) or worker_in_slot(inst, 0)["pid"] != pid, timeout=5)
    reply = inst.client().call("pid", timeout=10)
    assert reply.get("result") not in (None, pid), reply


def test_max_requests_recycles_without_failing_a_call(cluster):
    inst = cluster(*BASIC, "--workers", "1", "--max-requests", "20")
    c = inst.client()
    pids: list[int] = []
    deadline = time.monotonic() + 15
    while len(set(pids)) < 2 and time.monotonic() < deadline:
        pids.append(c.result("pid"))  # every call succeeds, before, during and after the recycle
    assert len(set(pids)) >= 2
    assert pids.count(pids[0]) >= 20
    w = wait_for(lambda: (lambda w: w if w and w["last_exit"] else None)(worker_in_slot(inst, 0)), timeout=10)
    assert w["last_exit"]["reason"] == "max-requests"


def test_max_memory_recycles_a_bloated_worker(cluster):
    inst = cluster(*BASIC, "--workers", "1", "--max-memory", "150M", "--heartbeat-timeout", "1")
    pid = inst.wait_ready(1)[0]["pid"]
    assert inst.client().result("allocate", 200) > 0
    w = wait_for(lambda: (lambda w: w if w and w["pid"] != pid and w["last_exit"] else None)(
        worker_in_slot(inst, 0)), timeout=15, message="bloated worker replaced")
    assert w["last_exit"]["reason"] == "max-memory"


def test_graceful_stop_lets_calls_finish_and_runs_stop_services(cluster, tmp_path):
    inst = cluster("tests.apps.crashy:StoppableMaster", "tests.apps.crashy:Stoppable", "--workers", "2",
                   env={"STOP_MARK_DIR": str(tmp_path)})
    pids = [w["pid"] for w in inst.wait_ready(2)]
    t, box = call_in_thread(inst.client(), "sleep", 1.5)
    wait_for(lambda: any(w["inflight"] for w in inst.status()["workers"]), timeout=5)
    inst.signal(signal.SIGTERM)
    t.join(15)
    assert "result" in box["reply"], box
    assert inst.wait_exit(20) == 0
    marks = sorted(os.listdir(tmp_path))
    assert "master" in marks and len([m for m in marks if m.startswith("worker-")]) == 2
    assert (tmp_path / "master").read_text().count("worker-") == 2
    assert not any(psutil.pid_exists(p) for p in pids)


def test_quit_is_a_fast_stop(cluster):
    inst = cluster(*BASIC, "--workers", "1")
    t, box = call_in_thread(inst.client(), "sleep", 30)
    wait_for(lambda: any(w["inflight"] for w in inst.status()["workers"]), timeout=5)
    inst.signal(signal.SIGQUIT)
    assert inst.wait_exit(10) == 0
    t.join(5)
    assert box["reply"]["error"]["code"] in (-32004, -32002)


def test_clusterd_stop_command(cluster):
    inst = cluster(*BASIC, "--workers", "1")
    r = inst.cli("stop", "--name", inst.name)
    assert r.returncode == 0, r.stderr
    assert inst.wait_exit(5) == 0


def test_sigkilled_master_leaves_no_worker_and_its_dir_is_taken_over(cluster):
    inst = cluster(*BASIC, "--workers", "2")
    pids = [w["pid"] for w in inst.wait_ready(2)]
    inst.proc.kill()
    inst.proc.wait(5)
    wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                             for p in pids), timeout=5, message="workers gone")
    again = cluster(*BASIC, "--workers", "1")
    assert again.client().result("add", 1, 2) == 3


def test_scale_up_and_down(cluster):
    inst = cluster(*BASIC, "--workers", "1")
    r = inst.cli("scale", "3", "--name", inst.name)
    assert r.returncode == 0, r.stderr
    inst.wait_ready(3)
    assert sorted(w["slot"] for w in inst.status()["workers"]) == [0, 1, 2]
    inst.signal(signal.SIGTTOU)
    wait_for(lambda: len(inst.status()["workers"]) == 2, timeout=10)
    assert sorted(w["slot"] for w in inst.status()["workers"]) == [0, 1]
    inst.signal(signal.SIGTTIN)
    inst.wait_ready(3)
    assert sorted(w["slot"] for w in inst.status()["workers"]) == [0, 1, 2]


def test_status_document_and_table(cluster):
    inst = cluster(*BASIC, "--workers", "2")
    inst.wait_ready(2)
    c = inst.client()
    for _ in range(5):
        c.result("add", 1, 2)
    c.call("fail", "boom")
    r = inst.cli("status", "--json", "--name", inst.name)
    assert r.returncode == 0
    import json
    doc = json.loads(r.stdout)
    assert doc["name"] == inst.name and doc["state"] == "running" and doc["generation"] == 1
    master = doc["master"]
    assert master["pid"] == inst.proc.pid and master["uptime_s"] > 0
    assert master["started_at"] <= time.time() and master["rss_bytes"] > 0
    workers = doc["workers"]
    assert [w["slot"] for w in workers] == [0, 1]
    for w in workers:
        assert w["state"] == "ready" and w["generation"] == 1 and w["restarts"] == 0 and w["last_exit"] is None
        assert psutil.Process(w["pid"]).ppid() in (inst.proc.pid, *[c.pid for c in psutil.Process(
            inst.proc.pid).children()])  # a worker of this master (forked by its zygote)
        assert w["inflight"] == 0 and w["uptime_s"] >= 0 and w["ready_at"] >= w["started_at"]
    assert sum(w["served"] for w in workers) == 6  # 5 adds and a failure; status calls are the master's
    assert sum(w["failed"] for w in workers) == 1
    assert doc["config"]["workers"] == 2 and doc["config"]["graceful_timeout_s"] == 30
    # memory is measured on the heartbeat tick
    measured = wait_for(lambda: (lambda d: d if all(w["rss_bytes"] for w in d["workers"]) else None)(inst.status()),
                        timeout=10, message="workers' memory measured")
    assert all(w["rss_bytes"] > 1 << 20 for w in measured["workers"])
    table = inst.cli("status", "--name", inst.name).stdout
    assert "SLOT" in table and "MiB" in table
    rows = [line.split() for line in table.splitlines() if line[:1].isdigit()]
    assert [(row[0], row[1], row[2]) for row in rows] == [(str(w["slot"]), str(w["pid"]), "ready") for w in workers]


def test_status_watch_redraws_until_ctrl_c(cluster, tmp_path):
    import subprocess
    import sys
    inst = cluster(*BASIC, "--workers", "1")
    err = tmp_path / "watch.stderr"  # a file, not an unread pipe that could fill and block the watcher
    with open(err, "wb") as err_file:
        proc = subprocess.Popen([sys.executable, "-m", "clusterd", "status", "--watch", "--name", inst.name],
                                env=inst.env, stdout=subprocess.PIPE, stderr=err_file, preexec_fn=terminal_signals)
    try:
        out = b""
        deadline = time.monotonic() + 15
        while out.count(b"SLOT") < 2 and time.monotonic() < deadline:
            out += os.read(proc.stdout.fileno(), 65536)
        assert out.count(b"SLOT") >= 2  # redrawn (in place on a terminal), at least twice
        proc.send_signal(signal.SIGINT)
        assert wait_exit(proc, 10) == 0, err.read_text()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_an_idle_worker_is_not_taken_for_a_hung_one(cluster):
    """An idle worker waits in its event loop (uvloop's waits in C, below asyncio.run): its heartbeat
    must not report it stalled, even with a heartbeat timeout shorter than the idle time."""
    pytest.importorskip("uvloop")
    inst = cluster(*BASIC, "--workers", "1", "--heartbeat-timeout", "1")
    before = [w["pid"] for w in inst.wait_ready(1)]
    deadline = time.monotonic() + 4.0  # four heartbeat timeouts of idleness: the waiting is the point
    while time.monotonic() < deadline:
        assert [w["pid"] for w in inst.status()["workers"]] == before
        time.sleep(0.25)
