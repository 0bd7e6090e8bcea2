"""Shared memory (issue 9, DESIGN.md 11): blocks the master owns and every worker maps, and nothing
left in /dev/shm afterwards, even when the master is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import psutil
import pytest

from clusterd.shared import PREFIX, SharedBlocks, attach, remove_leftovers

APP = ("tests.apps.shared_app:Master", "tests.apps.shared_app:Worker")
EXAMPLE = ("examples.shared_array:Master", "examples.shared_array:Worker")
MIB = 1024 * 1024


_used_names: list[str] = []


def unique_name() -> str:
    name = f"shm{uuid.uuid4().hex[:8]}"
    _used_names.append(name)
    return name


@pytest.fixture(autouse=True)
def _no_leftovers_from_killed_instances():
    """The cluster fixture ends instances with SIGKILL; their blocks would stay (no later run of
    these unique names cleans them). An autouse fixture is torn down after the cluster fixture."""
    yield
    while _used_names:
        remove_leftovers(_used_names.pop())


def segments(name: str) -> list[str]:
    """This instance's segments in /dev/shm (other instances may run beside the tests)."""
    return sorted(e for e in os.listdir("/dev/shm") if e.startswith(PREFIX) and f"-{name}-" in e)


# ---------------------------------------------------------------------------- in one process
def test_same_name_returns_the_same_block_and_a_size_mismatch_is_a_clear_error():
    blocks = SharedBlocks(unique_name())
    try:
        first = blocks.block("grid", 4096)
        first[10] = 7
        assert blocks.block("grid", 4096)[10] == 7
        assert blocks.describe("grid", 4096)["size"] == 4096
        with pytest.raises(ValueError) as err:
            blocks.block("grid", 8192)
        assert "'grid'" in str(err.value) and "4096" in str(err.value) and "8192" in str(err.value)
        assert err.value.code == -32602
        for bad in ((None, 10), ("", 10), ("x", 0), ("x", -1), ("x", 1.5), ("x", True)):
            with pytest.raises(ValueError):
                blocks.block(*bad)
    finally:
        blocks.close()


def test_block_names_are_sanitised_and_kept_apart():
    name = unique_name()
    blocks = SharedBlocks(name + "/odd name")
    try:
        a = blocks.describe("a/b", 64)["shm_name"]
        b = blocks.describe("a_b", 64)["shm_name"]
        assert a != b and "/" not in a and " " not in a
        assert a.startswith(PREFIX) and str(os.getpid()) in a
    finally:
        blocks.close()
    assert not segments(name)


def test_close_unlinks_even_while_views_are_held():
    name = unique_name()
    blocks = SharedBlocks(name)
    view = blocks.block("held", 64).cast("q")
    view[0] = 5
    blocks.close()
    assert not segments(name)
    assert view[0] == 5  # still mapped here until released


def test_a_worker_process_attaches_without_the_resource_tracker():
    """A worker maps the block, writes, exits: the block survives, with no tracker warning."""
    name = unique_name()
    blocks = SharedBlocks(name)
    try:
        info = blocks.describe("data", 1024)
        code = (f"from clusterd.shared import attach\n"
                f"v = attach({info['shm_name']!r}, 1024)\n"
                f"v[0:3] = b'abc'\n"
                f"import multiprocessing.resource_tracker as rt\n"
                f"assert rt._resource_tracker._pid is None, 'a tracker was started'\n")
        done = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True,
                              timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        assert "leaked" not in done.stderr and "resource_tracker" not in done.stderr
        assert bytes(blocks.block("data", 1024)[0:3]) == b"abc"
        assert segments(name)  # the worker's exit did not unlink the master's block
    finally:
        blocks.close()


def test_leftovers_of_a_live_master_are_kept_and_of_a_dead_one_removed():
    name = unique_name()
    live = SharedBlocks(name)
    try:
        live.describe("mine", 64)
        dead = f"{PREFIX}999999999.1-{name}-old"   # no such pid
        fd = os.open(f"/dev/shm/{dead}", os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        assert remove_leftovers(name) == [dead]
        assert segments(name) == [live.describe("mine", 64)["shm_name"]]
    finally:
        live.close()


def test_attach_checks_the_size():
    blocks = SharedBlocks(unique_name())
    try:
        info = blocks.describe("small", 64)
        with pytest.raises(ValueError):
            attach(info["shm_name"], 128)
    finally:
        blocks.close()


# ---------------------------------------------------------------------------- through a running instance
def test_workers_write_a_block_the_master_and_other_workers_read(cluster):
    inst = cluster(*APP, "--workers", "2", name=unique_name())
    inst.wait_ready(2)
    c = inst.client()
    size = 8 * MIB
    assert c.result("write_on", 0, "board", size, 0, "aa" * 16) == 0
    assert c.result("write_on", 1, "board", size, size - 16, "bb" * 16) == 1
    assert c.result("read", "board", size, 0, 16) == "aa" * 16               # the master reads both parts
    assert c.result("read", "board", size, size - 16, 16) == "bb" * 16
    assert c.result("read_on", 1, "board", size, 0, 16) == "aa" * 16          # worker 1 reads worker 0's
    assert c.result("read_on", 0, "board", size, size - 16, 16) == "bb" * 16  # and the reverse


def test_size_mismatch_from_a_worker_is_invalid_params(cluster):
    inst = cluster(*APP, "--workers", "1", name=unique_name())
    inst.wait_ready(1)
    c = inst.client()
    assert c.result("same_block", "s", 64) is True
    message = c.result("mismatch", "m")
    assert "'m'" in message and "100" in message and "200" in message
    reply = c.call("write", "m", 300, 0, "00")
    assert reply["error"]["code"] == -32602, reply
    assert "100" in reply["error"]["message"] and "300" in reply["error"]["message"]


def test_no_resource_tracker_runs_beside_the_master(cluster):
    inst = cluster(*APP, "--workers", "2", name=unique_name())
    inst.wait_ready(2)
    inst.client().result("write_on", 1, "t", 4096, 0, "01")
    master = psutil.Process(inst.status()["master"]["pid"])
    assert not [p for p in master.children(recursive=True) if "resource_tracker" in " ".join(p.cmdline())]


def test_blocks_are_unlinked_after_a_clean_stop(cluster):
    name = unique_name()
    inst = cluster(*APP, "--workers", "2", name=name)
    inst.wait_ready(2)
    inst.client().result("write_on", 0, "a", MIB, 0, "ff")
    inst.client().result("read", "b", MIB, 0, 1)
    assert len(segments(name)) == 2
    inst.signal(signal.SIGTERM)
    assert inst.wait_exit() == 0
    assert segments(name) == []
    assert "leaked" not in inst.stderr() and "resource_tracker" not in inst.stderr()


def test_blocks_of_a_killed_master_are_removed_by_the_next_run(cluster):
    name = unique_name()
    first = cluster(*APP, "--workers", "1", name=name)
    first.wait_ready(1)
    first.client().result("write", "kept", MIB, 0, "01")
    left = segments(name)
    assert len(left) == 1
    first.kill()                      # SIGKILL to the master and its workers
    assert segments(name) == left     # nobody could clean up
    second = cluster(*APP, "--workers", "1", name=name)
    second.wait_ready(1)
    assert not set(left) & set(segments(name))
    assert second.client().result("read", "kept", MIB, 0, 1) == "00"  # a fresh block


# ---------------------------------------------------------------------------- the example
@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_shared_array_example_fills_64_mib_in_parallel(cluster, isolation):
    name = unique_name()
    inst = cluster(*EXAMPLE, "--workers", "2", "--isolation", isolation, name=name)
    inst.wait_ready(2)
    c = inst.client()
    filled = c.result("fill", timeout=60)
    assert filled["bytes"] == 64 * MIB
    assert sorted(filled["ranges"]) == ["0", "1"] and sorted(filled["filled_by"]) == ["0", "1"]
    summary = c.result("summary", timeout=60)
    assert summary["ok"], summary
    peek = c.result("peek", 123456)
    assert peek["value"] == 123456 ** 2
    inst.signal(signal.SIGTERM)
    assert inst.wait_exit() == 0
    assert segments(name) == []
