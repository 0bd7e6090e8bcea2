"""`--isolation thread`: workers as threads of the master process (DESIGN.md 11).

A thread worker runs the same code as a worker process (`process._run`) on its own asyncio loop, and
speaks the same protocol to the master over `inproc://` (the master's workers socket binds an
inproc endpoint in the same ZeroMQ context). The supervisor gets the same small handle it gets for
a process, and is told of the thread's end from the thread itself (`call_soon_threadsafe`), never
by polling.

What supervision cannot do for a thread, and says so in the status:
- a hung thread cannot be killed: `kill()` asks its loop to stop; if it has not ended within
  KILL_GRACE_S the master abandons it (it gets no more calls, its slot gets a new thread) and lists
  it under `threads.abandoned` until it ends, if it ever does;
- `os._exit()` or a crash in C code in a worker takes the whole master down;
- CPU work does not run in parallel unless the interpreter is free-threaded, and holds up the
  master's own loop while it holds the GIL;
- memory is per process: `--max-memory` does not apply and `rss_bytes` is null;
- worker code is imported once per process: a reload starts new threads on the modules already
  imported, so new code needs a restart of the master.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from ..ops import log
from ..wire import WorkerSpec

THREAD_ENDPOINT = "inproc://clusterd-workers"
KILL_GRACE_S = 1.0

LIMITS = [
    "a hung thread cannot be killed: it is abandoned (no more calls) and its slot gets a new thread",
    "os._exit() or a crash in C code in a worker stops the whole master",
    "memory is shared with the master: --max-memory does not apply, rss_bytes is null",
    "worker code is imported once: a reload starts new threads on the code already loaded",
]


def gil_enabled() -> bool:
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


class ThreadWorker:
    """The master's handle on one worker thread: pid, returncode, send_signal(), kill()."""

    isolation = "thread"

    def __init__(self, spec: WorkerSpec, context: zmq.Context, on_end: Callable[[ThreadWorker], None],
                 on_kill: Callable[[ThreadWorker], None]) -> None:
        self.spec = spec
        self.context = context
        self.pid = os.getpid()
        self.returncode: int | None = None
        self.failure: dict | None = None       # set by worker._run when the worker cannot start
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task | None = None
        self.link: Any = None
        self.beat_stop = threading.Event()     # ends the thread's heartbeat thread
        self.killed = False
        self.abandoned_at: float | None = None
        self._on_end = on_end
        self._on_kill = on_kill
        self._cpu_clock: int | None = None
        self._cpu_last: tuple[float, float] | None = None
        self.thread = threading.Thread(target=self._main, daemon=True,
                                       name=f"clusterd-worker-{spec.ident}")

    def start(self) -> None:
        self.thread.start()

    def _main(self) -> None:
        from .process import _run
        from .user_frames import user_traceback
        try:
            code = asyncio.run(_run(self.spec, embedded=self))
        except SystemExit as exc:   # sys.exit() in user code ends this thread's loop, not the master
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException as exc:  # noqa: BLE001 - the loop died: the master restarts the thread
            code = -signal.SIGKILL if self.killed else 1
            if not self.killed:
                self.failure = self.failure or {"error": f"{type(exc).__name__}: {exc}",
                                                "traceback": user_traceback(exc)}
        self.beat_stop.set()
        self.returncode = code
        self._on_end(self)

    # -- the interface the supervisor uses for any worker
    def send_signal(self, sig: int) -> None:
        if sig == signal.SIGKILL:
            self.kill()
        elif sig in (signal.SIGTERM, signal.SIGINT):
            link = self.link
            if link is not None:
                self._in_loop(link.stop_requested.set)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Ask the thread's loop to stop now. A thread cannot be forced: see KILL_GRACE_S."""
        if self.returncode is not None or self.killed:
            return
        self.killed = True
        self._in_loop(self._cancel)
        self._on_kill(self)

    def _cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _in_loop(self, func: Callable[[], None]) -> None:
        loop = self.loop
        if loop is None:
            return  # not started yet: _run checks `killed` first thing
        try:
            loop.call_soon_threadsafe(func)
        except RuntimeError:
            pass  # its loop is closed: the thread is ending

    def alive(self) -> bool:
        return self.thread.is_alive()

    def measure(self) -> tuple[int | None, float | None]:
        """(rss_bytes, cpu_percent) of this thread: its own CPU clock; memory is the process's."""
        try:
            if self._cpu_clock is None:
                self._cpu_clock = time.pthread_getcpuclockid(self.thread.ident)
            cpu = time.clock_gettime(self._cpu_clock)
        except (AttributeError, OSError, TypeError):
            return None, None
        now = time.monotonic()
        last, self._cpu_last = self._cpu_last, (now, cpu)
        if last is None or now <= last[0]:
            return None, 0.0
        return None, round(100.0 * (cpu - last[1]) / (now - last[0]), 1)


class ThreadSpawner:
    """Starts workers as threads; the spawner interface of spawn.py."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_line, on_exit, context: zmq.Context,
                 config: Any = None) -> None:
        self.loop = loop
        self.on_line = on_line
        self.on_exit = on_exit
        self.context = context
        self.handles: dict[ThreadWorker, Any] = {}   # live threads -> their Worker records
        self.abandoned: list[tuple[ThreadWorker, Any]] = []
        from ..worker_log import install
        install(thread=True)
        if config is not None and config.max_memory:
            log.event("isolation", "--max-memory does not apply to thread workers: memory is the master's",
                      level=logging.WARNING)

    def spawn(self, worker: Any, env: dict, label: str, generation: int = 0, link: Any = None) -> ThreadWorker:
        spec = WorkerSpec.from_env(env)
        spec.endpoint = THREAD_ENDPOINT
        spec.curve = None  # inproc never leaves the process
        handle = ThreadWorker(spec, self.context, self._ended_in_thread, self._killed)
        self.handles[handle] = worker
        handle.start()
        return handle

    def _ended_in_thread(self, handle: ThreadWorker) -> None:
        try:
            self.loop.call_soon_threadsafe(self._ended, handle)
        except RuntimeError:
            pass  # the master's loop is closed: it is exiting anyway

    def _ended(self, handle: ThreadWorker) -> None:
        worker = self.handles.pop(handle, None)
        if worker is None:
            return
        self.abandoned = [(h, w) for h, w in self.abandoned if h is not handle]
        if handle.abandoned_at is not None:
            log.event("worker-thread-end", f"abandoned {handle.thread.name} ended after "
                      f"{time.time() - handle.abandoned_at:.1f}s", slot=worker.slot)
            return
        if handle.failure is not None:
            if getattr(worker, "boot_error", None) is None:
                worker.boot_error = handle.failure
        self.on_exit(worker, handle.returncode)

    def _killed(self, handle: ThreadWorker) -> None:
        """Called in the master's loop: give the thread KILL_GRACE_S to end, else abandon it."""
        self.loop.call_later(KILL_GRACE_S, self._abandon_if_alive, handle)

    def _abandon_if_alive(self, handle: ThreadWorker) -> None:
        worker = self.handles.get(handle)
        if worker is None or handle.returncode is not None or handle.abandoned_at is not None:
            return
        handle.abandoned_at = time.time()
        self.abandoned.append((handle, worker))
        log.event("worker-abandoned", f"{handle.thread.name} did not stop within {KILL_GRACE_S:g}s of being "
                  "killed: a thread cannot be forced, it is abandoned", level=logging.WARNING, slot=worker.slot)
        self.on_exit(worker, None)

    def document(self) -> dict:
        """The `threads` part of the status document."""
        return {
            "gil": gil_enabled(),
            "parallel_cpu": not gil_enabled(),
            "limits": LIMITS,
            "abandoned": [{"slot": w.slot, "generation": w.generation, "thread": h.thread.name,
                           "since": h.abandoned_at, "alive": h.alive()} for h, w in self.abandoned],
        }

    def retire_generation(self, generation: int) -> None:
        pass

    def reset(self, generation: int) -> None:
        pass

    def alive(self) -> bool:
        return any(h.alive() for h in list(self.handles) + [h for h, _w in self.abandoned])

    def owned_pids(self) -> set[int]:
        return set()  # threads, no child processes

    def close(self) -> None:
        for handle in list(self.handles):
            handle.kill()

