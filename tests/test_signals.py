"""Signals to the whole process group drain like a SIGTERM to the master, and Ctrl-C can always be
escalated: the first asks for a graceful stop, the second stops at once."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest

from tests.conftest import call_in_thread, wait_for

BASIC = ("tests.apps.basic:Master", "tests.apps.basic:Worker")
SLOW = ("tests.apps.slow_start:Master", "tests.apps.slow_start:Worker")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _events(inst, kind: str) -> list[dict]:
    out = []
    for line in inst.stderr().splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("event") == kind:
            out.append(obj)
    return out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("spawner", ["zygote", "direct"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_group_signal_drains_like_a_signal_to_the_master(cluster, sig, spawner):
    env = {"CLUSTERD_NO_ZYGOTE": "1"} if spawner == "direct" else {}
    inst = cluster(*BASIC, "--workers", "2", "--log-format", "json", env=env)
    workers = {w["pid"] for w in inst.wait_ready(2)}
    family = {p.pid for p in psutil.Process(inst.proc.pid).children(recursive=True)}
    assert workers <= family
    t, box = call_in_thread(inst.client(), "sleep", 2.0)
    wait_for(lambda: any(w["inflight"] for w in inst.status()["workers"]), timeout=5, message="call in flight")
    os.killpg(inst.proc.pid, sig)  # as `kill -TERM -- -PGID`, `timeout`, stopasgroup, Ctrl-C do
    t.join(20)
    assert "result" in box.get("reply", {}), box
    assert box["reply"]["result"] in workers
    assert inst.wait_exit(20) == 0, inst.stderr()
    wait_for(lambda: not any(_alive(p) for p in family), timeout=5, message="every child gone")
    assert len(_events(inst, "worker-start")) == 2, "a worker was started during the stop"
    assert not _events(inst, "worker-backoff")
    assert "Traceback" not in inst.stderr()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where,how", [("master", "async"), ("worker", "async"), ("master", "blocking")])
def test_second_ctrl_c_stops_a_long_start_at_once(cluster, tmp_path, where, how):
    mark = tmp_path / "mark"
    inst = cluster(*SLOW, "--workers", "1", "--log-format", "json", wait=False,
                   env={"SLOW_START": where, "SLOW_HOW": how, "SLOW_MARK": str(mark)})
    slow_pid = int(wait_for(lambda: mark.exists() and mark.read_text().strip(), timeout=20,
                            message="start_services begun"))
    family = {inst.proc.pid, slow_pid} | {p.pid for p in psutil.Process(inst.proc.pid).children(recursive=True)}
    os.killpg(inst.proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole group
    if how == "async":
        # the first Ctrl-C says what the stop waits for, and does not end it
        wait_for(lambda: _events(inst, "master-stop"), timeout=10, message="the stop explains itself")
        assert inst.proc.poll() is None
    started = time.monotonic()
    if how == "async":
        os.killpg(inst.proc.pid, signal.SIGINT)
    else:
        # the loop is blocked by user code: the person presses Ctrl-C again until it stops
        wait_for(lambda: os.killpg(inst.proc.pid, signal.SIGINT) or inst.proc.poll() is not None, timeout=10,
                 interval=0.25, message="a repeated Ctrl-C stops the master")
    code = inst.wait_exit(10)  # the slow part still had more than 25 s to go
    assert code == (0 if how == "async" else 130), inst.stderr()
    assert time.monotonic() - started < 10
    wait_for(lambda: not any(_alive(p) for p in family), timeout=5, message="no process left")
    assert "Traceback" not in inst.stderr()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_only_a_ctrl_c_is_told_to_press_ctrl_c_again(cluster, sig):
    inst = cluster(*BASIC, "--workers", "1", "--log-format", "json")
    t, box = call_in_thread(inst.client(), "sleep", 1.0)
    wait_for(lambda: any(w["inflight"] for w in inst.status()["workers"]), timeout=5, message="call in flight")
    os.kill(inst.proc.pid, sig)
    t.join(20)
    assert inst.wait_exit(20) == 0, inst.stderr()
    said = " ".join(e.get("msg", "") for e in _events(inst, "master-stop"))
    assert said, inst.stderr()
    assert ("Ctrl-C" in said) == (sig == signal.SIGINT), said
