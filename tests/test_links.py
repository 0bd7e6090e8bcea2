"""The master <-> worker link under many calls at a time: frames of a loop turn travel together
(one message per peer), plain-def master methods run inline, master calls are futures. Every call
still gets exactly its own outcome."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clusterd import protocol
from tests.conftest import running_instance

ROOT = Path(__file__).resolve().parent.parent
APP = ("tests.apps.links:Master", "tests.apps.links:Worker")


@pytest.fixture(scope="module")
def inst():
    with running_instance("--workers", "2", master=APP[0], worker=APP[1], name="links") as inst:
        inst.wait_ready(2)
        yield inst


@pytest.fixture
def c(inst):
    client = inst.client()
    yield client
    client.close()


def test_many_worker_calls_to_the_master_each_get_their_answer(c):
    before = c.result("seen_count")
    assert c.result("fan_to_master", 500, timeout=30) == [2 * i for i in range(500)]
    assert c.result("seen_count") == before + 500  # each ran once


def test_a_burst_of_mixed_worker_calls_keeps_each_outcome(c):
    out = c.result("mixed_to_master")
    assert out[0] == 42
    assert out[1]["code"] == protocol.APPLICATION_ERROR and out[1]["data"]["type"] == "ValueError"
    assert out[2] == {"code": 4321, "data": {"code": 4321}}
    assert out[3]["code"] == protocol.METHOD_NOT_FOUND
    assert out[4] == 10
    assert out[5]["code"] == protocol.INVALID_PARAMS


def test_cancelled_worker_calls_do_not_disturb_later_ones(c):
    assert c.result("cancelled_then_answered") == 10


def test_many_master_calls_to_workers_each_get_their_answer(c):
    n = 300
    out = c.result("fan_to_workers", n, timeout=30)
    assert out[:n] == [i + 1 for i in range(n)]
    assert out[n:2 * n] == [[i % 2, i] for i in range(n)]
    for broadcast in out[2 * n:2 * n + 4]:
        assert broadcast == {"0": [0, 0], "1": [1, 0]}
    assert out[2 * n + 4:] == [14] * 4


def test_a_worker_error_reaches_the_master_call(c):
    err = c.result("worker_error")
    assert err["code"] == protocol.APPLICATION_ERROR and err["data"]["type"] == "KeyError"


def test_client_calls_in_flight_with_worker_calls(c, inst):
    """Client calls answered by the master inline and forwarded ones, all at once."""
    other = inst.client()
    try:
        ids = []
        for i in range(200):
            c._id += 1
            ids.append(c._id)
            method, params = ("double", [i]) if i % 2 else ("add", [i, i])
            c.send_raw(protocol.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": c._id}))
        fan = other.call("fan_to_master", 100, timeout=30)
        got = {}
        while len(got) < len(ids):
            reply = protocol.loads(c.recv_raw(10))
            got[reply["id"]] = reply["result"]
        assert [got[i] for i in ids] == [2 * i for i in range(200)]
        assert fan["result"] == [2 * i for i in range(100)]
    finally:
        other.close()


@pytest.mark.timeout(120)
def test_bench_links_reports_every_path():
    done = subprocess.run([sys.executable, "-m", "clusterd", "bench", "--links", "--quick", "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert set(doc["systems"]) == {"clusterd", "dealer_link"}
    for system in doc["systems"].values():
        assert set(system["paths"]) == {"w2m_1", "w2m_64", "m2w_1", "m2w_64"}
        for figures in system["paths"].values():
            assert figures["calls_per_s"] > 0 and figures["master_cpu_us_per_call"] > 0
    assert "master_cpu_w2m" in doc["targets"]


@pytest.mark.parametrize("size", [1, 300_000, 3_000_000])
def test_big_calls_cross_the_link_whole_both_ways(c, size):
    """Messages bigger than one read (and than the socket's buffer) arrive whole, in both directions."""
    assert c.result("big_to_master", size, 3, timeout=60) == [True] * 3
    assert c.result("big_to_workers", size, 3, timeout=60) == [True] * 3

