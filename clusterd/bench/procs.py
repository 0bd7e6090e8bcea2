"""The bench's child processes: each in its own process group, each killed when the bench ends.

Every child also dies with the bench when the bench itself is killed: Linux sends it a signal on
its parent's death (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .plan import CHILD_MODULE, STOP_TIMEOUT_S
from .references import BenchError

REFERENCES = str(Path(__file__).resolve().with_name("references.py"))

# Every child dies with the bench, even when the bench is SIGKILLed (a harness timeout): Linux
# sends it a signal when its parent dies. argv: [-c, parent pid, signal number, ...].
GUARD_CODE = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None).prctl(1, int(sys.argv[2]), 0, 0, 0)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(1)\n"
    "del sys.argv[1:3]\n"
)

# A reference process: this file loaded by path, so that no clusterd code is imported.
REFERENCE_CODE = GUARD_CODE + (
    "import importlib.util\n"
    f"spec = importlib.util.spec_from_file_location({CHILD_MODULE!r}, sys.argv[1])\n"
    "mod = importlib.util.module_from_spec(spec)\n"
    f"sys.modules[{CHILD_MODULE!r}] = mod\n"
    "spec.loader.exec_module(mod)\n"
    "mod.child_main(sys.argv[2:])\n"
)

# `python -m MODULE ARGS...`, guarded; SIGTERM on the bench's death makes it stop gracefully.
MODULE_CODE = GUARD_CODE + (
    "import runpy\n"
    "del sys.argv[0]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
)


def guarded(code: str, death_signal: signal.Signals, *args: str) -> list[str]:
    return [sys.executable, "-c", code, str(os.getpid()), str(int(death_signal)), *args]



class LineReader:
    """Reads lines from a child's stdout with a deadline (no thread, no blocking readline)."""

    def __init__(self, proc: subprocess.Popen[bytes], what: str, log: Path | None) -> None:
        assert proc.stdout is not None
        self._proc = proc
        self._fd = proc.stdout.fileno()
        self._buf = b""
        self._what = what
        self._log = log

    def readline(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self._what}: no answer within {timeout_s:g} s{self._tail()}")
            readable, _, _ = select.select([self._fd], [], [], left)
            if readable:
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    raise BenchError(f"{self._what} exited (status {self._proc.wait()})"
                                     f"{self._tail()}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def _tail(self) -> str:
        return log_tail(self._log)


def log_tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").rstrip()
    if not text:
        return ""
    return "\n" + "\n".join(text.splitlines()[-lines:])


@dataclass
class Procs:
    """Every process the bench starts; ``close()`` kills each one's process group."""

    tmp: Path
    procs: list[tuple[subprocess.Popen[bytes], bool]] = field(default_factory=list)
    counter: int = 0

    def spawn(self, argv: list[str], what: str, *, graceful: bool = False,
              env: dict[str, str] | None = None, stdin: bool = False,
              capture: bool = False) -> tuple[subprocess.Popen[bytes], Path]:
        """Start a child in its own process group; its stderr (and stdout, unless captured to
        be read through a LineReader) goes to the returned log file."""
        self.counter += 1
        log = self.tmp / f"{self.counter:02d}-{what.replace(' ', '-')}.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture else err, stderr=err, cwd=self.tmp, env=env,
                start_new_session=True)
        self.procs.append((proc, graceful))
        return proc, log

    def spawn_ref(self, role: str, *args: str, what: str,
                  stdin: bool = False) -> tuple[subprocess.Popen[bytes], LineReader]:
        argv = guarded(REFERENCE_CODE, signal.SIGKILL, REFERENCES, role, *args)
        proc, log = self.spawn(argv, what, stdin=stdin, capture=True)
        return proc, LineReader(proc, what, log)

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """Kills, on leaving, every process started inside."""
        mark = len(self.procs)
        try:
            yield
        finally:
            while len(self.procs) > mark:
                self.kill(self.procs[-1][0])

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        graceful = False
        for i, (known, is_graceful) in enumerate(self.procs):
            if known is proc:
                graceful = is_graceful
                del self.procs[i]
                break
        if graceful and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_TIMEOUT_S)
        # The group may outlive its leader (a worker of a master that exited): kill it anyway.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def kill_all(self) -> None:
        while self.procs:
            self.kill(self.procs[-1][0])



def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

