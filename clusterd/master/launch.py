"""Starting one worker for a slot: its record, its WorkerSpec (what it is told through the wire),
and where it runs (a local spawner, or the agent that runs the slot on another host)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

from ..ops import log
from ..settings import Config
from ..wire import WorkerSpec
from ..worker.handles import OnExit, OnLine, Spawner
from .host import SupervisorHost
from .pool import Worker


class Launcher:
    def __init__(self, config: Config, host: SupervisorHost, make_spawner: Callable[[OnLine, OnExit], Spawner],
                 on_exit: Callable[[Worker, int | None], None],
                 on_boot_failure: Callable[[bytes, dict], None] | None = None) -> None:
        self.config = config
        self.host = host
        self._exited = on_exit
        self._boot_failure = on_boot_failure
        self._serial = 0
        self.spawner = make_spawner(self._on_line, self._on_exit)

    def start(self, index: int, generation: int, agent: str | None = None) -> Worker:
        self.host.keep_runtime_dir()  # a new worker must find our socket, not another instance's
        self._serial += 1
        # the master's token first: a worker of another master is refused, and an agent's report about a
        # worker of an earlier master never names a new one
        ident = f"{self.host.token}.{index}.{generation}.{self._serial}".encode()
        worker = Worker(slot=index, generation=generation, ident=ident)
        cfg = self.config
        if cfg.max_requests:
            worker.max_requests = cfg.max_requests + random.randint(0, cfg.max_requests_jitter)
        spec = WorkerSpec(worker=cfg.worker, endpoint=self.host.worker_endpoint, ident=ident.decode(), slot=index,
                          generation=generation, name=cfg.name, heartbeat_interval=cfg.heartbeat_interval,
                          heartbeat_timeout=max(cfg.heartbeat_timeout, 2.0), debug=cfg.debug,
                          parent_pid=os.getpid(), master_pid=os.getpid(), log_calls=cfg.log_calls,
                          max_message_size=cfg.max_message_size, max_batch=cfg.max_batch,
                          call_timeout=cfg.call_timeout, graceful_timeout=cfg.graceful_timeout,
                          max_requests=worker.max_requests)
        if agent is None and cfg.http_binds:
            # the HTTP/WebSocket door: the listening sockets are inherited (front.py); not across hosts
            spec.http_fds = self.host.http_fds()
            spec.http_token_file, spec.http_cors, spec.http_status = (cfg.http_token_file, cfg.http_cors,
                                                                      cfg.http_status)
            spec.dashboard = cfg.dashboard
        if agent is not None:
            # a slot of an agent on another host: the agent starts the process, on the code it has
            worker.process = self.host.start_remote(agent, worker, spec)
        else:
            link = self.host.open_link(worker)  # the worker's end of its link; the spawner passes and closes it
            if link is not None:
                spec.link_fd = link.fileno()  # the number it has in a fresh interpreter (a zygote renumbers it)
            env = spec.to_env(self.host.child_environ())
            env["PYTHONUNBUFFERED"] = "1"
            worker.process = self.spawner.spawn(worker, env, f"clusterd-worker:{cfg.name}:{index}", generation,
                                                link=link)
        worker.pid = worker.process.pid
        log.event("worker-start", f"{worker.label()} starting", slot=index, pid=worker.pid, generation=generation)
        return worker

    def _on_line(self, worker: Worker, line: bytes) -> None:
        if worker.pid is None and worker.process is not None:
            worker.pid = worker.process.pid
        rec = log.parse_record(line)
        if rec is None:
            worker.output_tail.append(line.decode("utf-8", "replace").rstrip("\r"))
        elif isinstance(rec.get("boot_failure"), dict):
            # the pipe is read to its end before the exit is handled: the failure is known in time
            if self._boot_failure is not None:
                self._boot_failure(worker.ident, rec["boot_failure"])
            return
        elif log.worker_record(rec, worker.slot, worker.pid):
            return
        log.worker_line(line, worker.slot, worker.pid)

    def _on_exit(self, worker: Worker, returncode: int | None) -> None:
        if worker.pid is None and worker.process is not None:
            worker.pid = worker.process.pid
        self._exited(worker, returncode)


__all__ = ["Launcher"]
