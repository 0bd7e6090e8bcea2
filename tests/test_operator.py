"""The operator's day (issue 14): logs, clear errors, a status that fits, exit codes scripts trust.

Everything runs through the real CLI and real processes (tests/conftest.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import psutil
import pytest

from clusterd.client import Client
from clusterd.control import NoInstance

from .conftest import ROOT, instance_env, terminal_signals, wait_exit, wait_for

pytestmark = pytest.mark.timeout(90)

OPS = ("tests.apps.operator:Master", "tests.apps.operator:Worker")


def clusterd(*args: str, env: dict, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clusterd", *args], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=timeout)


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


# ---------------------------------------------------------------------------- 1, 2: exceptions and worker logging
def test_an_exception_in_a_method_is_logged_at_error_with_slot_pid_and_traceback_once_per_period(cluster):
    inst = cluster(*OPS, "--workers", "1", "--log-format", "json")
    c = inst.client()
    for _ in range(5):
        assert c.call("fails", "x")["error"]["code"] == -32000
    assert c.call("master_fails")["error"]["code"] == -32000
    pid = inst.ready_workers()[0]["pid"]

    def logged():
        lines = [r for r in json_lines(inst.stderr()) if r.get("method") in ("fails", "master_fails")
                 and r["level"] == "error"]
        return lines if len(lines) >= 2 else None
    lines = wait_for(logged, message="the errors in the log")
    worker_lines = [r for r in lines if r["method"] == "fails"]
    assert len(worker_lines) == 1, worker_lines  # five failures, one report within the period
    rec = worker_lines[0]
    assert rec["slot"] == 0 and rec["pid"] == pid and rec["logger"] == "clusterd.worker"
    assert rec["instance"] == "t"
    assert "tests/apps/operator.py" in rec["exc"] and "ValueError: bad value x" in rec["exc"]
    assert "endpoint.py" not in rec["exc"]  # the traceback starts at the user's method
    master = [r for r in lines if r["method"] == "master_fails"][0]
    assert "KeyError" in master["exc"] and master.get("slot") is None


def test_log_calls_writes_one_access_line_per_call_with_its_duration(cluster):
    inst = cluster(*OPS, "--workers", "1", "--log-format", "json", "--log-calls")
    c = inst.client()
    assert c.call("ok", 5)["result"] == 5
    assert "error" in c.call("fails")
    access = wait_for(lambda: (lambda a: a if len(a) >= 2 else None)(
        [r for r in json_lines(inst.stderr()) if r.get("logger") == "clusterd.access"]), message="access lines")
    assert [r["method"] for r in access] == ["ok", "fails"]
    assert all(isinstance(r["duration_ms"], float) and r["duration_ms"] >= 0 for r in access)
    assert access[0]["msg"].split()[1] == "ok" and access[1]["msg"].split()[1] == "error"


def test_without_log_calls_no_access_line_is_written(cluster):
    inst = cluster(*OPS, "--workers", "1", "--log-format", "json")
    c = inst.client()
    assert c.call("warn", "marker")["result"] == 0
    wait_for(lambda: "careful: marker" in inst.stderr(), message="the warning")
    assert not [r for r in json_lines(inst.stderr()) if r.get("logger") == "clusterd.access"]


def test_worker_logging_keeps_its_level_and_logger_and_plain_output_stays_tagged(cluster):
    inst = cluster(*OPS, "--workers", "2", "--log-format", "json")
    c = inst.client()
    slot = c.call("warn", "json-mode")["result"]
    c.call("shout", "plainly")
    pids = {w["slot"]: w["pid"] for w in inst.ready_workers()}

    def found():
        recs = json_lines(inst.stderr())
        warn = [r for r in recs if r["msg"] == "careful: json-mode"]
        plain = [r for r in recs if r["msg"] == "plain plainly"]
        return (warn, plain) if warn and plain else None
    warn, plain = wait_for(found, message="the worker's lines")
    assert warn[0]["level"] == "warning" and warn[0]["logger"] == "opsapp"
    assert warn[0]["slot"] == slot and warn[0]["pid"] == pids[slot] and warn[0]["instance"] == "t"
    assert plain[0]["level"] == "info" and plain[0]["event"] == "output" and plain[0]["pid"] in pids.values()
    assert not [r for r in json_lines(inst.stderr()) if "a debug detail" in r["msg"]]  # INFO and up


def test_text_lines_carry_milliseconds_and_the_workers_level(cluster):
    inst = cluster(*OPS, "--workers", "1")
    inst.client().call("warn", "text-mode")
    line = wait_for(lambda: next((ln for ln in inst.stderr().splitlines() if "text-mode" in ln), None),
                    message="the warning line")
    pid = inst.ready_workers()[0]["pid"]
    assert re.match(rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{{3}} WARNING +\[worker 0 pid {pid}\] opsapp: "
                    r"careful: text-mode$", line), line


def test_debug_lets_worker_debug_records_through(cluster):
    inst = cluster(*OPS, "--workers", "1", "--debug", "--log-format", "json")
    inst.client().call("warn", "dbg")
    rec = wait_for(lambda: next((r for r in json_lines(inst.stderr()) if r["msg"] == "a debug detail dbg"), None),
                   message="the debug record")
    assert rec["level"] == "debug" and rec["logger"] == "opsapp"


def test_a_start_services_traceback_is_printed_once(cluster):
    inst = cluster("tests.apps.failing:Master", "tests.apps.failing:Worker", "--workers", "2", start=False)
    inst.start(wait=False)
    assert inst.wait_exit(30) == 1
    err = inst.stderr()
    assert err.count("Traceback (most recent call last)") == 1, err
    assert err.count("raise RuntimeError(\"worker cannot start on purpose\")") == 1, err


def test_a_refused_reload_logs_the_newcomers_traceback_once_and_status_keeps_the_slots_history(cluster, tmp_path):
    flag = tmp_path / "fail"
    inst = cluster(*OPS, "--workers", "1", env={"OPS_FAIL_FILE": str(flag)})
    before = inst.ready_workers()[0]
    flag.write_text("x")
    proc = inst.cli("reload")
    assert proc.returncode == 1 and "refusing to start" in proc.stderr
    wait_for(lambda: "failed to start" in inst.stderr(), message="the newcomer's failure in the log")
    assert inst.stderr().count("raise RuntimeError(\"refusing to start") == 1, inst.stderr()
    w = inst.ready_workers()[0]
    assert w["pid"] == before["pid"] and w["last_exit"] is None and w["restarts"] == 0


# ---------------------------------------------------------------------------- 3: logs and --log-file
def test_logs_prints_recent_lines_by_slot_and_follows_new_ones(cluster, tmp_path):
    inst = cluster(*OPS, "--workers", "2")
    c = inst.client()
    slots = {c.call("warn", f"line-{i}")["result"] for i in range(6)}
    assert slots == {0, 1}
    wait_for(lambda: "line-5" in inst.stderr(), message="the lines")
    proc = inst.cli("logs", "-n", "3")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 3 and "line-5" in proc.stdout
    one = inst.cli("logs", "--slot", "1", "-n", "200", "--json")
    entries = [json.loads(ln) for ln in one.stdout.splitlines()]
    assert entries and all(e.get("slot") == 1 for e in entries)
    assert any(e["msg"].startswith("careful: line-") for e in entries)

    err = tmp_path / "follow.stderr"  # a file, not an unread pipe that could fill and block the follower
    with open(err, "wb") as err_file:
        follow = subprocess.Popen([sys.executable, "-m", "clusterd", "logs", "-f", "-n", "0"], cwd=ROOT,
                                  env=inst.env, stdout=subprocess.PIPE, stderr=err_file, text=True,
                                  preexec_fn=terminal_signals)
    try:
        wait_for(lambda: c.call("warn", "followed")["result"] is not None and _has_line(follow, "followed"),
                 timeout=20, interval=0.3, message="logs -f to print a new line")
    finally:
        follow.send_signal(signal.SIGINT)
        try:
            wait_exit(follow, 10)
        finally:
            follow.kill()
            follow.wait()
            follow.stdout.close()
    assert "Traceback" not in err.read_text(), err.read_text()


def _has_line(proc: subprocess.Popen, needle: str) -> bool:
    import select
    while select.select([proc.stdout], [], [], 0.2)[0]:
        line = proc.stdout.readline()
        if not line:
            return False
        if needle in line:
            return True
    return False


def test_log_file_is_reopened_after_logrotate_moves_it(cluster, tmp_path):
    path = tmp_path / "clusterd.log"
    inst = cluster(*OPS, "--workers", "1", "--log-file", str(path))
    assert "ready" in path.read_text()
    path.rename(tmp_path / "clusterd.log.1")
    inst.client().call("warn", "after-rotation")
    wait_for(lambda: path.exists() and "after-rotation" in path.read_text(), message="a new log file")
    assert "after-rotation" not in (tmp_path / "clusterd.log.1").read_text()


def test_an_unwritable_log_file_is_a_usage_error(cluster, tmp_path):
    env = instance_env(tmp_path / "rt")
    proc = clusterd("run", *OPS, "--log-file", str(tmp_path / "no" / "such" / "dir.log"), env=env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--log-file" in proc.stderr


# ---------------------------------------------------------------------------- 4: Listening at
def test_startup_says_where_it_listens(cluster):
    from .conftest import free_port
    port = free_port()
    inst = cluster(*OPS, "--workers", "1", "--bind", f"tcp://127.0.0.1:{port}")
    lines = [ln for ln in inst.stderr().splitlines() if "Listening at: " in ln]
    addrs = [ln.split("Listening at: ", 1)[1].split()[0] for ln in lines]
    assert f"tcp://127.0.0.1:{port}" in addrs
    assert f"ipc://{inst.dir / 'control.sock'}" in addrs
    assert f"ipc://{inst.dir / 'workers.sock'}" in addrs


# ---------------------------------------------------------------------------- 6: errors say what and where
def test_errors_name_the_method_and_say_the_message_once(cluster):
    inst = cluster(*OPS, "--workers", "1")
    missing = inst.cli("call", "no_such_method")
    assert missing.returncode == 1 and "no_such_method" in missing.stderr
    failed = inst.cli("call", "fails", "once")
    assert failed.returncode == 1 and failed.stderr.count("bad value once") == 1, failed.stderr


def test_a_worker_that_dies_in_a_call_logs_the_method(cluster):
    inst = cluster(*OPS, "--workers", "1", "--log-format", "json")
    assert inst.client().call("die")["error"]["code"] == -32002
    rec = wait_for(lambda: next((r for r in json_lines(inst.stderr()) if r.get("event") == "worker-exit"
                                 and r.get("reason") == "crashed"), None), message="the exit line")
    assert rec["methods"] == ["die"] and rec["code"] == 7


def test_an_import_error_in_the_users_module_shows_file_and_line(tmp_path):
    proc = clusterd("run", "tests.apps.broken:M", "tests.apps.broken:W", env=instance_env(tmp_path))
    assert proc.returncode == 2 and "broken.py:3" in proc.stderr and "Traceback" not in proc.stderr


def test_workers_zero_is_refused_but_scale_zero_is_allowed_and_shown(cluster, tmp_path):
    proc = clusterd("run", *OPS, "--workers", "0", env=instance_env(tmp_path))
    assert proc.returncode == 2 and "scale 0" in proc.stderr
    inst = cluster(*OPS, "--workers", "1")
    for bad in ("abc", "-1"):
        out = inst.cli("scale", bad)
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and repr(bad) in out.stderr, out.stderr
    assert inst.cli("scale", "0").returncode == 0
    wait_for(lambda: inst.status()["workers"] == [], message="no worker left")
    text = inst.cli("status").stdout
    assert "workers 0/0 ready" in text and "scaled to 0" in text


# ---------------------------------------------------------------------------- 7: exit codes
@pytest.mark.parametrize("args", [["status"], ["reload"], ["call", "ok"], ["scale", "2"], ["logs"], ["health"],
                                  ["status", "--name", "ghost"], ["call", "ok", "--name", "ghost"]])
def test_commands_exit_3_when_the_instance_is_not_running(tmp_path, args):
    proc = clusterd(*args, env=instance_env(tmp_path))
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_stop_of_an_instance_that_is_not_running_exits_0_and_says_so(tmp_path):
    proc = clusterd("stop", "--name", "ghost", env=instance_env(tmp_path))
    assert proc.returncode == 0 and "ghost" in proc.stdout and "nothing to stop" in proc.stdout


def test_usage_errors_exit_2_and_failures_exit_1(cluster):
    inst = cluster(*OPS, "--workers", "1")
    assert inst.cli("status", "--no-such-flag").returncode == 2
    assert inst.cli("call", "fails").returncode == 1
    assert inst.cli("health").returncode == 0


def test_health_is_1_when_scaled_to_0_on_purpose(cluster):
    inst = cluster(*OPS, "--workers", "1")
    assert inst.cli("scale", "0").returncode == 0
    wait_for(lambda: inst.status()["workers"] == [], message="no worker left")
    assert inst.cli("health").returncode == 1


def test_several_instances_without_a_name_is_a_usage_error_for_commands_that_need_one(cluster):
    cluster(*OPS, "--workers", "1", name="one")
    two = cluster(*OPS, "--workers", "1", name="two")
    proc = two.cli("call", "ok")
    assert proc.returncode == 2 and "--name" in proc.stderr


# ---------------------------------------------------------------------------- 8: the Python client
def test_python_client_has_per_call_and_default_timeouts_and_errors_speak_python(cluster):
    inst = cluster(*OPS, "--workers", "2")
    os.environ["CLUSTERD_RUNTIME_DIR"] = str(inst.runtime_dir)
    try:
        with Client("t", timeout=5) as c:
            with pytest.raises(TimeoutError):
                c.call("slow", 2, timeout=0.2)
            assert c.call("slow", 0.5) == 0.5            # the client's default (5 s) is enough
            assert c.call("slow", 0.3, timeout=None) == 0.3
        with Client("t", timeout=0.2) as c:
            with pytest.raises(TimeoutError):
                c.call("slow", 2)
            assert c.call("ok", 4, timeout=5) == 4
            with pytest.raises(ValueError):
                c.call("ok", timeout=-1)
        cluster(*OPS, "--workers", "1", name="u")
        with pytest.raises(NoInstance) as err:
            Client()
        assert "Client(name=" in str(err.value) and "--name" not in str(err.value)
    finally:
        os.environ.pop("CLUSTERD_RUNTIME_DIR", None)


def test_async_client_has_per_call_timeouts(cluster):
    import asyncio

    from clusterd.client import AsyncClient
    inst = cluster(*OPS, "--workers", "1")

    async def main() -> None:
        c = AsyncClient(address=inst.control, timeout=5)
        try:
            with pytest.raises(TimeoutError):
                await c.call("slow", 2, timeout=0.2)
            assert await c.call("ok", 3) == 3
        finally:
            await c.close()
    asyncio.run(main())


# ---------------------------------------------------------------------------- 11: master_stale
def test_a_change_to_the_masters_code_reloads_workers_and_marks_the_master_stale(cluster, tmp_path):
    app = tmp_path / "staleapp"
    app.mkdir()
    (app / "__init__.py").write_text("")
    source = ("from clusterd import MasterEndpoint, WorkerEndpoint, rpc\n"
              "class Master(MasterEndpoint):\n    pass\n"
              "class Worker(WorkerEndpoint):\n    @rpc\n    def v(self):\n        return VERSION\n"
              "VERSION = 1\n")
    (app / "rpc.py").write_text(source)
    inst = cluster("staleapp.rpc:Master", "staleapp.rpc:Worker", "--workers", "1", "--reload-on-change", str(app),
                   cwd=tmp_path, env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert inst.status()["master"]["master_stale"] is False
    (app / "rpc.py").write_text(source.replace("VERSION = 1", "VERSION = 2"))
    wait_for(lambda: inst.client().call("v").get("result") == 2, timeout=30, message="the workers reloaded")
    wait_for(lambda: inst.status()["master"]["master_stale"], message="master_stale")
    assert inst.stderr().count("the master's code changed") == 1
    assert "MASTER STALE" in inst.cli("status").stdout


# ---------------------------------------------------------------------------- 5: status
@pytest.mark.parametrize("columns", [80, 120])
def test_status_fits_the_terminal_with_a_totals_line_with_8_workers(cluster, columns):
    inst = cluster(*OPS, "--workers", "8", name=f"w{columns}")
    c = inst.client()
    for i in range(20):
        c.call("ok", i)
    proc = subprocess.run([sys.executable, "-m", "clusterd", "status"], cwd=ROOT, text=True, capture_output=True,
                          env={**inst.env, "COLUMNS": str(columns)}, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(ln) for ln in lines) <= columns, proc.stdout
    rows = [ln for ln in lines if re.match(r"^\d+ ", ln)]
    assert len(rows) == 8
    totals = " ".join(ln for ln in lines if ln.startswith("total:") or ln.startswith("memory"))
    assert "total: 8 workers" in totals and "served 20" in totals and "in flight 0" in totals
    assert "memory" in totals
    if columns == 120:
        assert "LAST EXIT" in lines[lines.index(next(ln for ln in lines if ln.startswith("SLOT")))]


def test_status_shows_every_instance_and_name_narrows(cluster):
    cluster(*OPS, "--workers", "1", name="alpha")
    beta = cluster(*OPS, "--workers", "2", name="beta")
    both = beta.cli("status")
    assert both.returncode == 0
    heads = [ln.split()[0] for ln in both.stdout.splitlines() if ln.startswith(("alpha ", "beta "))]
    assert heads == ["alpha", "beta"]
    one = beta.cli("status", "--name", "beta")
    assert "alpha" not in one.stdout and one.stdout.startswith("beta ")
    docs = json.loads(beta.cli("status", "--json").stdout)
    assert [d["name"] for d in docs] == ["alpha", "beta"]


def test_after_scale_status_and_ls_agree(cluster):
    inst = cluster(*OPS, "--workers", "2")
    assert inst.cli("scale", "4").returncode == 0
    inst.wait_ready(4)
    assert "workers 4/4 ready" in inst.cli("status").stdout
    row = next(ln for ln in inst.cli("ls").stdout.splitlines() if ln.startswith("t "))
    assert row.split()[3] == "4/4"
    doc = inst.status()
    assert (doc["workers_ready"], doc["workers_wanted"]) == (4, 4)


def test_a_worker_recycled_as_hung_counts_as_a_restart(cluster):
    inst = cluster(*OPS, "--workers", "1", "--call-timeout", "0.5")
    assert inst.client().call("slow", 5, timeout=15)["error"]["code"] == -32003
    w = wait_for(lambda: (lambda ws: ws[0] if ws and ws[0]["restarts"] == 1 else None)(inst.ready_workers()),
                 message="the replacement counted as a restart")
    assert w["last_exit"] is None or w["last_exit"]["reason"] == "hung"


def test_process_titles_tell_master_zygote_and_workers_apart(cluster):
    inst = cluster(*OPS, "--workers", "2")
    titles = {}
    for p in psutil.Process(inst.proc.pid).children(recursive=True) + [psutil.Process(inst.proc.pid)]:
        try:
            titles[p.pid] = " ".join(a for a in p.cmdline() if a)
        except psutil.Error:
            pass
    assert titles[inst.proc.pid] == "clusterd: t master"
    for w in inst.ready_workers():
        assert titles[w["pid"]] == f"clusterd: t worker {w['slot']} gen 1"
    if not os.environ.get("CLUSTERD_NO_ZYGOTE"):
        assert "clusterd: t zygote gen 1" in titles.values()


# ---------------------------------------------------------------------------- 10: the options people reach for first
def test_chdir_pythonpath_and_env_reach_the_master_and_the_workers(cluster, tmp_path):
    app = tmp_path / "lib" / "opsmod"
    app.mkdir(parents=True)
    (app / "__init__.py").write_text("from tests.apps.operator import Master, Worker\n")
    work = tmp_path / "work"
    work.mkdir()
    inst = cluster("opsmod:Master", "opsmod:Worker", "--workers", "1", "--chdir", str(work),
                   "--pythonpath", f"{tmp_path / 'lib'},{ROOT}", "--env", "OPS_VAR=one=1", "--env", "OTHER=2",
                   cwd=tmp_path)
    c = inst.client()
    w = c.call("where")["result"]
    assert w["cwd"] == str(work) and w["env"] == "one=1" and str(tmp_path / "lib") in w["path"]
    assert c.call("where", "OTHER")["result"]["env"] == "2"
    m = c.call("master_where")["result"]
    assert m["cwd"] == str(work) and m["env"] == "one=1"
    assert inst.status()["config"]["env"] == ["OPS_VAR", "OTHER"]  # names only: values may be secrets


def test_chdir_pythonpath_env_come_from_the_toml_file_and_the_environment(cluster, tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text(f'chdir = "{tmp_path}"\nenv = ["OPS_VAR=from-file"]\n')
    inst = cluster(*OPS, "--workers", "1", "-c", str(conf), env={"CLUSTERD_PYTHONPATH": str(ROOT)})
    w = inst.client().call("where")["result"]
    assert w["cwd"] == str(tmp_path) and w["env"] == "from-file" and str(ROOT) in w["path"]


@pytest.mark.parametrize("args, needle", [(["--chdir", "/no/such/dir"], "--chdir"),
                                          (["--env", "NOEQUALS"], "--env"),
                                          (["--env", "1BAD=x"], "--env"),
                                          (["--pythonpath", "/no/such/dir"], "--pythonpath"),
                                          (["--user", "no-such-user-here"], "--user")])
def test_bad_chdir_env_pythonpath_user_are_usage_errors(tmp_path, args, needle):
    proc = clusterd("run", *OPS, *args, env=instance_env(tmp_path))
    assert proc.returncode == 2 and needle in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


def _python_for_nobody() -> tuple[str, str] | None:
    """An interpreter the user nobody can run with clusterd importable, and the PYTHONPATH it needs:
    this one, or (when it lives under a private home) the system's python3 of the same version with
    this one's site-packages."""
    import site
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    for exe, path in ((sys.executable, str(ROOT)), (system, os.pathsep.join([*site.getsitepackages(), str(ROOT)]))):
        try:
            ok = subprocess.run([exe, "-c", "import clusterd, zmq, orjson, psutil"], user="nobody", cwd="/",
                                capture_output=True, env={"PYTHONPATH": path}, timeout=30).returncode == 0
        except OSError:
            ok = False
        if ok:
            return exe, path
    return None


def _nobody_can_run_python() -> bool:
    try:
        return subprocess.run([sys.executable, "-c", "import clusterd"], user="nobody", cwd="/", capture_output=True,
                              env={"PYTHONPATH": str(ROOT)}, timeout=30).returncode == 0
    except OSError:
        return False


@pytest.mark.skipif(os.geteuid() != 0, reason="--user needs root")
def test_as_root_a_user_who_cannot_run_the_interpreter_is_one_clear_line(cluster):
    if _nobody_can_run_python():
        pytest.skip("here nobody can run the interpreter: the test below covers --user")
    inst = cluster(*OPS, "--workers", "1", "--user", "nobody", start=False)
    inst.start(wait=False)
    assert inst.wait_exit(30) == 1
    err = inst.stderr()
    assert "cannot start a worker process as user nobody" in err and "Traceback" not in err


@pytest.mark.skipif(os.geteuid() != 0, reason="--user needs root")
def test_as_root_user_and_group_run_the_workers_unprivileged(cluster):
    found = _python_for_nobody()
    if found is None:
        pytest.skip("no interpreter the user nobody can run here")
    exe, path = found
    inst = cluster(*OPS, "--workers", "2", "--user", "nobody", start=False, env={"PYTHONPATH": path})
    inst.start(wait=False, python=exe)
    inst.wait_running()
    c = inst.client()
    import pwd
    nobody = pwd.getpwnam("nobody")
    for _ in range(4):
        w = c.call("where")["result"]
        assert (w["uid"], w["gid"], w["user"]) == (nobody.pw_uid, nobody.pw_gid, "nobody")
    assert c.call("master_where")["result"]["uid"] == 0
    for w in inst.ready_workers():
        assert psutil.Process(w["pid"]).uids().real == nobody.pw_uid
    pid = inst.ready_workers()[0]["pid"]
    os.kill(pid, signal.SIGKILL)  # a replacement is started as the user too
    wait_for(lambda: (lambda ws: len(ws) == 2 and pid not in [w["pid"] for w in ws])(inst.ready_workers()),
             message="the replacement")
    assert all(psutil.Process(w["pid"]).uids().real == nobody.pw_uid for w in inst.ready_workers())
    assert inst.cli("status").returncode == 0
    # the control socket stays root's: the user cannot reach the admin methods
    assert os.stat(inst.dir / "control.sock").st_uid == 0
    assert os.stat(inst.dir / "control.sock").st_mode & 0o077 == 0
