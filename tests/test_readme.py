"""README.md's commands run as printed: the "Operating it" table, in order, against the service of
"Writing a service" (whose own test is in test_hardening_input.py), and the "Try it" block."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, free_port, instance_env, wait_for
from .test_hardening_input import _readme_service

pytestmark = pytest.mark.timeout(180)


def table_examples() -> list[str]:
    """The example column of the table under "Operating it", top to bottom."""
    section = (ROOT / "README.md").read_text().split("## Operating it", 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("| `clusterd ")]
    examples = [re.findall(r"`([^`]*)`", ln.split("|")[2])[0] for ln in rows]
    assert examples and all(e.startswith("clusterd ") for e in examples), examples
    return examples


def try_it_commands() -> list[str]:
    """The commands of the "Try it" block run from another terminal, with their comments cut off."""
    section = (ROOT / "README.md").read_text().split("## Try it", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"Then, from another terminal.*?```sh\n(.*?)```", section, re.S)
    assert block, "README.md's 'Try it' has no block of commands"
    return [ln.split("#", 1)[0].strip() for ln in block.group(1).splitlines() if ln.strip()]


def argv(command: str) -> list[str]:
    return [sys.executable, "-m", "clusterd", *shlex.split(command)[1:]]


def run_cmd(command: str, cwd: Path, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv(command), cwd=cwd, env=env, text=True, capture_output=True, timeout=timeout)
    assert proc.returncode == 0, f"README's `{command}` exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def started(command: str, cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv(command), cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
                            start_new_session=True)


def stop_group(proc: subprocess.Popen) -> None:
    import os
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def test_operating_it_table_runs_as_printed(tmp_path):
    source = _readme_service()
    module = tmp_path / "myapp" / "rpc.py"
    module.parent.mkdir()
    (module.parent / "__init__.py").touch()
    module.write_text(source)
    env = instance_env(tmp_path / "rt", {"PYTHONPATH": f"{tmp_path}:{ROOT}"})
    (tmp_path / "rt").mkdir(mode=0o700)
    port = str(free_port())  # the agent's port: a fixed one could be taken on a shared machine
    examples = [e.replace("7100", port) for e in table_examples()]
    run, rest = examples[0], examples[1:]
    assert run.startswith("clusterd run ")
    master = started(f"{run} --worker-bind tcp://127.0.0.1:{port}", tmp_path, env, tmp_path / "run.log")
    agent = None
    try:
        wait_for(lambda: master.poll() is None and '"state":"running"' in subprocess.run(
            argv("clusterd status --json"), cwd=tmp_path, env=env, text=True, capture_output=True).stdout.replace(
            " ", ""), timeout=30, message="the README's service running")
        for command in rest:
            if command.startswith("clusterd worker "):
                agent = started(command, tmp_path, env, tmp_path / "agent.log")
                wait_for(lambda: _agent_joined(tmp_path, env), timeout=30, message="the agent's worker joined")
                continue
            out = run_cmd(command, tmp_path, env)
            if command == "clusterd call fib 20":
                assert out.stdout.strip() == "6765"
            if command == "clusterd stop":
                assert master.wait(30) == 0
        assert (tmp_path / "keys").is_dir()
    finally:
        for proc in (agent, master):
            if proc is not None:
                stop_group(proc)


def _agent_joined(cwd: Path, env: dict) -> bool:
    import json
    doc = json.loads(run_cmd("clusterd status --json", cwd, env).stdout)
    return any(w.get("agent") and w["state"] == "ready" for w in doc["workers"])


def test_try_it_commands_run_as_printed(tmp_path):
    env = instance_env(tmp_path / "rt")
    (tmp_path / "rt").mkdir(mode=0o700)
    master = started("clusterd run examples.primes:Master examples.primes:Worker --workers 2", ROOT, env,
                     tmp_path / "run.log")
    try:
        wait_for(lambda: master.poll() is None and run_cmd("clusterd health", ROOT, env), timeout=30,
                 message="examples.primes running")
        for command in try_it_commands():
            run_cmd(command, ROOT, env)
        assert master.wait(30) == 0
    finally:
        stop_group(master)
