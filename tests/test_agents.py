"""More than one machine (issue 7): worker agents joining a master over CURVE, on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, Rpc, free_port, wait_for

BASIC = ("tests.apps.basic:Master", "tests.apps.basic:Worker")


class Agent:
    def __init__(self, env: dict, connect: str, keys: Path | None, workers: int = 2, name: str = "t") -> None:
        args = [sys.executable, "-m", "clusterd", "worker", "tests.apps.basic:Worker", "--connect", connect,
                "--workers", str(workers), "--heartbeat-timeout", "2", "--name", name]
        if keys is not None:
            args += ["--curve-dir", str(keys)]
        self.log = open(Path(env["CLUSTERD_RUNTIME_DIR"]) / f"agent-{os.getpid()}-{id(self)}.log", "wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.log.close()


@pytest.fixture
def agents(cluster_env):
    started: list[Agent] = []

    def make(connect: str, keys: Path | None, workers: int = 2, env: dict | None = None) -> Agent:
        a = Agent({**cluster_env, **(env or {})}, connect, keys, workers)
        started.append(a)
        return a

    yield make
    for a in started:
        a.kill()


@pytest.fixture
def keys(tmp_path) -> Path:
    r = subprocess.run([sys.executable, "-m", "clusterd", "keygen", str(tmp_path / "keys")], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return tmp_path / "keys"


def remote_workers(inst) -> list[dict]:
    return [w for w in inst.status()["workers"] if w["agent"] and w["state"] == "ready"]


def test_agents_join_and_calls_reach_every_worker(cluster, agents, keys):
    port = free_port()
    addr = f"tcp://127.0.0.1:{port}"
    inst = cluster(*BASIC, "--workers", "1", "--worker-bind", addr, "--curve-dir", str(keys),
                   "--heartbeat-timeout", "2")
    a1 = agents(addr, keys, 2)
    a2 = agents(addr, keys, 1)
    wait_for(lambda: len(remote_workers(inst)) == 3, timeout=20, message="3 remote workers")
    agent_log = Path(a2.log.name).read_text()
    assert "[agent]" in agent_log and "[master]" not in agent_log, agent_log  # an agent's own lines
    doc = inst.status()
    slots = [w["slot"] for w in doc["workers"]]
    assert len(slots) == len(set(slots)) == 4  # unique across the cluster
    local = [w for w in doc["workers"] if w["agent"] is None]
    assert len(local) == 1 and local[0]["host"] is None
    assert {w["agent"] for w in remote_workers(inst)} == {f"{os.uname().nodename}:{a1.proc.pid}",
                                                          f"{os.uname().nodename}:{a2.proc.pid}"}
    # broadcast reaches all of them, and balanced calls spread over all of them
    c = inst.client()
    pids = c.result("broadcast_pids")
    assert sorted(pids.values()) == sorted(w["pid"] for w in doc["workers"])
    seen: set[int] = set()
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(Rpc(inst.control).call("sleep", 0.3)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    seen = {r["result"] for r in results}
    assert len(seen) == 4

    # a killed remote worker is replaced by its agent, in its slot
    victim = remote_workers(inst)[0]
    os.kill(victim["pid"], signal.SIGKILL)
    wait_for(lambda: any(w["slot"] == victim["slot"] and w["pid"] != victim["pid"] and w["state"] == "ready"
                         for w in inst.status()["workers"]), timeout=10, message="remote worker replaced")

    # a rolling reload reaches the remote workers too
    r = inst.cli("reload", "--name", inst.name)
    assert r.returncode == 0, r.stderr
    assert {w["generation"] for w in inst.status()["workers"]} == {2}

    # a SIGKILLed agent: its workers leave the pool, calls keep succeeding
    a1_workers = [w["pid"] for w in remote_workers(inst) if w["agent"].endswith(f":{a1.proc.pid}")]
    a1.kill()
    wait_for(lambda: not any(w["agent"] and w["agent"].endswith(f":{a1.proc.pid}")
                             for w in inst.status()["workers"]), timeout=10, message="agent's workers gone")
    wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                             for p in a1_workers), timeout=10)
    for _ in range(20):
        assert "result" in c.call("add", 1, 2)


def test_peer_with_foreign_keys_never_joins(cluster, agents, keys, tmp_path):
    other = tmp_path / "other"
    subprocess.run([sys.executable, "-m", "clusterd", "keygen", str(other)], check=True, capture_output=True)
    # the intruder has the right master public key but its own worker key
    (other / "master.key").write_bytes((keys / "master.key").read_bytes())
    port = free_port()
    addr = f"tcp://127.0.0.1:{port}"
    inst = cluster(*BASIC, "--workers", "1", "--worker-bind", addr, "--curve-dir", str(keys))
    agents(addr, other, 1)
    good = agents(addr, keys, 1)
    wait_for(lambda: len(remote_workers(inst)) == 1, timeout=20)
    assert remote_workers(inst)[0]["agent"].endswith(f":{good.proc.pid}")
    # give the intruder every chance: it still is not there
    wait_for(lambda: inst.status()["master"]["uptime_s"] > 3, timeout=10)
    assert len(remote_workers(inst)) == 1
    assert len(inst.status().get("agents", [])) == 1


def test_agents_survive_a_master_restart(cluster, agents, keys):
    port = free_port()
    addr = f"tcp://127.0.0.1:{port}"
    opts = ("--workers", "1", "--worker-bind", addr, "--curve-dir", str(keys), "--heartbeat-timeout", "2")
    inst = cluster(*BASIC, *opts)
    a = agents(addr, keys, 2)
    wait_for(lambda: len(remote_workers(inst)) == 2, timeout=20)
    inst.proc.kill()
    inst.proc.wait(5)
    again = cluster(*BASIC, *opts)
    wait_for(lambda: len(remote_workers(again)) == 2, timeout=30, message="agent rejoined the new master")
    assert a.proc.poll() is None
    assert again.client().result("peers")


def test_non_loopback_worker_bind_without_keys_is_refused(cluster):
    inst = cluster(*BASIC, "--worker-bind", "tcp://0.0.0.0:7100", start=False)
    inst.start(wait=False)
    assert inst.wait_exit(20) == 2
    assert "--curve-dir" in inst.stderr()


def test_an_agent_of_another_link_version_is_refused_with_a_message(cluster):
    """An agent whose hello names another link version is not admitted: the master says why (once) and
    tells the agent, instead of letting it join and then hang on frames it cannot read."""
    import zmq

    from clusterd import protocol, wire
    port = free_port()
    addr = f"tcp://127.0.0.1:{port}"
    inst = cluster(*BASIC, "--workers", "1", "--worker-bind", addr)
    ctx = zmq.Context.instance()
    peer = ctx.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.connect(addr)
    try:
        hello = {"hello": {"host": "old-host", "pid": 1, "workers": 1, "link": wire.LINK_VERSION + 1,
                           "version": "9.9"}}
        for _ in range(3):  # it says hello again each beat
            peer.send_multipart([wire.AGENT, protocol.dumps(hello)])
            assert peer.poll(10000), "no answer to the hello"
            kind, body = peer.recv_multipart()
            assert kind == wire.AGENT
            assert protocol.loads(body) == {"refused": {"link": wire.LINK_VERSION, "version": clusterd_version()}}
        assert not remote_workers(inst) and len(inst.status()["workers"]) == 1
        wait_for(lambda: "speaks link version" in inst.stderr(), 10, message="the refusal logged")
        assert inst.stderr().count("speaks link version") == 1
    finally:
        peer.close(linger=0)


def test_a_refused_agent_exits_1_saying_why(cluster_env):
    """The agent's side: told `refused`, it stops with status 1 and one clear line."""
    import zmq

    from clusterd import protocol, wire
    port = free_port()
    ctx = zmq.Context.instance()
    master = ctx.socket(zmq.ROUTER)
    master.setsockopt(zmq.LINGER, 0)
    master.bind(f"tcp://127.0.0.1:{port}")
    agent = Agent(cluster_env, f"tcp://127.0.0.1:{port}", None, workers=1)
    try:
        assert master.poll(20000), "no hello from the agent"
        ident, kind, body = master.recv_multipart()
        assert kind == wire.AGENT and protocol.loads(body)["hello"]["link"] == wire.LINK_VERSION
        master.send_multipart([ident, wire.AGENT, protocol.dumps({"refused": {"link": 99, "version": "9.9"}})])
        assert agent.proc.wait(20) == 1
        agent.log.flush()
        out = Path(agent.log.name).read_text()
        assert "install the same clusterd version on both" in out and "Traceback" not in out
    finally:
        agent.kill()
        master.close(linger=0)


def clusterd_version() -> str:
    from clusterd import __version__
    return __version__
