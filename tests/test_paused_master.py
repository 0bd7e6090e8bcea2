"""A paused master does not lie about finished work (issue 12, item 8): after SIGSTOP of the master
for longer than --heartbeat-timeout and SIGCONT, the answers workers sent meanwhile are delivered,
no idempotent call runs twice, and no worker is declared dead for the master's own pause."""

from __future__ import annotations

import os
import signal
import time

import orjson
import pytest

from clusterd import protocol

from .conftest import wait_for

TIMEOUT = 2.0


@pytest.mark.timeout(90)
def test_calls_finished_while_the_master_was_stopped_are_delivered_once(cluster, tmp_path):
    inst = cluster("tests.apps.hardening:Master", "tests.apps.hardening:Worker", "--workers", "2",
                   "--heartbeat-timeout", str(TIMEOUT), name="paused")
    before = {w["slot"]: w["pid"] for w in inst.wait_ready(2)}
    c = inst.client()
    files = [tmp_path / f"record-{i}" for i in range(4)]
    calls = {}
    for i, path in enumerate(files):
        calls[i] = ("record", [str(path), 1.0])
    for i in range(4, 8):
        calls[i] = ("slow", [1.0])
    for rid, (method, params) in calls.items():
        c.send_raw(protocol.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": rid}))
    wait_for(lambda: all(p.exists() for p in files), 10, message="every record call started")
    master = inst.proc.pid
    os.kill(master, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        wait_for(lambda: all("done" in p.read_text() for p in files), 10, message="every record call done")
        time.sleep(max(0.0, stopped_at + 2.5 * TIMEOUT - time.monotonic()))  # the pause is the point
    finally:
        os.kill(master, signal.SIGCONT)
    replies = {}
    while len(replies) < len(calls):
        reply = orjson.loads(c.recv_raw(15))
        replies[reply["id"]] = reply
    for rid, reply in replies.items():
        assert "result" in reply, (calls[rid], reply)
        assert reply["result"] in before.values()
    for path in files:
        assert path.read_text().count("start") == 1, path.read_text()  # no call ran twice
    after = inst.wait_ready(2)
    assert {w["slot"]: w["pid"] for w in after} == before  # nobody was declared dead
    assert all(w["last_exit"] is None and w["restarts"] == 0 for w in after), after
    assert c.result("slow", 0) in before.values()
