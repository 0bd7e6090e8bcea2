"""The master's side of worker agents on other hosts (`clusterd worker --connect ...`).

An agent registers with the master and asks for N workers; the master gives it slots (unique across
the cluster) and then runs those slots exactly like local ones — restart with backoff, heartbeats,
recycling, rolling reload — asking the agent to start or signal the processes. The workers connect to
the master themselves. Agent messages travel on the remote workers socket as [wire.AGENT, json]:

    agent -> master   {"hello": {"host", "pid", "workers",      register (again, after a master restart)
                               "link", "version"}}

                      {"beat": {"rss": {ident: bytes}}}        alive, with its workers' memory
                      {"exited": ident, "status": rc}           one of its workers ended
                      {"leaving": true}                         graceful stop: retire my workers
    master -> agent   {"welcome": {"slots": [...]}}             {"unknown": true}  (please say hello)
                      {"spawn": spec}                           {"signal": ident, "sig": n}
                      {"ack": true}                             (answer to a beat)
                      {"refused": {"link", "version"}}          another link version (wire.LINK_VERSION)
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from .. import __version__, protocol, wire
from ..ops import log
from ..settings import Config
from ..wire import WorkerSpec
from .pool import Worker
from .states import ClusterState, ExitReason
from .view import MasterView


def configure_remote_socket(sock: zmq.Socket, ctx: zmq.Context, cfg: Config) -> Any:
    """The ROUTER that agents and their workers connect to: a CURVE server when keys are given, bound
    to the --worker-bind addresses. Returns the CURVE authenticator to stop at exit (or None)."""
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    authenticator = None
    if cfg.curve_dir:
        from ..curve import configure_server, server_keys, start_authenticator
        keys = server_keys(cfg.curve_dir)
        authenticator = start_authenticator(ctx, keys)
        configure_server(sock, keys)
    for addr in cfg.worker_binds:
        sock.bind(addr)
    return authenticator


class RemoteHandle:
    """A worker process run by an agent (a WorkerHandle): signals travel to the agent."""

    isolation = "process"

    def __init__(self, registry: "AgentRegistry", agent: "Agent", worker: Worker) -> None:
        self.registry = registry
        self.agent = agent
        self.worker = worker
        self.pid: int | None = None
        self.returncode: int | None = None

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            self.registry.signal(self.agent, self.worker, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def measure(self) -> None:
        return None  # its agent reports the memory with its beats


@dataclass(eq=False)
class Agent:
    ident: bytes
    host: str
    pid: int | None
    wanted: int
    last_beat: float = field(default_factory=time.monotonic)
    slots: list[int] = field(default_factory=list)
    gone: bool = False

    @property
    def name(self) -> str:
        return f"{self.host}:{self.pid}"


class AgentRegistry:
    def __init__(self, router: MasterView) -> None:
        self.router = router
        self.agents: dict[bytes, Agent] = {}
        self._refused: set[bytes] = set()   # agents told that they speak another link version
        self._tick_handle: asyncio.TimerHandle | None = None
        self._schedule_tick()

    def _schedule_tick(self) -> None:
        self._tick_handle = self.router.loop.call_later(self.router.config.heartbeat_interval, self._tick)

    def _tick(self) -> None:
        try:
            self.tick(time.monotonic(), self.router.config.heartbeat_timeout)
        except Exception:  # a bug here must not end the checks
            log.logger.exception("the agents' check failed")
        self._schedule_tick()

    def close(self) -> None:
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None

    # -- messages
    def on_message(self, ident: bytes, msg: dict) -> None:
        agent = self.agents.get(ident)
        if "hello" in msg:
            self._hello(ident, msg["hello"] if isinstance(msg["hello"], dict) else {})
            return
        if agent is None or agent.gone:
            self._send(ident, {"unknown": True})
            return
        agent.last_beat = time.monotonic()
        sup = self.router.supervisor
        if "beat" in msg:
            rss = (msg["beat"] or {}).get("rss") or {}
            for wid, value in rss.items():
                worker = sup.by_ident.get(wid.encode())
                if worker is not None and isinstance(value, int):
                    worker.rss_bytes = value
            self._send(ident, {"ack": True})
        elif "exited" in msg:
            worker = sup.by_ident.get(str(msg["exited"]).encode())
            if worker is not None:
                status = msg.get("status")
                worker.process.returncode = status if isinstance(status, int) else None
                sup.worker_exited(worker, worker.process.returncode)
        elif msg.get("leaving"):
            log.event("agent-leaving", f"agent {agent.name} is stopping: its workers finish their calls")
            for index in list(agent.slots):
                sup.retire_slot(index, ExitReason.STOP)

    def _hello(self, ident: bytes, info: dict) -> None:
        link = info.get("link", 1)  # an agent from before the check speaks version 1
        if link != wire.LINK_VERSION:
            if ident not in self._refused:  # it says hello again every beat: told once
                self._refused.add(ident)
                log.event("agent-refused", f"agent {info.get('host') or '?'} (clusterd {info.get('version') or '?'}) "
                          f"speaks link version {link}, this master (clusterd {__version__}) {wire.LINK_VERSION}: "
                          "it is not admitted; install the same clusterd version on both", level=logging.WARNING)
            self._send(ident, {"refused": {"link": wire.LINK_VERSION, "version": __version__}})
            return
        old = self.agents.get(ident)
        if old is not None and not old.gone:
            self._drop(old, "re-registered")
        sup = self.router.supervisor
        if self.router.state is ClusterState.STOPPING:
            return
        try:
            wanted = max(0, int(info.get("workers", 1)))
        except (TypeError, ValueError):
            wanted = 1
        agent = Agent(ident, str(info.get("host") or "?"), info.get("pid"), wanted)
        self.agents[ident] = agent
        agent.slots = sup.add_remote_slots(agent.name, wanted)
        # the welcome goes first: an agent kills the workers of an earlier session when welcomed
        self._send(ident, {"welcome": {"slots": agent.slots, "generation": sup.generation}})
        log.event("agent-join", f"agent {agent.name} joined with {log.plural(wanted, 'worker')} (slots {agent.slots})")
        sup.start_slots(agent.slots)

    # -- what the supervisor asks
    def spawn(self, agent_name: str, worker: Worker, spec: WorkerSpec) -> RemoteHandle:
        agent = self._by_name(agent_name)
        handle = RemoteHandle(self, agent, worker)
        worker.agent = agent_name
        worker.host = agent.host if agent else None
        if agent is None or agent.gone:
            self.router.loop.call_soon(self.router.supervisor.worker_exited, worker, None)
            return handle
        self._send(agent.ident, {"spawn": spec.for_agent()})
        return handle

    def signal(self, agent: Agent, worker: Worker, sig: int) -> None:
        if agent.gone:
            self.router.supervisor.worker_exited(worker, -sig)
            return
        self._send(agent.ident, {"signal": worker.ident.decode(), "sig": int(sig)})

    def tick(self, now: float, timeout: float) -> None:
        """An agent silent for the heartbeat timeout is gone, and so are its workers."""
        for agent in list(self.agents.values()):
            if not agent.gone and now - agent.last_beat > timeout:
                self._drop(agent, "stopped answering")

    def _drop(self, agent: Agent, why: str) -> None:
        agent.gone = True
        self.agents.pop(agent.ident, None)
        sup = self.router.supervisor
        log.event("agent-lost", f"agent {agent.name} {why}: its {len(agent.slots)} slots leave the pool",
                  level=logging.WARNING)
        sup.drop_slots(agent.slots)  # nobody is left to stop its workers: they are gone now

    def _by_name(self, name: str) -> Agent | None:
        for agent in self.agents.values():
            if agent.name == name:
                return agent
        return None

    def _send(self, ident: bytes, msg: dict) -> None:
        self.router.to_worker([ident, wire.AGENT, protocol.dumps(msg)], self.router.rsock)

    def document(self) -> list[dict]:
        return [{"agent": a.name, "host": a.host, "pid": a.pid, "slots": a.slots,
                 "last_beat_s": round(time.monotonic() - a.last_beat, 3)} for a in self.agents.values()]
