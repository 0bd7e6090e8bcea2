"""The runtime directory is trusted only when it is safe, and two instances never cross through it:
a deleted directory is made again or left to the instance that took the name, a worker of another
master is refused, and a master removes only its own files."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import zmq

from tests.conftest import ROOT, Rpc, free_port, wait_for

BASIC = ("tests.apps.basic:Master", "tests.apps.basic:Worker")


def clusterd(env: dict, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clusterd", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


def run_args(name: str = "t") -> list[str]:
    return ["run", *BASIC, "--workers", "1", "--name", name]


def one_clear_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("clusterd: "), lines
    return lines[0]


# ---------------------------------------------------------------------------- unsafe directories
@pytest.mark.timeout(60)
@pytest.mark.parametrize("which", ["root", "instance"])
@pytest.mark.parametrize("mode", [0o777, 0o770])
def test_run_refuses_a_runtime_dir_others_can_write(runtime_dir, cluster_env, which, mode):
    target = runtime_dir if which == "root" else runtime_dir / "t"
    target.mkdir(exist_ok=True)
    os.chmod(target, mode)
    proc = clusterd(cluster_env, *run_args())
    assert proc.returncode == 2
    line = one_clear_line(proc)
    assert str(target) in line and "chmod 700" in line
    assert not (runtime_dir / "t" / "control.sock").exists()


@pytest.mark.timeout(60)
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another uid")
@pytest.mark.parametrize("which", ["root", "instance"])
def test_run_refuses_a_runtime_dir_of_another_user(runtime_dir, cluster_env, which):
    target = runtime_dir if which == "root" else runtime_dir / "t"
    target.mkdir(exist_ok=True)
    os.chown(target, 65534, 65534)  # nobody
    proc = clusterd(cluster_env, *run_args())
    assert proc.returncode == 2
    line = one_clear_line(proc)
    assert str(target) in line and "65534" in line


def _plant_fake_instance(instance: Path) -> tuple[zmq.Socket, int]:
    """What another local user could do: a live-looking lock and a control.sock that answers."""
    instance.mkdir()
    lock = os.open(instance / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    (instance / "master.pid").write_text("1\n")
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(f"ipc://{instance / 'control.sock'}")
    return sock, lock


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", [["call", "echo", "1"], ["status"], ["stop"], ["scale", "2"]])
def test_client_refuses_to_connect_into_an_unsafe_dir(runtime_dir, cluster_env, command):
    fake, lock = _plant_fake_instance(runtime_dir / "t")
    try:
        os.chmod(runtime_dir / "t", 0o777)
        proc = clusterd(cluster_env, *command, "--name", "t")
        assert proc.returncode == 2
        assert "writable by group or others" in one_clear_line(proc)
        assert not fake.poll(200), "the client talked to the planted socket"
        os.chmod(runtime_dir / "t", 0o700)
        os.chmod(runtime_dir, 0o777)
        proc = clusterd(cluster_env, *command, "--name", "t")
        assert proc.returncode == 2 and str(runtime_dir) in one_clear_line(proc)
        assert not fake.poll(200), "the client talked to the planted socket"
        proc = clusterd(cluster_env, "ls")
        assert proc.returncode == 2 and str(runtime_dir) in one_clear_line(proc)
    finally:
        fake.close()
        os.close(lock)


@pytest.mark.timeout(60)
def test_runtime_dir_that_is_a_file_or_cannot_be_made_is_one_line(tmp_path, cluster_env):
    a_file = tmp_path / "file"
    a_file.write_text("")
    for root in (a_file, a_file / "below"):
        env = {**cluster_env, "CLUSTERD_RUNTIME_DIR": str(root)}
        proc = clusterd(env, *run_args())
        assert proc.returncode == 2
        assert str(a_file) in one_clear_line(proc)
    instance_is_file = tmp_path / "root"
    instance_is_file.mkdir(mode=0o700)
    (instance_is_file / "t").write_text("")
    proc = clusterd({**cluster_env, "CLUSTERD_RUNTIME_DIR": str(instance_is_file)}, *run_args())
    assert proc.returncode == 2 and "not a directory" in one_clear_line(proc)


# ---------------------------------------------------------------------------- a deleted runtime dir
def _file_ids(path: Path) -> dict[str, int]:
    return {name: os.lstat(path / name).st_ino for name in ("lock", "master.pid", "control.sock", "workers.sock")}


@pytest.mark.timeout(90)
def test_deleted_runtime_dir_is_made_again_and_the_name_stays_taken(cluster):
    a = cluster(*BASIC, "--workers", "1")
    shutil.rmtree(a.dir)
    wait_for(lambda: (a.dir / "control.sock").exists() and (a.dir / "workers.sock").exists()
             and (a.dir / "master.pid").read_text().strip() == str(a.proc.pid), timeout=10,
             message="runtime dir made again")
    assert a.status()["state"] == "running"
    b = cluster(*BASIC, "--workers", "1", start=False)
    b.stderr_path = a.runtime_dir / "b.stderr"
    b.start(wait=False)
    assert b.wait_exit(20) == 2 and "already running" in b.stderr()
    old = a.ready_workers()[0]["pid"]
    os.kill(old, signal.SIGKILL)  # its replacement must find our workers socket again
    wait_for(lambda: [w for w in a.ready_workers() if w["pid"] != old], timeout=15, message="replacement ready")
    assert a.client().result("add", 1, 2) == 3
    a.signal(signal.SIGTERM)
    assert a.wait_exit(20) == 0
    assert not (a.dir / "control.sock").exists() and not (a.dir / "master.pid").exists()


@pytest.mark.timeout(60)
def test_ls_skips_an_unsafe_instance_dir(runtime_dir, cluster_env):
    fake, lock = _plant_fake_instance(runtime_dir / "t")
    try:
        os.chmod(runtime_dir / "t", 0o777)
        proc = clusterd(cluster_env, "ls")
        assert proc.returncode == 0, proc.stderr
        assert not fake.poll(500), "ls talked to the planted socket"
        warning = proc.stderr.strip().splitlines()
        assert len(warning) == 1 and str(runtime_dir / "t") in warning[0], proc.stderr
        assert "unresponsive" not in proc.stdout
    finally:
        fake.close()
        os.close(lock)


@pytest.mark.timeout(120)
def test_instances_sharing_a_deleted_runtime_dir_never_cross(cluster):
    port = free_port()
    a = cluster(*BASIC, "--workers", "1", "--heartbeat-timeout", "30", "--bind", f"tcp://127.0.0.1:{port}")
    a.wait_ready(1)
    a_client = Rpc(f"tcp://127.0.0.1:{port}")
    try:
        a_worker = a_client.result("pid")
        # B takes the name before A can notice that its directory is gone (a tmp cleaner, then a restart)
        a.signal(signal.SIGSTOP)
        try:
            shutil.rmtree(a.dir)
            b = cluster(*BASIC, "--workers", "1", start=False)
            b.stderr_path = a.runtime_dir / "b.stderr"
            b.start()
            b_workers = sorted(w["pid"] for w in b.wait_ready(1))
        finally:
            a.signal(signal.SIGCONT)
        b_files = _file_ids(b.dir)
        os.kill(a_worker, signal.SIGKILL)
        replacement = wait_for(lambda: (lambda r: r if r.get("result") not in (None, a_worker) else None)(
            a_client.call("pid")), timeout=20, message="A's replacement serving A")["result"]
        a_tree = (a.proc.pid, *[c.pid for c in psutil.Process(a.proc.pid).children()])
        assert psutil.Process(replacement).ppid() in a_tree
        status = b.status()
        assert sorted(w["pid"] for w in status["workers"]) == b_workers, "a worker of A joined B"
        assert status["state"] == "running"
        assert b.client().result("add", 2, 3) == 5
        a.signal(signal.SIGTERM)
        assert a.wait_exit(20) == 0, a.stderr()
        assert _file_ids(b.dir) == b_files, "stopping A touched B's files"
        assert b.client().result("add", 4, 5) == 9
        assert sorted(w["pid"] for w in b.status()["workers"]) == b_workers
        assert [p.name for p in a.runtime_dir.iterdir() if p.name.startswith(".")] == []  # A's private dir gone
    finally:
        a_client.close()


@pytest.mark.timeout(120)
def test_a_displaced_master_takes_its_name_back_once_it_is_free(cluster):
    a = cluster(*BASIC, "--workers", "1", "--heartbeat-timeout", "30")
    a.wait_ready(1)
    a.signal(signal.SIGSTOP)
    try:  # a tmp cleaner deletes A's directory, then B takes the name
        shutil.rmtree(a.dir)
        b = cluster(*BASIC, "--workers", "1", start=False)
        b.stderr_path = a.runtime_dir / "b.stderr"
        b.start()
        b.wait_ready(1)
    finally:
        a.signal(signal.SIGCONT)
    wait_for(lambda: "runtime-dir-taken" in a.stderr() or "held by another instance" in a.stderr(), 10,
             message="A notices that B holds its name")
    assert b.status()["master"]["pid"] == b.proc.pid
    b.signal(signal.SIGTERM)
    assert b.wait_exit(20) == 0, b.stderr()
    # the name is free again: A holds it, and `clusterd status/stop --name` reach A
    wait_for(lambda: a.status()["master"]["pid"] == a.proc.pid, 20, message="A holds its name again")
    old = {w["pid"] for w in a.ready_workers()}
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: len([w for w in a.ready_workers() if w["pid"] not in old]) == 1, 30,
             message="A's replacement worker joined")
    assert a.client().result("add", 2, 3) == 5
    out = a.cli("stop", "--name", a.name)
    assert out.returncode == 0, out.stderr
    assert a.wait_exit(20) == 0, a.stderr()
    assert not (a.dir / "control.sock").exists() and not (a.dir / "master.pid").exists()


@pytest.mark.timeout(60)
def test_a_worker_of_another_master_gets_nothing(cluster):
    inst = cluster(*BASIC, "--workers", "1")
    pids = [w["pid"] for w in inst.wait_ready(1)]
    stranger = zmq.Context.instance().socket(zmq.DEALER)
    stranger.setsockopt(zmq.LINGER, 0)
    stranger.setsockopt(zmq.ROUTING_ID, b"0123abcd.0.1.1")  # another master's token
    stranger.connect(f"ipc://{inst.dir / 'workers.sock'}")
    try:
        stranger.send_multipart([b"h", b'{"pid": 1, "slot": 0, "generation": 1, "methods": {}}'])
        stranger.send_multipart([b"q", b'{"jsonrpc": "2.0", "method": "config", "id": 1}'])
        assert inst.client().result("add", 1, 1) == 2
        assert not stranger.poll(500), "the master answered a worker it did not start"
        assert [w["pid"] for w in inst.status()["workers"]] == pids
    finally:
        stranger.close()
