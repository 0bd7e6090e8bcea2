"""Configuration (issue 5): `-c clusterd.toml`, CLUSTERD_<OPTION> variables, flags over environment
over file over defaults, clear errors naming the key and the file; and JSON log lines."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from clusterd.settings import ConfigError, check_address, parse_size, parse_workers
from tests.conftest import ROOT, Instance, instance_env, wait_for


def run_with(tmp_path, *args: str, env: dict | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clusterd", "run", "tests.apps.basic:Master",
                           "tests.apps.basic:Worker", *args], cwd=ROOT, env=instance_env(tmp_path, env),
                          text=True, capture_output=True, timeout=timeout, check=False)


def assert_usage_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def started(tmp_path):
    """start(*args, env=..., name=...) -> a running Instance in tmp_path, killed at the end."""
    instances: list[Instance] = []

    def start(*args: str, env: dict | None = None, name: str = "cfg", wait: bool = True) -> Instance:
        inst = Instance(tmp_path, name, ["tests.apps.basic:Master", "tests.apps.basic:Worker", *args], ROOT,
                        instance_env(tmp_path, env))
        instances.append(inst)
        return inst.start(wait=wait)

    yield start
    from tests.conftest import _kill_leftover_workers
    for inst in instances:
        inst.kill()
        _kill_leftover_workers(inst)


def test_flags_win_over_environment_over_file_over_defaults(tmp_path, started):
    conf = tmp_path / "clusterd.toml"
    conf.write_text('workers = 3\n'
                    'graceful-timeout = 7\n'
                    'heartbeat_timeout = 9\n'
                    'max-requests = 100\n'
                    'balance = "round-robin"\n'
                    'max-memory = "512M"\n')
    inst = started("-c", str(conf), "--graceful-timeout", "6", "--max-requests", "50",
                   env={"CLUSTERD_WORKERS": "1", "CLUSTERD_GRACEFUL_TIMEOUT": "8", "CLUSTERD_MAX_REQUESTS": "70",
                        "CLUSTERD_QUEUE_TIMEOUT": "3"})
    config = inst.status()["config"]
    assert config["graceful_timeout_s"] == 6                 # flag over env over file
    assert config["max_requests"] == 50                      # flag over env over file
    assert config["workers"] == 1                            # env over file
    assert len(inst.wait_ready(1)) == 1
    assert config["queue_timeout_s"] == 3                    # env over default
    assert config["heartbeat_timeout_s"] == 9                # file over default
    assert config["balance"] == "round-robin"
    assert config["max_memory_bytes"] == 512 * 1024 ** 2
    assert config["crash_limit"] == 20 and config["call_timeout_s"] is None   # defaults
    assert config["max_message_size"] == 16 * 1024 ** 2


def test_file_in_a_clusterd_table_with_name_and_binds(tmp_path, started):
    from tests.conftest import free_port
    port = free_port()
    conf = tmp_path / "clusterd.toml"
    conf.write_text(f'[clusterd]\nworkers = 1\nname = "fromfile"\nbind = ["tcp://127.0.0.1:{port}"]\n'
                    'debug = true\n')
    inst = started("-c", str(conf), name="fromfile")
    config = inst.status()["config"]
    assert config["binds"] == [f"tcp://127.0.0.1:{port}"] and config["debug"] is True
    c = inst.client(f"tcp://127.0.0.1:{port}")
    error = c.call("fail", "x")["error"]
    assert "traceback" in error["data"]                      # debug = true took effect


def test_config_file_from_the_environment(tmp_path, started):
    conf = tmp_path / "other.toml"
    conf.write_text("workers = 1\nheartbeat-timeout = 4\n")
    inst = started(env={"CLUSTERD_CONFIG": str(conf)})
    assert inst.status()["config"]["heartbeat_timeout_s"] == 4


def test_name_from_environment_and_from_file(tmp_path, started):
    # a second `run` under a taken name is refused: that shows which name it took, without starting it
    first = started("--workers", "1", name="taken")
    proc = run_with(tmp_path, "--workers", "1", env={"CLUSTERD_NAME": "taken"})
    assert_usage_error(proc, "'taken'", str(first.proc.pid))
    conf = tmp_path / "named.toml"
    conf.write_text('name = "taken"\nworkers = 1\n')
    assert_usage_error(run_with(tmp_path, "-c", str(conf)), "'taken'", str(first.proc.pid))


@pytest.mark.parametrize("content,key", [
    ("bogus = 1\n", "bogus"),
    ("workers = 1\nconfig = 'x.toml'\n", "config"),
    ("[clusterd]\nworkers = 1\n[other]\nx = 1\n", "other"),
    ('workers = "many"\n', "workers"),
    ("workers = -1\n", "workers"),
    ("workers = true\n", "workers"),
    ("workers = 1.5\n", "workers"),
    ('max-memory = "lots"\n', "max-memory"),
    ("graceful-timeout = -1\n", "graceful-timeout"),
    ('graceful_timeout = "soon"\n', "graceful_timeout"),
    ("crash-limit = 2.5\n", "crash-limit"),
    ('balance = "nope"\n', "balance"),
    ('log-format = "xml"\n', "log-format"),
    ('debug = "maybe"\n', "debug"),
    ("bind = 5\n", "bind"),
    ('bind = ["tcp://127.0.0.1:7000", "nowhere"]\n', "bind"),
    ("max-requests = {a = 1}\n", "max-requests"),
])
def test_bad_config_file_names_the_key_and_the_file(tmp_path, content, key):
    conf = tmp_path / "bad.toml"
    conf.write_text(content)
    line = assert_usage_error(run_with(tmp_path, "-c", str(conf)), str(conf), repr(key))
    assert "Invalid value for" not in line or key in line


def test_config_file_that_is_not_toml(tmp_path):
    conf = tmp_path / "broken.toml"
    conf.write_text("workers = \n")
    assert_usage_error(run_with(tmp_path, "-c", str(conf)), str(conf), "TOML")


def test_missing_config_file(tmp_path):
    assert_usage_error(run_with(tmp_path, "-c", str(tmp_path / "nope.toml")), str(tmp_path / "nope.toml"))


@pytest.mark.parametrize("var,value", [("CLUSTERD_WORKERS", "x"), ("CLUSTERD_MAX_MEMORY", "lots"),
                                       ("CLUSTERD_BALANCE", "nope"), ("CLUSTERD_BIND", "tcp://nohost")])
def test_bad_environment_value_names_the_variable(tmp_path, var, value):
    assert_usage_error(run_with(tmp_path, env={var: value}), var)


def test_flag_fixes_a_bad_environment_value_it_overrides(tmp_path, started):
    inst = started("--workers", "1", "--balance", "round-robin", env={"CLUSTERD_BALANCE": "least-busy"})
    assert inst.status()["config"]["balance"] == "round-robin"


# ---------------------------------------------------------------------------- parsing helpers
@pytest.mark.parametrize("text,size", [("512M", 512 * 1024 ** 2), ("2G", 2 * 1024 ** 3),
                                       ("1.5GiB", int(1.5 * 1024 ** 3)),
                                       ("1048576", 1048576), ("64k", 65536), ("10MB", 10 * 1024 ** 2)])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "", "-1M", "1X", "M"])
def test_parse_size_refuses(text):
    with pytest.raises(ConfigError):
        parse_size(text)


def test_parse_workers():
    assert parse_workers("auto") >= 1 and parse_workers("3") == 3 and parse_workers(2) == 2
    for bad in ("x", "-1", "1.5"):
        with pytest.raises(ConfigError):
            parse_workers(bad)


@pytest.mark.parametrize("addr", ["tcp://127.0.0.1:7000", "tcp://*:7000", "tcp://[::1]:7000", "tcp://localhost:1",
                                  "tcp://eth0:7000", "ipc:///tmp/x.sock", "inproc://x", "tcp://127.0.0.1:*"])
def test_check_address_accepts(addr):
    assert check_address(addr) == addr


@pytest.mark.parametrize("addr", ["5", "127.0.0.1:7000", "tcp://127.0.0.1", "tcp://127.0.0.1:99999",
                                  "tcp://:7000", "http://x:1", "tcp://", "ipc://"])
def test_check_address_refuses(addr):
    with pytest.raises(ConfigError):
        check_address(addr)


# ---------------------------------------------------------------------------- logs
def json_lines(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "no log lines"
    out = []
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON log line: {line!r}") from None
        assert isinstance(obj, dict) and "msg" in obj and "level" in obj and "ts" in obj, obj
        out.append(obj)
    return out


def test_json_logs_one_object_per_line_with_worker_output(tmp_path):
    inst = Instance(tmp_path, "jlog", ["tests.apps.printing:Master", "tests.apps.printing:Worker", "--workers", "2",
                                       "--log-format", "json"], ROOT, instance_env(tmp_path))
    try:
        inst.start()
        workers = {w["slot"]: w["pid"] for w in inst.wait_ready(2)}
        wait_for(lambda: all(f"logged by slot {s} pid {p}" in inst.stderr() for s, p in workers.items()),
                 message="worker output")
        inst.signal(signal.SIGTERM)
        assert inst.wait_exit(20) == 0
    finally:
        inst.kill()
    records = json_lines(inst.stderr())
    for slot, pid in workers.items():
        for text in (f"hello from slot {slot} pid {pid}", f"stderr of slot {slot} pid {pid}",
                     f"logged by slot {slot} pid {pid}"):
            rec = next((r for r in records if text in r["msg"]), None)
            assert rec is not None, text
            assert rec["slot"] == slot and rec["pid"] == pid, rec
        assert any(r.get("event") == "worker-ready" and r.get("slot") == slot and r.get("pid") == pid
                   for r in records)
    assert any(r.get("event") == "worker-exit" for r in records)


def test_json_logs_stay_json_when_a_usage_error_happens_after_setup(tmp_path, started):
    first = started("--workers", "1", name="dup")
    proc = run_with(tmp_path, "--workers", "1", "--name", "dup", "--log-format", "json")
    assert proc.returncode == 2
    records = json_lines(proc.stderr)
    assert any(str(first.proc.pid) in r["msg"] for r in records), records


def test_json_logs_stay_json_when_a_worker_fails_to_start(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "clusterd", "run", "tests.apps.failing:Master",
                           "tests.apps.failing:Worker", "--workers", "1", "--log-format", "json", "--name", "fail"],
                          cwd=ROOT, env=instance_env(tmp_path), text=True, capture_output=True, timeout=30, check=False)
    assert proc.returncode == 1
    records = json_lines(proc.stderr)
    assert any("worker cannot start on purpose" in (r["msg"] + r.get("exc", "")) for r in records)
