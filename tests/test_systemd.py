"""sd_notify against a real datagram socket, and unit files checked by systemd-analyze."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from clusterd.ops import systemd
from clusterd.ops.systemd import Notifier, child_environ, quote_exec_arg, render_unit, template_unit

REPO = Path(__file__).resolve().parent.parent
TEMPLATE_EXECUTABLE = "/usr/local/bin/clusterd"


# --- sd_notify ---------------------------------------------------------------------------------


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request, tmp_path):
    """A bound AF_UNIX datagram socket standing in for systemd; yields (NOTIFY_SOCKET, socket)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(2)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
        env_value = address
    else:
        name = f"clusterd-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        env_value = "@" + name
    yield env_value, sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_status_stopping_watchdog_reach_the_socket(notify_socket):
    address, sock = notify_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    notifier.ready()
    assert received(sock) == ["READY=1"]
    notifier.status("4/4 workers ready\nserved 10")
    assert received(sock) == ["STATUS=4/4 workers ready served 10"]
    notifier.stopping()
    assert received(sock) == ["STOPPING=1"]
    notifier.watchdog()
    assert received(sock) == ["WATCHDOG=1"]
    notifier.notify("A=1", "B=2")
    assert received(sock) == ["A=1", "B=2"]


def test_reloading_carries_monotonic_usec_in_the_same_datagram(notify_socket):
    address, sock = notify_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": address})
    before = time.monotonic_ns() // 1000
    notifier.reloading()
    after = time.monotonic_ns() // 1000
    lines = received(sock)
    assert lines[0] == "RELOADING=1"
    assert len(lines) == 2 and lines[1].startswith("MONOTONIC_USEC=")
    usec = int(lines[1].removeprefix("MONOTONIC_USEC="))
    assert before <= usec <= after


def test_notify_never_raises_when_systemd_is_gone(tmp_path):
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    assert notifier.enabled
    notifier.ready()
    notifier.reloading()
    notifier.watchdog()


def test_notify_never_blocks_when_the_socket_is_full(tmp_path):
    address = str(tmp_path / "full.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": address})
        started = time.monotonic()
        for _ in range(5000):  # far more than a datagram queue holds; nobody reads
            notifier.status("x" * 200)
        assert time.monotonic() - started < 5


def test_disabled_notifier_does_nothing():
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    notifier.ready()
    notifier.status("x")
    notifier.reloading()
    notifier.stopping()
    notifier.watchdog()
    assert notifier.watchdog_interval() is None
    assert not Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process(notify_socket):
    address, _ = notify_socket
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "30000000"}
    assert Notifier.from_environ(env).watchdog_interval() == 15.0
    env["WATCHDOG_PID"] = str(os.getpid())
    assert Notifier.from_environ(env).watchdog_interval() == 15.0
    env["WATCHDOG_PID"] = str(os.getpid() + 1)
    assert Notifier.from_environ(env).watchdog_interval() is None


def test_watchdog_interval_is_none_without_watchdog_usec(notify_socket):
    address, _ = notify_socket
    assert Notifier.from_environ({"NOTIFY_SOCKET": address}).watchdog_interval() is None
    bad = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "soon"}
    assert Notifier.from_environ(bad).watchdog_interval() is None


def test_notifier_socket_is_not_inherited(notify_socket):
    address, _ = notify_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": address})
    assert not notifier._sock.get_inheritable()
    assert not notifier._sock.getblocking()


def test_child_environ_drops_the_variables_that_talk_to_systemd():
    env = {
        "PATH": "/usr/bin",
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": "1",
        "LISTEN_FDS": "1",
        "LISTEN_PID": "1",
        "CLUSTERD_NAME": "myapp",
    }
    child = child_environ(env)
    assert child == {"PATH": "/usr/bin", "CLUSTERD_NAME": "myapp"}
    assert "NOTIFY_SOCKET" in env  # the caller's mapping is left alone


# --- unit files --------------------------------------------------------------------------------


def test_template_shipped_in_package_is_the_one_in_systemd_dir():
    assert template_unit() == (REPO / "systemd" / "clusterd@.service").read_text()
    assert Path(str(systemd.TEMPLATE_UNIT_PATH)).name == "clusterd@.service"


def test_template_has_the_contracted_settings():
    settings = unit_settings(template_unit())
    assert settings["Type"] == ["notify"]
    assert settings["NotifyAccess"] == ["main"]
    assert settings["KillMode"] == ["mixed"]
    assert settings["Restart"] == ["on-failure"]
    assert settings["WatchdogSec"] == ["30"]
    assert settings["EnvironmentFile"] == ["/etc/clusterd/%i.env"]
    assert "CLUSTERD_NAME=%i" in settings["Environment"]
    assert "CLUSTERD_RUNTIME_DIR=%t/clusterd" in settings["Environment"]
    assert settings["ExecStart"][0].startswith(
        f"{TEMPLATE_EXECUTABLE} run ${{CLUSTERD_MASTER}} ${{CLUSTERD_WORKER}}"
    )
    assert settings["ExecReload"] == [f"{TEMPLATE_EXECUTABLE} reload --name %i"]
    for option in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices"):
        assert settings[option] == ["yes"]
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["WantedBy"] == ["multi-user.target"]


def test_rendered_unit_runs_the_app_and_reloads_it():
    text = render_unit(
        "myapp.rpc:Master",
        "myapp.rpc:Worker",
        name="myapp",
        workdir="/srv/myapp",
        executable="/opt/venv/bin/clusterd",
        args=["--workers", "4", "--graceful-timeout", "60"],
        user="myapp",
        environment_file="/etc/clusterd/myapp.env",
    )
    settings = unit_settings(text)
    assert settings["ExecStart"] == [
        "/opt/venv/bin/clusterd run myapp.rpc:Master myapp.rpc:Worker --name myapp"
        " --workers 4 --graceful-timeout 60"
    ]
    assert settings["ExecReload"] == ["/opt/venv/bin/clusterd reload --name myapp"]
    assert settings["Type"] == ["notify"]
    assert settings["NotifyAccess"] == ["main"]
    assert settings["KillMode"] == ["mixed"]
    assert settings["KillSignal"] == ["SIGTERM"]
    assert settings["TimeoutStopSec"] == ["75"]  # above the graceful timeout found in args
    assert settings["WorkingDirectory"] == ["/srv/myapp"]
    assert settings["User"] == ["myapp"]
    assert settings["EnvironmentFile"] == ["/etc/clusterd/myapp.env"]
    assert settings["RuntimeDirectoryMode"] == ["0700"]
    assert settings["Environment"] == ['"CLUSTERD_RUNTIME_DIR=%t/clusterd"']
    assert settings["WatchdogSec"] == ["30"]
    assert settings["ProtectSystem"] == ["strict"]


def test_rendered_unit_default_stop_timeout_is_above_30s_graceful_timeout():
    text = render_unit("a:M", "a:W", name="a", workdir="/srv/a", executable="/usr/bin/clusterd")
    assert unit_settings(text)["TimeoutStopSec"] == ["45"]
    assert "User" not in unit_settings(text)


def test_quote_exec_arg_escapes_what_systemd_would_interpret():
    assert quote_exec_arg("--workers") == "--workers"
    assert quote_exec_arg("tcp://0.0.0.0:7000") == "tcp://0.0.0.0:7000"
    assert quote_exec_arg("a b") == '"a b"'
    assert quote_exec_arg("") == '""'
    assert quote_exec_arg(";") == '";"'
    assert quote_exec_arg("$HOME") == '"$$HOME"'
    assert quote_exec_arg("50%") == '"50%%"'
    assert quote_exec_arg('say "hi"\\') == '"say \\"hi\\"\\\\"'
    assert quote_exec_arg("a\nb") == '"a\\x0ab"'


@pytest.mark.parametrize(
    "bad",
    [
        {"workdir": "srv/a"},
        {"executable": "clusterd"},
        {"name": "my app"},
        {"name": "../etc"},
        {"user": "root\nExecStartPre=/bin/sh"},
    ],
)
def test_render_unit_rejects_values_that_would_corrupt_the_unit(bad):
    kwargs = {"name": "a", "workdir": "/srv/a", "executable": "/usr/bin/clusterd"} | bad
    with pytest.raises(ValueError):
        render_unit("a:M", "a:W", **kwargs)


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


# --- systemd-analyze verify ----------------------------------------------------------------------
#
# verify loads the unit offline, without a running systemd (it works in a container): it fails
# (exit 1) on fatal errors such as an ExecStart= binary that does not exist, and only *warns* on
# stderr (exit 0) about unknown keys and unparsable values, which systemd then ignores. So a clean
# result is exit 0 and no stderr line about our file. EnvironmentFile= and WorkingDirectory= are not
# checked for existence, so they may point nowhere. Lines about other units (a host's own units,
# when verify follows dependencies) are not ours to judge and are ignored.

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed"
)
# A real executable file stands in for the clusterd script, which verify insists must exist.
REAL_EXECUTABLE = os.path.realpath(sys.executable)


def verify(unit: Path) -> None:
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    ours = [line for line in result.stderr.splitlines() if unit.name in line]
    assert result.returncode == 0, result.stderr
    assert not ours, "\n".join(ours)


@needs_systemd_analyze
def test_template_passes_systemd_analyze_verify(tmp_path):
    text = template_unit()
    assert TEMPLATE_EXECUTABLE in text
    unit = tmp_path / "clusterd@myapp.service"  # verify needs an instance of a template
    unit.write_text(text.replace(TEMPLATE_EXECUTABLE, REAL_EXECUTABLE))
    verify(unit)


@needs_systemd_analyze
def test_rendered_unit_passes_systemd_analyze_verify(tmp_path):
    unit = tmp_path / "myapp.service"
    unit.write_text(
        render_unit(
            "myapp.rpc:Master",
            "myapp.rpc:Worker",
            name="myapp",
            workdir="/srv/my app",
            executable=REAL_EXECUTABLE,
            args=["--workers", "4", "--bind", "tcp://127.0.0.1:7000", "a b", "$X", "50%", ";", ""],
            user="myapp",
            environment_file="/etc/clusterd/myapp.env",
            read_write_paths=["/srv/my app/var"],
        )
    )
    verify(unit)


@needs_systemd_analyze
def test_verify_check_catches_a_broken_unit(tmp_path):
    """Guards the two checks above: a warning-only problem must fail verify()."""
    unit = tmp_path / "broken.service"
    text = render_unit("a:M", "a:W", name="a", workdir="/srv/a", executable=REAL_EXECUTABLE)
    unit.write_text(text.replace("KillMode=mixed", "KillMode=sometimes"))
    with pytest.raises(AssertionError):
        verify(unit)
    unit.write_text(text.replace(REAL_EXECUTABLE, "/nonexistent/clusterd"))
    with pytest.raises(AssertionError):
        verify(unit)


# --- clusterd systemd-unit -----------------------------------------------------------------------


def systemd_unit_cli(*args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "clusterd", "systemd-unit", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "args",
    [
        ["tests.apps.basic:Master", "tests.apps.basic:Worker", "--no-such-option"],
        ["tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "many"],
        ["no.such.module:Master", "tests.apps.basic:Worker"],
        ["tests.apps.basic:Master", "tests.apps.basic:NoSuchClass"],
        ["tests.apps.basic:Master", "tests.apps.basic:Worker", "--curve-dir", "/nonexist",
         "--bind", "tcp://0.0.0.0:7011"],
        ["tests.apps.basic:Master", "tests.apps.basic:Worker", "--worker-bind", "tcp://0.0.0.0:7012"],
        ["tests.apps.basic:Master", "tests.apps.basic:Worker", "--user", ""],
    ],
    ids=["unknown-option", "bad-value", "master-does-not-import", "worker-does-not-import", "no-keys",
         "worker-bind-unencrypted", "empty-user"],
)
def test_systemd_unit_refuses_what_run_would_refuse(args):
    result = systemd_unit_cli(*args)
    assert result.returncode == 2, result.stdout
    if "--user" not in args:  # `run` itself refuses the same options, with the same status
        run = subprocess.run([sys.executable, "-m", "clusterd", "run", *args], cwd=REPO, capture_output=True,
                             text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert run.returncode == 2, run.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clusterd: ") and "Traceback" not in result.stderr


def test_systemd_unit_without_the_script_on_path_runs_this_interpreter(tmp_path):
    result = systemd_unit_cli("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "2",
                              "--name", "basic", path="/nonexistent")
    assert result.returncode == 0, result.stderr
    settings = unit_settings(result.stdout)
    assert settings["ExecStart"] == [
        f"{sys.executable} -m clusterd run tests.apps.basic:Master tests.apps.basic:Worker --name basic --workers 2"
    ]
    assert settings["ExecReload"] == [f"{sys.executable} -m clusterd reload --name basic"]
    if SYSTEMD_ANALYZE is not None:
        unit = tmp_path / "basic.service"
        unit.write_text(result.stdout)
        verify(unit)
