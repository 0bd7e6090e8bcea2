"""`clusterd run` under systemd's eyes: sd_notify on a real datagram socket, and the generated unit."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import wait_for


class NotifySocket:
    """What systemd would receive: every datagram, with its arrival time."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def having(self, key: str, value: str | None = None) -> list[tuple[float, dict]]:
        return [(t, m) for t, m in self.messages if key in m and (value is None or m[key] == value)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def notify(runtime_dir):
    ns = NotifySocket(str(runtime_dir / "notify.sock"))
    yield ns
    ns.close()


def test_sd_notify_lifecycle(cluster, notify, runtime_dir):
    env = {"NOTIFY_SOCKET": str(runtime_dir / "notify.sock"), "WATCHDOG_USEC": "400000"}
    inst = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "2", env=env)
    wait_for(lambda: notify.having("READY", "1"), timeout=10, message="READY=1")
    first_ready = notify.having("READY", "1")[0][0]
    status_lines = [m["STATUS"] for _t, m in notify.having("STATUS")]
    assert any("2/2" in s for s in status_lines), status_lines
    # READY only once all workers are ready: the status document agrees at that point
    assert len(inst.ready_workers()) == 2
    # watchdog at half of WATCHDOG_USEC (0.2 s)
    wait_for(lambda: len(notify.having("WATCHDOG", "1")) >= 6, timeout=10, message="watchdog beats")
    beats = [t for t, _m in notify.having("WATCHDOG", "1")]
    gaps = sorted(b - a for a, b in zip(beats, beats[1:]))
    assert 0.1 < gaps[len(gaps) // 2] < 0.35
    # reload: RELOADING=1 with MONOTONIC_USEC, then READY=1 again
    r = inst.cli("reload", "--name", inst.name)
    assert r.returncode == 0, r.stderr
    reloading = notify.having("RELOADING", "1")
    assert reloading
    usec = int(reloading[0][1]["MONOTONIC_USEC"])
    assert abs(usec - time.monotonic_ns() // 1000) < 60_000_000
    wait_for(lambda: [t for t, _m in notify.having("READY", "1") if t > reloading[0][0]], timeout=5,
             message="READY=1 after reload")
    assert first_ready < reloading[0][0]
    # stop
    inst.signal(signal.SIGTERM)
    assert inst.wait_exit(20) == 0
    assert notify.having("STOPPING", "1")


def test_workers_do_not_inherit_the_notify_socket(cluster, notify, runtime_dir):
    env = {"NOTIFY_SOCKET": str(runtime_dir / "notify.sock")}
    inst = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "1", env=env)
    pid = inst.wait_ready(1)[0]["pid"]
    import psutil
    assert "NOTIFY_SOCKET" not in psutil.Process(pid).environ()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_generated_unit_passes_systemd_analyze_verify(tmp_path):
    r = subprocess.run([sys.executable, "-m", "clusterd", "systemd-unit", "examples.primes:Master",
                        "examples.primes:Worker", "--workers", "4", "--name", "primes"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    unit = r.stdout
    assert "Type=notify" in unit and "ExecReload=" in unit and "KillMode=mixed" in unit
    assert "examples.primes:Master" in unit and "--workers" in unit
    # systemd-analyze checks that ExecStart's program exists: point it at this interpreter's clusterd
    path = tmp_path / "primes.service"
    path.write_text(unit)
    v = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert v.returncode == 0, v.stderr
    assert "primes.service" not in v.stderr, v.stderr
