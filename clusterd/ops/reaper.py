"""The master (or an agent) as the reaper of its process tree: PID 1 in a container, a subreaper elsewhere.

Linux hands an orphan to the nearest ancestor that asked to be a child subreaper, else to the init
of its PID namespace. In a container the master is that init; everywhere else it asks to be a
subreaper (PR_SET_CHILD_SUBREAPER), so that what happens is the same with or without a namespace:
workers orphaned by a dying zygote, and whatever a worker's own subprocesses leave behind, become
children of the master. A child that exits stays a zombie until its parent waits for it, so the
master must wait for these too, or the pod fills with zombies (as tini and dumb-init exist to avoid).

It must not steal an exit status that someone else waits for: the spawners wait for their own
children (Popen and a pidfd), and user code in the master may run subprocesses. So on SIGCHLD the
reaper lists this process's zombie children and waits only for those that no spawner owns and that
nobody has waited for within GRACE_S.
"""

from __future__ import annotations

import asyncio
import ctypes
import glob
import os
import signal
import time
from collections.abc import Callable, Collection

__all__ = ["ChildReaper", "GRACE_S", "become_subreaper", "children", "exit_on_sigterm_until_handled",
           "process_state", "stop_if_adopted"]

PR_SET_CHILD_SUBREAPER = 36

# How long a zombie no spawner owns is left to whoever started it (a subprocess of user code in the
# master is normally waited for at once); after that it is an orphan's and the reaper's.
GRACE_S = 1.0
FALLBACK_SWEEP_S = 5.0  # on uvloop: a sweep this often besides SIGCHLD, which libuv may take over


def become_subreaper(enable: bool = True) -> bool:
    """Ask Linux to give this process the orphans of its descendants; False where it cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, int(enable), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children(pid: int | str = "self") -> list[int]:
    """The children of a process, from /proc/PID/task/*/children (every thread can be a parent)."""
    found: list[int] = []
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(path) as f:
                found.extend(int(p) for p in f.read().split())
        except (OSError, ValueError):
            continue
    return found


def process_state(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process from /proc/PID/stat; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[0].decode(), int(fields[1])


def stop_if_adopted(pid: int) -> bool:
    """SIGKILL a process that is running as this process's adopted child (a stray worker); True if sent.

    A child's pid cannot be reused until its parent waits for it, so checking the parent and then
    killing is safe here; a process that is not our child is never signalled (its pid may be reused)."""
    state = process_state(pid)
    if state is None or state[1] != os.getpid() or state[0] in ("Z", "X"):
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def exit_on_sigterm_until_handled() -> None:
    """As PID 1, exit on a SIGTERM that comes before the master's own handlers are installed.

    The kernel gives PID 1 no default signal actions: a SIGTERM while the app's code is still being
    imported would be dropped, and the kubelet or `docker stop` would wait its whole grace period
    before SIGKILL. Elsewhere that SIGTERM ends the process, so here it does the same (status 143)."""
    if os.getpid() == 1:
        signal.signal(signal.SIGTERM, _exit_by_signal)


def _exit_by_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


class ChildReaper:
    """Waits for the zombie children that no spawner owns, on SIGCHLD (events, not polling)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, owned: Callable[[], Collection[int]]) -> None:
        self.loop = loop
        self.owned = owned
        self.reaped = 0
        self._first_seen: dict[int, float] = {}
        self._later: asyncio.TimerHandle | None = None
        self._own_handler = False
        self._fallback: asyncio.TimerHandle | None = None

    def install(self) -> "ChildReaper":
        become_subreaper()
        try:
            self.loop.add_signal_handler(signal.SIGCHLD, self.sweep)
            self._own_handler = False
        except RuntimeError:
            # uvloop keeps SIGCHLD for its own subprocesses: a plain handler, which runs in the loop's
            # thread when uvloop wakes for the signal, hands the sweep to the loop. Once something in
            # this process starts a subprocess through uvloop, libuv's handler replaces ours for good:
            # a sweep every FALLBACK_SWEEP_S then still waits for the orphans (a /proc read each time).
            signal.signal(signal.SIGCHLD, self._on_sigchld)
            signal.siginterrupt(signal.SIGCHLD, False)  # as add_signal_handler: system calls restart
            self._own_handler = True
            self._fallback = self.loop.call_later(FALLBACK_SWEEP_S, self._sweep_fallback)
        self.sweep()  # orphans that reached us before the handler was there
        return self

    def _on_sigchld(self, _signum: int, _frame: object) -> None:
        self.loop.call_soon_threadsafe(self.sweep)

    def _sweep_fallback(self) -> None:
        try:
            self.sweep()
        finally:
            self._fallback = self.loop.call_later(FALLBACK_SWEEP_S, self._sweep_fallback)

    def close(self) -> None:
        if self._own_handler:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        else:
            self.loop.remove_signal_handler(signal.SIGCHLD)
        for handle in (self._later, self._fallback):
            if handle is not None:
                handle.cancel()

    def sweep(self) -> None:
        """Wait for every zombie child no spawner owns that has waited GRACE_S for its own parent."""
        now = time.monotonic()
        owned = set(self.owned())
        zombies = [pid for pid in children() if pid not in owned and (process_state(pid) or ("",))[0] == "Z"]
        self._first_seen = {pid: self._first_seen.get(pid, now) for pid in zombies}
        for pid, since in list(self._first_seen.items()):
            if now - since >= GRACE_S and self._wait(pid):
                del self._first_seen[pid]
        if self._first_seen and self._later is None:
            due = min(self._first_seen.values()) + GRACE_S - now
            self._later = self.loop.call_later(max(0.0, due) + 0.01, self._sweep_later)

    def _sweep_later(self) -> None:
        self._later = None
        self.sweep()

    def _wait(self, pid: int) -> bool:
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # its own parent waited for it meanwhile
            return True
        if done:
            self.reaped += 1
        return bool(done)
