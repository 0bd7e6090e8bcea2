"""Starting worker processes and noticing their end, on events (pidfd, a pipe), never by polling.

Two ways to start one: a fresh interpreter (`DirectSpawner`), or a fork of the generation's zygote
(`ZygoteSpawner`, see zygote.py), which makes a replacement ready in milliseconds. Either way the
supervisor gets a handle with `pid`, `returncode`, `send_signal()` and `kill()`, every line the worker
prints, and one call when it has exited.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import signal
import socket
import subprocess
import sys
from typing import Any

from ..ops.reaper import stop_if_adopted
from .handles import (
    WORKER_ENTRY,
    ZYGOTE_ENTRY,
    OnExit,
    OnLine,
    OutputPipe,
    PassFds,
    ProcessHandle,
    Spawner,
    no_fds,
    popen_shielded,
)


class DirectSpawner:
    """A fresh interpreter per worker; its exit is seen through a pidfd.

    ``pass_fds`` gives the descriptors every worker inherits (the HTTP door's listening sockets)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_line: OnLine, on_exit: OnExit,
                 popen_kwargs: dict | None = None, pass_fds: PassFds = no_fds) -> None:
        self.loop = loop
        self.on_line = on_line
        self.on_exit = on_exit
        self.popen_kwargs = popen_kwargs or {}  # user/group with --user (privileges.py)
        self.pass_fds = pass_fds
        self.owned: set[int] = set()

    def spawn(self, worker: object, env: dict, label: str, generation: int = 0,
              link: socket.socket | None = None) -> ProcessHandle:
        try:
            proc = popen_shielded([sys.executable, "-c", WORKER_ENTRY, label], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, close_fds=True,
                                   pass_fds=(*self.pass_fds(), *([link.fileno()] if link is not None else [])),
                                   **self.popen_kwargs)
        finally:
            if link is not None:
                link.close()  # the worker has its own copy now
        handle = ProcessHandle()
        handle._known(proc.pid)
        self.owned.add(proc.pid)
        out = OutputPipe(self.loop, os.dup(proc.stdout.fileno()), worker, self.on_line)
        proc.stdout.close()

        def exited() -> None:
            if pidfd is not None:
                self.loop.remove_reader(pidfd)
                os.close(pidfd)
            handle.returncode = proc.wait()
            self.owned.discard(proc.pid)
            out.read()
            out.close()
            self.on_exit(worker, handle.returncode)

        try:
            pidfd = os.pidfd_open(proc.pid)
            self.loop.add_reader(pidfd, exited)
        except (AttributeError, OSError):  # no pidfd (old kernel): a thread waits instead
            pidfd = None
            self.loop.run_in_executor(None, proc.wait).add_done_callback(lambda _f: exited())
        return handle

    def retire_generation(self, generation: int) -> None:
        pass

    def reset(self, generation: int) -> None:
        pass

    def alive(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def owned_pids(self) -> set[int]:
        return self.owned


class ZygoteState(enum.StrEnum):
    """STARTING -> READY | FAILED; READY or STARTING -> RETIRED (exits once its last worker has)."""

    STARTING = "starting"   # importing the worker's code; spawns asked for meanwhile are queued
    READY = "ready"         # forks workers on request
    FAILED = "failed"       # could not import the code, or died: spawns go to fresh interpreters
    RETIRED = "retired"     # its generation is no longer wanted


class _Zygote:
    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.sock: socket.socket | None = None
        self.proc: subprocess.Popen | None = None
        self.state = ZygoteState.STARTING
        self.queue: list[tuple] = []       # spawns asked for before it was ready
        self.waiting: dict[int, tuple] = {}  # spawn id -> (handle, worker, pipe)
        self.children: dict[int, tuple] = {}  # pid -> (handle, worker, pipe)
        self.buf = b""


class ZygoteSpawner:
    """Forks workers from a per-generation zygote; falls back to fresh interpreters if it fails."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_line: OnLine, on_exit: OnExit, worker_path: str,
                 label: str, env: dict, popen_kwargs: dict | None = None, pass_fds: PassFds = no_fds) -> None:
        self.loop = loop
        self.on_line = on_line
        self.on_exit = on_exit
        self.worker_path = worker_path
        self.label = label
        self.env = env
        self.pass_fds = pass_fds
        self.direct = DirectSpawner(loop, on_line, on_exit, popen_kwargs, pass_fds)
        self.zygotes: dict[int, _Zygote] = {}
        self._ids = 0
        self._zygote_pids: set[int] = set()   # started and not yet waited for

    def spawn(self, worker: object, env: dict, label: str, generation: int = 0,
              link: socket.socket | None = None) -> ProcessHandle:
        z = self.zygotes.get(generation)
        if z is None:
            z = self._start(generation)
        if z.state is ZygoteState.FAILED:
            return self.direct.spawn(worker, env, label, generation, link)
        handle = ProcessHandle()
        self._ids += 1
        request = (self._ids, handle, worker, env, label, link)
        if z.state is ZygoteState.READY:
            self._request(z, *request)
        else:
            z.queue.append(request)
        return handle

    def _start(self, generation: int) -> _Zygote:
        z = _Zygote(generation)
        self.zygotes[generation] = z
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            z.proc = popen_shielded([sys.executable, "-c", ZYGOTE_ENTRY, f"{self.label}:zygote", self.worker_path,
                                       str(theirs.fileno()), str(generation)],
                                      stdin=subprocess.DEVNULL, env=self.env, close_fds=True,
                                      pass_fds=(theirs.fileno(), *self.pass_fds()), **self.direct.popen_kwargs)
        except OSError:
            z.state = ZygoteState.FAILED
            ours.close()
            theirs.close()
            return z
        theirs.close()
        self._zygote_pids.add(z.proc.pid)
        ours.setblocking(False)
        z.sock = ours
        self.loop.add_reader(ours.fileno(), self._on_message, z)
        return z

    def _request(self, z: _Zygote, sid: int, handle: ProcessHandle, worker: object, env: dict, label: str,
                 link: socket.socket | None = None) -> None:
        r, w = os.pipe()
        pipe = OutputPipe(self.loop, r, worker, self.on_line)
        z.waiting[sid] = (handle, worker, pipe)
        data = json.dumps({"spawn": sid, "env": env}).encode() + b"\n"
        try:
            z.sock.setblocking(True)
            socket.send_fds(z.sock, [data], [w] if link is None else [w, link.fileno()])
        except OSError:
            pass  # the zygote died: its EOF moves the spawn to a fresh interpreter
        finally:
            z.sock.setblocking(False)
            os.close(w)
            if link is not None:
                link.close()

    def _on_message(self, z: _Zygote) -> None:
        try:
            data = z.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._zygote_gone(z)
            return
        z.buf += data
        while b"\n" in z.buf:
            line, z.buf = z.buf.split(b"\n", 1)
            msg = json.loads(line)
            if "spawned" in msg:
                entry = z.waiting.pop(msg["spawned"], None)
                if entry is not None:
                    z.children[msg["pid"]] = entry
                    entry[0]._known(msg["pid"])
            elif "exited" in msg:
                entry = z.children.pop(msg["exited"], None)
                if entry is not None:
                    handle, worker, pipe = entry
                    handle.returncode = msg["status"]
                    pipe.read()
                    pipe.close()
                    self.on_exit(worker, handle.returncode)
            elif msg.get("ready"):
                z.state = ZygoteState.READY
                queue, z.queue = z.queue, []
                for request in queue:
                    self._request(z, *request)
            elif "error" in msg:
                z.state = ZygoteState.FAILED

    def _zygote_gone(self, z: _Zygote) -> None:
        """The zygote exited: its children die with it (parent-death signal); spawns go direct.

        Its orphans come to this process (a subreaper, or PID 1): one still running is a stray
        worker whose slot is about to be refilled, so it is killed here; ops/reaper.py reaps it."""
        self.loop.remove_reader(z.sock.fileno())
        z.sock.close()
        if z.proc is not None:
            z.proc.wait()  # once it is a zombie, its children have been handed to their new parent
            self._zygote_pids.discard(z.proc.pid)
            for pid in z.children:
                stop_if_adopted(pid)
        if z.state is not ZygoteState.RETIRED:
            z.state = ZygoteState.FAILED
        for handle, worker, pipe in list(z.children.values()) + list(z.waiting.values()):
            handle.returncode = handle.returncode if handle.returncode is not None else -signal.SIGKILL
            pipe.close()
            self.on_exit(worker, handle.returncode)
        z.children.clear()
        z.waiting.clear()
        queue, z.queue = z.queue, []
        for _sid, handle, worker, env, label, link in queue:
            real = self.direct.spawn(worker, env, label, z.generation, link)
            _adopt(handle, real)
        if self.zygotes.get(z.generation) is z and z.state is ZygoteState.RETIRED:
            self.zygotes.pop(z.generation, None)

    def retire_generation(self, generation: int) -> None:
        """Older code is no longer wanted: its zygote exits once its last worker has."""
        for gen in [g for g in self.zygotes if g < generation]:
            self._retire(self.zygotes.pop(gen))

    def reset(self, generation: int) -> None:
        """The next spawn of this generation imports the code on disk now (a reload starts)."""
        z = self.zygotes.pop(generation, None)
        if z is not None:
            self._retire(z)

    def _retire(self, z: _Zygote) -> None:
        if z.sock is not None and z.state in (ZygoteState.READY, ZygoteState.STARTING):
            z.state = ZygoteState.RETIRED
            try:
                z.sock.send(b'{"retire": true}\n')
            except OSError:
                pass

    def alive(self) -> bool:
        return False

    def owned_pids(self) -> set[int]:
        return self._zygote_pids | self.direct.owned

    def close(self) -> None:
        for z in self.zygotes.values():
            if z.proc is not None and z.proc.poll() is None:
                z.proc.kill()


def _adopt(handle: ProcessHandle, real: ProcessHandle) -> None:
    """A queued zygote spawn that went direct: the handle follows the real process."""
    handle._known(real.pid)


def make_spawner(loop: asyncio.AbstractEventLoop, config: Any, context: Any, env: dict, on_line: OnLine,
                 on_exit: OnExit, popen_kwargs: dict | None = None, pass_fds: PassFds = no_fds) -> Spawner:
    """Fork from a zygote (fast restarts) unless CLUSTERD_NO_ZYGOTE is set; fresh interpreters then.
    With --isolation thread, threads of this process (threads.py) on the master's ZeroMQ context."""
    if config.isolation == "thread":
        from .threads import ThreadSpawner
        return ThreadSpawner(loop, on_line, on_exit, context, config)
    if os.environ.get("CLUSTERD_NO_ZYGOTE"):
        return DirectSpawner(loop, on_line, on_exit, popen_kwargs, pass_fds)
    return ZygoteSpawner(loop, on_line, on_exit, config.worker, f"clusterd-worker:{config.name}", env, popen_kwargs,
                         pass_fds)
