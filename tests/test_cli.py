"""The command line of DESIGN.md 3: call, ls, status, bad input, signals, the instance name lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.conftest import ROOT, free_port, instance_env, running_instance, wait_for


@pytest.fixture(scope="module")
def port():
    return free_port()


@pytest.fixture(scope="module")
def inst(port):
    with running_instance("--workers", "2", "--bind", f"tcp://127.0.0.1:{port}", name="cli",
                          master="tests.apps.printing:Master", worker="tests.apps.printing:Worker") as inst:
        inst.wait_ready(2)
        yield inst


def clusterd(*args: str, env: dict | None = None, cwd=ROOT, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clusterd", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout, check=False)


def assert_usage_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 2, one line on stderr that says what is wrong, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------- call
def test_call_prints_the_json_result(inst):
    proc = inst.cli("call", "subtract", "42", "23")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == 19
    assert proc.stderr == ""


def test_call_params_are_json_values(inst):
    proc = inst.cli("call", "echo", '{"a": [1, 2.5, null, true]}')
    assert json.loads(proc.stdout) == {"a": [1, 2.5, None, True]}
    proc = inst.cli("call", "echo", "hello")  # a bare word is a string
    assert json.loads(proc.stdout) == "hello"
    proc = inst.cli("call", "sum", "1", "2", "3")
    assert json.loads(proc.stdout) == 6


def test_call_with_named_params(inst):
    proc = inst.cli("call", "subtract", "--json-params", '{"subtrahend": 23, "minuend": 42}')
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == 19


def test_call_master_method_without_params(inst):
    proc = inst.cli("call", "config")
    assert json.loads(proc.stdout) == {"greeting": "hello"}


def test_call_error_goes_to_stderr_with_its_code(inst):
    proc = inst.cli("call", "fail", "boom")
    assert proc.returncode == 1 and proc.stdout == ""
    assert "-32000" in proc.stderr and "boom" in proc.stderr and "Traceback" not in proc.stderr
    proc = inst.cli("call", "nope")
    assert proc.returncode == 1 and "-32601" in proc.stderr
    proc = inst.cli("call", "subtract", "1")
    assert proc.returncode == 1 and "-32602" in proc.stderr
    proc = inst.cli("call", "fail_rpc")
    assert proc.returncode == 1 and "1234" in proc.stderr and "custom failure" in proc.stderr


def test_call_by_address(inst, port):
    proc = inst.cli("call", "add", "1", "2", "--connect", f"tcp://127.0.0.1:{port}")
    assert proc.returncode == 0 and json.loads(proc.stdout) == 3
    proc = inst.cli("call", "clusterd.status", "--connect", f"tcp://127.0.0.1:{port}")
    assert proc.returncode == 1 and "-32601" in proc.stderr


@pytest.mark.parametrize("args,needle", [
    (["--json-params", "{not json"], "--json-params"),
    (["--json-params", "3"], "--json-params"),
    (["1", "--json-params", "[1]"], "--json-params"),
])
def test_call_bad_params_are_usage_errors(inst, args, needle):
    assert_usage_error(inst.cli("call", "echo", *args), needle)


# ---------------------------------------------------------------------------- ls and status
def test_ls_lists_the_instance(inst):
    proc = inst.cli("ls")
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("cli "))
    assert str(inst.proc.pid) in line and "running" in line and "2/2" in line


def test_ls_without_instances(tmp_path):
    proc = clusterd("ls", env=instance_env(tmp_path))
    assert proc.returncode == 0 and "no instances" in proc.stdout


def test_status_json_is_the_status_document(inst, port):
    from clusterd import settings
    c = inst.client()
    served_before = sum(w["served"] for w in inst.status()["workers"])
    assert c.result("add", 1, 2) == 3
    proc = inst.cli("status", "--json")
    now = time.time()
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["name"] == "cli" and doc["state"] == "running"
    master = doc["master"]
    assert master["pid"] == inst.proc.pid
    assert master["started_at"] == pytest.approx(psutil.Process(inst.proc.pid).create_time(), abs=2)
    assert master["uptime_s"] == pytest.approx(now - master["started_at"], abs=2)
    assert master["version"] is None or isinstance(master["version"], str)
    assert master["rss_bytes"] > 1_000_000 and master["cpu_percent"] >= 0
    assert sorted(w["slot"] for w in doc["workers"]) == [0, 1]
    family = {p.pid for p in psutil.Process(inst.proc.pid).children(recursive=True)}
    for w in doc["workers"]:
        assert w["state"] == "ready" and w["pid"] in family and w["generation"] == 1
        assert master["started_at"] <= w["started_at"] <= now
        assert w["uptime_s"] == pytest.approx(now - w["started_at"], abs=2)
        assert w["restarts"] == 0 and w["last_exit"] is None and w["inflight"] == 0
        assert w["rss_bytes"] is None or w["rss_bytes"] > 1_000_000
        assert w["cpu_percent"] is None or w["cpu_percent"] >= 0
    assert sum(w["served"] for w in doc["workers"]) == served_before + 1     # the add above
    config = doc["config"]
    assert config["workers"] == 2 and config["binds"] == [f"tcp://127.0.0.1:{port}"]
    assert (config["master"], config["worker"]) == ("tests.apps.printing:Master", "tests.apps.printing:Worker")
    for option in settings.options_for("run"):                 # everything else: the table's defaults
        if option.key not in ("config", "name", "workers", "binds"):
            default = option.default_value()
            expected = option.status_value(default) if option.status_value else default
            assert config[option.status_key or option.key] == expected, option.name


def test_status_table_shows_every_worker(inst):
    proc = inst.cli("status")
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[" not in proc.stdout  # no colours when not on a terminal
    lines = proc.stdout.splitlines()
    assert "cli" in lines[0] and "running" in lines[0] and str(inst.proc.pid) in lines[0]
    header = next(line for line in lines if line.startswith("SLOT"))
    for column in ("PID", "STATE", "UPTIME", "RESTARTS", "MEMORY", "CPU", "INFLIGHT", "SERVED", "LAST EXIT"):
        assert column in header
    for w in inst.status()["workers"]:
        assert any(line.split()[:3] == [str(w["slot"]), str(w["pid"]), "ready"] for line in lines), lines


def test_status_picks_the_only_instance_and_names_a_missing_one(inst):
    assert inst.cli("status", "--json", "--name", "cli").returncode == 0
    missing = inst.cli("status", "--name", "ghost")  # not running: LSB exit 3 (DESIGN.md 8)
    assert missing.returncode == 3 and "ghost" in missing.stderr and missing.stderr.count("\n") == 1


def test_worker_output_carries_slot_and_pid(inst):
    for w in inst.status()["workers"]:
        slot, pid = w["slot"], w["pid"]
        wanted = (f"stderr of slot {slot} pid {pid}", f"logged by slot {slot} pid {pid}")
        wait_for(lambda wanted=wanted: all(t in inst.stderr() for t in wanted), message="worker output in the log")
        text = inst.stderr()
        line = next(line for line in text.splitlines() if f"hello from slot {slot} pid {pid}" in line)
        assert f"worker {slot}" in line.split("hello")[0] and str(pid) in line.split("hello")[0], line


# ---------------------------------------------------------------------------- bad input to run
def run_cli(*args: str, env: dict | None = None, tmp=None) -> subprocess.CompletedProcess:
    return clusterd("run", *args, env=env or instance_env(tmp), timeout=20)


@pytest.mark.parametrize("master,worker,needles", [
    ("nosuch.module:Master", "tests.apps.basic:Worker", ["MASTER", "nosuch"]),
    ("tests.apps.basic:Master", "tests.apps.nosuch:Worker", ["WORKER", "tests.apps.nosuch"]),
    ("tests.apps.broken:Master", "tests.apps.basic:Worker", ["tests.apps.broken", "broken on purpose"]),
    ("tests.apps.basic:Nope", "tests.apps.basic:Worker", ["MASTER", "Nope"]),
    ("tests.apps.basic:Worker", "tests.apps.basic:Worker", ["MASTER", "MasterEndpoint"]),
    ("tests.apps.basic:Master", "tests.apps.basic:Master", ["WORKER", "WorkerEndpoint"]),
    ("tests.apps.basic:RPCError", "tests.apps.basic:Worker", ["MASTER", "MasterEndpoint"]),
    ("tests.apps.basic:os", "tests.apps.basic:Worker", ["MASTER", "MasterEndpoint"]),
    ("tests.apps.basic.Master", "tests.apps.basic:Worker", ["MASTER", "tests.apps.basic.Master"]),
    ("tests.apps.basic:", "tests.apps.basic:Worker", ["MASTER"]),
    (":Master", "tests.apps.basic:Worker", ["MASTER"]),
    ("tests..apps:Master", "tests.apps.basic:Worker", ["MASTER"]),
    ("tests/apps/basic.py:Master", "tests.apps.basic:Worker", ["MASTER"]),
])
def test_run_with_bad_class_is_a_usage_error(tmp_path, master, worker, needles):
    assert_usage_error(run_cli(master, worker, tmp=tmp_path), *needles)
    assert not (tmp_path / "tests").exists()  # nothing was started


@pytest.mark.parametrize("args,needle", [
    (["--workers", "x"], "--workers"),
    (["--workers", "-1"], "--workers"),
    (["--max-memory", "lots"], "--max-memory"),
    (["--max-message-size", "big"], "--max-message-size"),
    (["--balance", "nope"], "--balance"),
    (["--log-format", "xml"], "--log-format"),
    (["--graceful-timeout", "soon"], "--graceful-timeout"),
    (["--graceful-timeout", "-1"], "--graceful-timeout"),
    (["--crash-limit", "1.5"], "--crash-limit"),
    (["--bogus"], "--bogus"),
    (["--bind", "not-an-address"], "--bind"),
    (["--watch-version", "/nonexistent/VERSION"], "--watch-version"),
    (["--name", "a/b"], "a/b"),
])
def test_run_with_bad_option_is_a_usage_error(tmp_path, args, needle):
    assert_usage_error(run_cli("tests.apps.basic:Master", "tests.apps.basic:Worker", *args, tmp=tmp_path), needle)


def test_run_without_classes_is_a_usage_error(tmp_path):
    assert_usage_error(run_cli(tmp=tmp_path), "MASTER")


def test_unknown_command_is_a_usage_error(tmp_path):
    assert_usage_error(clusterd("frobnicate", env=instance_env(tmp_path)), "frobnicate")


def test_second_run_with_the_same_name_is_refused(inst):
    proc = subprocess.run([sys.executable, "-m", "clusterd", "run", "tests.apps.basic:Master",
                           "tests.apps.basic:Worker", "--workers", "1", "--name", "cli"],
                          cwd=ROOT, env=inst.env, text=True, capture_output=True, timeout=20, check=False)
    assert_usage_error(proc, "cli", str(inst.proc.pid))
    assert inst.status()["master"]["pid"] == inst.proc.pid


def test_run_from_the_app_directory_imports_from_cwd(tmp_path, cluster):
    app = tmp_path / "myapp_cwd"
    app.mkdir()
    (app / "__init__.py").write_text("")
    (app / "rpc.py").write_text("from clusterd import MasterEndpoint, WorkerEndpoint, rpc\n"
                                "class Master(MasterEndpoint):\n    pass\n"
                                "class Worker(WorkerEndpoint):\n"
                                "    @rpc\n    def double(self, x):\n        return 2 * x\n")
    inst = cluster("myapp_cwd.rpc:Master", "myapp_cwd.rpc:Worker", "--workers", "1", name="cwdapp", cwd=tmp_path)
    c = inst.client()
    assert c.result("double", 21) == 42


# ---------------------------------------------------------------------------- signals and the name lock
def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly_and_leaves_no_process(cluster, sig):
    inst = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "2", name="stop")
    pids = [w["pid"] for w in inst.wait_ready(2)]
    inst.signal(sig)
    assert inst.wait_exit(20) == 0, inst.stderr()
    wait_for(lambda: all(_gone(p) for p in pids), timeout=5, message="every worker gone")
    assert "Traceback" not in inst.stderr()
    assert not (inst.dir / "control.sock").exists() and not (inst.dir / "master.pid").exists()


def test_cli_stop_stops_the_instance(cluster):
    inst = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "1", name="stopme")
    pids = [w["pid"] for w in inst.wait_ready(1)]
    proc = inst.cli("stop", "--name", "stopme")
    assert proc.returncode == 0, proc.stderr
    assert inst.wait_exit(5) == 0
    assert all(_gone(p) for p in pids)


def test_dir_of_a_killed_master_is_taken_over(cluster):
    first = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "1", name="phoenix")
    worker_pids = [w["pid"] for w in first.wait_ready(1)]
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(5)
    assert (first.dir / "master.pid").exists()  # left behind by the dead master
    wait_for(lambda: all(_gone(p) for p in worker_pids), timeout=10, message="orphaned workers gone")
    second = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "1", name="phoenix")
    assert second.status()["master"]["pid"] == second.proc.pid
    assert (first.dir / "master.pid").read_text().strip() == str(second.proc.pid)


def test_bind_address_in_use_fails_instead_of_hanging(tmp_path):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "clusterd", "run", "tests.apps.basic:Master",
                                 "tests.apps.basic:Worker", "--workers", "1", "--name", "busy",
                                 "--bind", f"tcp://127.0.0.1:{port}"], cwd=ROOT, env=instance_env(tmp_path),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail("clusterd run hung after its --bind failed")
    assert proc.returncode in (1, 2) and str(port) in err and "Traceback" not in err, err


def test_default_name_is_the_top_level_package_and_several_instances_need_a_name(cluster):
    first = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "1", name="tests")
    # without --name, `run` takes "tests" from tests.apps.basic:Master: already taken
    proc = subprocess.run([sys.executable, "-m", "clusterd", "run", "tests.apps.basic:Master",
                           "tests.apps.basic:Worker", "--workers", "1"], cwd=ROOT, env=first.env, text=True,
                          capture_output=True, timeout=20, check=False)
    assert_usage_error(proc, "'tests'", str(first.proc.pid))
    cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "1", name="other")
    both = first.cli("status")  # every instance, one block each (as pm2 ls)
    assert both.returncode == 0 and [ln.split()[0] for ln in both.stdout.splitlines()
                                     if ln.startswith(("tests ", "other "))] == ["other", "tests"]
    assert_usage_error(first.cli("call", "add", "1", "2"), "--name")
    proc = first.cli("call", "add", "1", "2", "--name", "other")
    assert proc.returncode == 0 and json.loads(proc.stdout) == 3
    names = [line.split()[0] for line in first.cli("ls").stdout.splitlines()[1:]]
    assert names == ["other", "tests"]
