"""`clusterd worker WORKER --connect tcp://MASTER:PORT`: a worker agent on another host.

The agent joins the master and runs the processes of the slots the master gives it: it starts them
(forked from a zygote, like local workers), passes signals on, and reports every exit at once. The
master applies the same policy to them as to its own workers (restart, backoff, heartbeats, recycling,
rolling reload); the workers connect to the master themselves. When the master goes away the workers
follow (their heartbeat), and the agent says hello again until a master answers: ZeroMQ reconnects.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import time

import psutil
import zmq

from .. import __version__, protocol, wire
from ..ops import log
from ..ops.reaper import ChildReaper
from ..ops.systemd import child_environ
from ..settings import AgentConfig, heartbeat_interval
from ..wire import WorkerSpec
from ..zmqloop import SocketReader
from .spawn import DirectSpawner, ZygoteSpawner


class Agent:
    def __init__(self, worker_path: str, connect: str, workers: int, curve_dir: str | None,
                 heartbeat_timeout: float, graceful_timeout: float, name: str) -> None:
        self.worker_path = worker_path
        self.connect = connect
        self.workers = workers
        self.curve_dir = os.path.abspath(curve_dir) if curve_dir else None
        self.heartbeat_timeout = heartbeat_timeout
        self.interval = heartbeat_interval(heartbeat_timeout)
        self.graceful_timeout = graceful_timeout
        self.name = name
        self.host = socket.gethostname()
        self.loop = asyncio.get_running_loop()
        self.children: dict[str, object] = {}
        self.welcomed = False
        self.last_answer = time.monotonic()
        self.stopping = asyncio.Event()
        self.exit_code = 0
        self._all_gone = asyncio.Event()
        self._ps: dict[str, psutil.Process] = {}

    async def run(self) -> int:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, f"agent:{self.host}:{os.getpid()}".encode())
        self.sock.setsockopt(zmq.LINGER, 1000)
        if self.curve_dir:
            from ..curve import client_configurer
            client_configurer({"dir": self.curve_dir})(self.sock)
        self.sock.connect(self.connect)
        self.reader = SocketReader(self.loop, self.sock, self._on_message)
        env = child_environ()
        if os.environ.get("CLUSTERD_NO_ZYGOTE"):
            self.spawner = DirectSpawner(self.loop, self._on_line, self._on_exit)
        else:
            self.spawner = ZygoteSpawner(self.loop, self._on_line, self._on_exit, self.worker_path,
                                         f"clusterd-worker:{self.name}", env)
        self.env = env
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stopping.set)
        reaper = ChildReaper(self.loop, self.spawner.owned_pids).install()  # PID 1 of an agent pod
        log.event("agent-start", f"agent for {self.worker_path} connecting to {self.connect} "
                  f"({self.workers} workers)")
        beat = self.loop.create_task(self._beat())
        await self.stopping.wait()
        beat.cancel()
        await self._leave()
        self.reader.close()
        self.sock.close(linger=500)
        self.spawner.close()
        reaper.close()
        self.ctx.term()
        log.event("agent-exit", "agent stopped")
        return self.exit_code

    # -- talking to the master
    def _send(self, msg: dict) -> None:
        try:
            self.sock.send_multipart([wire.AGENT, protocol.dumps(msg)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        self.reader.wake()

    async def _beat(self) -> None:
        while True:
            if not self.welcomed:
                self._send({"hello": {"host": self.host, "pid": os.getpid(), "workers": self.workers,
                                      "link": wire.LINK_VERSION, "version": __version__}})
            else:
                self._send({"beat": {"rss": self._rss()}})
            await asyncio.sleep(self.interval)
            if self.welcomed and time.monotonic() - self.last_answer > self.heartbeat_timeout:
                log.event("master-lost", "the master stopped answering: waiting for it to come back",
                          level=logging.WARNING)
                self.welcomed = False

    def _rss(self) -> dict[str, int]:
        out = {}
        for ident, handle in self.children.items():
            pid = getattr(handle, "pid", None)
            if pid is None:
                continue
            try:
                ps = self._ps.get(ident) or self._ps.setdefault(ident, psutil.Process(pid))
                out[ident] = ps.memory_info().rss
            except psutil.Error:
                pass
        return out

    def _on_message(self, frames: list[bytes]) -> None:
        if len(frames) < 2 or frames[0] != wire.AGENT:
            return
        try:
            msg = json.loads(frames[1])
        except ValueError:
            return
        self.last_answer = time.monotonic()
        if "welcome" in msg:
            # a new session with a master: workers from an earlier one belong to nobody now
            for handle in list(self.children.values()):
                handle.kill()
            self.welcomed = True
            log.event("agent-welcome", f"joined the master: slots {msg['welcome'].get('slots')}")
        elif msg.get("unknown"):
            self.welcomed = False
        elif "refused" in msg:
            refused = msg["refused"] if isinstance(msg["refused"], dict) else {}
            log.event("agent-refused", f"the master at {self.connect} refused this agent: it speaks link version "
                      f"{refused.get('link')} (clusterd {refused.get('version')}), this agent {wire.LINK_VERSION} "
                      f"(clusterd {__version__}): install the same clusterd version on both", level=logging.ERROR)
            self.exit_code = 1
            self.stopping.set()
        elif "spawn" in msg:
            self._spawn(msg["spawn"])
        elif "signal" in msg:
            handle = self.children.get(msg["signal"])
            if handle is not None:
                handle.send_signal(int(msg.get("sig", signal.SIGTERM)))

    def _spawn(self, data: dict) -> None:
        if self.stopping.is_set():
            return
        spec = WorkerSpec.from_dict(data, endpoint=self.connect, parent_pid=os.getpid(), host=self.host,
                                    curve={"dir": self.curve_dir} if self.curve_dir else None)
        env = spec.to_env(dict(self.env, PYTHONUNBUFFERED="1"))
        ident = spec.ident
        handle = self.spawner.spawn(ident, env, f"clusterd-worker:{self.name}:{spec.slot}", spec.generation)
        self.children[ident] = handle
        # a reload brought newer code: zygotes older than the one before it are no longer needed
        self.spawner.retire_generation(spec.generation - 1)

    def _on_line(self, ident: str, line: bytes) -> None:
        handle = self.children.get(ident)
        pid = getattr(handle, "pid", None)
        parts = ident.split(".")  # token.slot.generation.serial (master/launch.py)
        slot = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
        log.worker_line(line, slot, pid, f"worker {slot} pid {pid}")

    def _on_exit(self, ident: str, returncode: int | None) -> None:
        self.children.pop(ident, None)
        self._ps.pop(ident, None)
        self._send({"exited": ident, "status": returncode})
        if not self.children:
            self._all_gone.set()

    async def _leave(self) -> None:
        """Graceful stop: the master retires our workers (they finish their calls), then we exit."""
        if self.children:
            self._send({"leaving": True})
            self._all_gone.clear()
            try:
                await asyncio.wait_for(self._all_gone.wait(), self.graceful_timeout + 5)
            except TimeoutError:
                for handle in list(self.children.values()):
                    handle.kill()
                try:
                    await asyncio.wait_for(self._all_gone.wait(), 5)
                except TimeoutError:
                    pass


def run(cfg: AgentConfig) -> int:
    """Run an agent until SIGTERM/SIGINT; its options come from `clusterd worker` (settings.AGENT)."""
    async def main() -> int:
        agent = Agent(cfg.worker, cfg.connect, cfg.workers, cfg.curve_dir, cfg.heartbeat_timeout,
                      cfg.graceful_timeout, cfg.name)
        return await agent.run()
    return asyncio.run(main())
