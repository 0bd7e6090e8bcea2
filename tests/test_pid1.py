"""The master as PID 1 of a container (issue 17, DESIGN.md 14): it reaps every child that reaches it,
stops on SIGTERM as always and passes its exit status through.

"pid1" runs `clusterd run` under `unshare --pid --fork --mount-proc`, where the master is the init of
a new PID namespace, as in a container (root only: skipped with the reason otherwise). "subreaper"
runs it as usual: the master is then a child subreaper, so orphans reach it all the same.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys

import psutil
import pytest

from tests.conftest import Instance, call_in_thread, wait_for

pytestmark = pytest.mark.timeout(90)

BASIC = ("tests.apps.basic:Master", "tests.apps.basic:Worker")
PID1_APP = ("tests.apps.pid1:Master", "tests.apps.pid1:Worker")


@functools.cache
def namespace_unavailable() -> str | None:
    """Why `unshare --pid --fork --mount-proc` cannot run here, or None."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return "no unshare command (util-linux) on this machine"
    if os.geteuid() != 0:
        return "unshare --pid needs root (CAP_SYS_ADMIN); run the tests as root to check PID 1"
    probe = subprocess.run([unshare, "--pid", "--fork", "--mount-proc", "true"], capture_output=True, text=True,
                           timeout=20)
    if probe.returncode != 0:
        return f"unshare --pid --fork --mount-proc fails here: {probe.stderr.strip()}"
    return None


def start_as_pid1(inst: Instance) -> Instance:
    """Instance.start, with the master as PID 1 of a new PID namespace (and its own /proc)."""
    inst._stderr = open(inst.stderr_path, "wb")
    inst.proc = subprocess.Popen([shutil.which("unshare"), "--pid", "--fork", "--mount-proc", sys.executable, "-m",
                                  "clusterd", "run", *inst.args, "--name", inst.name],
                                 cwd=inst.cwd, env=inst.env, stdout=subprocess.DEVNULL, stderr=inst._stderr,
                                 start_new_session=True)
    return inst


def master_process(inst: Instance) -> psutil.Process:
    """The master as this (the host's) namespace sees it: unshare's only child when it is PID 1."""
    if inst.proc.args[0] == sys.executable:  # started as usual: the master itself
        return psutil.Process(inst.proc.pid)
    return wait_for(lambda: (psutil.Process(inst.proc.pid).children() or [None])[0], timeout=10,
                    message="the master under unshare")


def launcher(mode: str, cluster):
    """launch(master, worker, *options, env=None, wait=True) -> (Instance, its master process)."""
    if mode == "pid1" and namespace_unavailable():
        pytest.skip(namespace_unavailable())

    def launch(master: str, worker: str, *options: str, env: dict | None = None, wait: bool = True):
        inst = cluster(master, worker, *options, start=False, env=env)
        if mode == "pid1":
            start_as_pid1(inst)
        else:
            inst.start(wait=False)
        proc = master_process(inst)
        if wait:
            doc = inst.wait_running()
            if mode == "pid1":
                assert doc["master"]["pid"] == 1
        return inst, proc

    return launch


@pytest.fixture(params=["pid1", "subreaper"])
def launch(request, cluster):
    return launcher(request.param, cluster)


@pytest.fixture
def launch_pid1(cluster):
    """Only as PID 1: elsewhere the kernel gives a process's signals their default actions anyway."""
    return launcher("pid1", cluster)


def zombies(master: psutil.Process) -> list[int]:
    out = []
    for p in master.children(recursive=True):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def alive(procs: list[psutil.Process]) -> list[int]:
    """Those still there, as zombies included (is_running is true for a zombie that is not yet reaped)."""
    return [p.pid for p in procs if p.is_running()]


def test_killed_zygote_leaves_no_zombie_nor_stray_worker_and_the_workers_return(launch):
    inst, master = launch(*BASIC, "--workers", "2")
    before = {w["pid"] for w in inst.wait_ready(2)}
    zygote = [p for p in master.children() if any("zygote" in a for a in p.cmdline())]
    assert len(zygote) == 1, master.children()
    old_workers = zygote[0].children()
    assert len(old_workers) == 2

    zygote[0].kill()

    wait_for(lambda: (lambda ws: len(ws) == 2 and not {w["pid"] for w in ws} & before)(inst.ready_workers()),
             timeout=15, message="two new workers ready")
    wait_for(lambda: not alive(old_workers), timeout=10, message="the zygote's workers gone and reaped")
    wait_for(lambda: not zombies(master), timeout=10, message="no zombie under the master")
    c = inst.client()
    assert c.result("add", 2, 3) == 5
    assert inst.proc.poll() is None


def test_orphans_left_by_a_workers_subprocess_are_reaped(launch):
    inst, master = launch(*PID1_APP, "--workers", "1")
    inst.wait_ready(1)
    c = inst.client()
    assert c.result("leave_orphan", 0.2) == 0

    def sleeping() -> list[psutil.Process]:
        return [p for p in master.children(recursive=True) if p.name() == "sleep"]

    wait_for(lambda: not [p for p in sleeping() if p.status() != psutil.STATUS_ZOMBIE], timeout=10,
             message="the orphaned sleep finished")
    wait_for(lambda: not zombies(master), timeout=10, message="no zombie under the master")


def test_exit_statuses_that_others_wait_for_are_not_taken(launch):
    # fresh interpreters (Popen + pidfd) for the workers, so that their exit status is the spawner's to read
    inst, master = launch(*PID1_APP, "--workers", "1", env={"CLUSTERD_NO_ZYGOTE": "1"})
    (worker,) = inst.wait_ready(1)
    c = inst.client()
    for code in (7, 0, 3):
        assert c.result("child_exit", code) == code
        assert c.result("async_child_exit", code, 0.05) == code

    c.call("crash", timeout=10)  # the worker exits with status 7
    new = wait_for(lambda: [w for w in inst.ready_workers() if w["pid"] != worker["pid"]], timeout=15,
                   message="the crashed worker replaced")
    assert new[0]["last_exit"]["code"] == 7
    wait_for(lambda: not zombies(master), timeout=10, message="no zombie under the master")


def test_sigterm_to_pid1_drains_the_calls_in_flight_and_exits_0(launch_pid1):
    inst, master = launch_pid1(*BASIC, "--workers", "1")
    inst.wait_ready(1)
    c = inst.client()
    thread, box = call_in_thread(c, "sleep", 1.0)
    wait_for(lambda: inst.status()["workers"][0]["inflight"] == 1, timeout=10, message="the call in flight")

    master.send_signal(signal.SIGTERM)

    thread.join(15)
    assert "result" in box.get("reply", {}), box
    assert inst.wait_exit(30) == 0


def test_sigint_to_pid1_stops_it_too(launch_pid1):
    inst, master = launch_pid1(*BASIC, "--workers", "1")
    master.send_signal(signal.SIGINT)
    assert inst.wait_exit(30) == 0


def test_a_crash_loop_exit_1_passes_through_pid1(launch_pid1):
    inst, _master = launch_pid1("tests.apps.crashy:Master", "tests.apps.crashy:DiesAfterReady", "--workers", "1",
                                "--crash-limit", "3", "--crash-window", "60", wait=False)
    assert inst.wait_exit(timeout=40) == 1


# ---------------------------------------------------------------------------- the parts, without an instance
def test_stop_if_adopted_signals_only_a_running_child_of_this_process():
    from clusterd.ops.reaper import stop_if_adopted
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not stop_if_adopted(os.getppid())   # not our child: never signalled
        assert stop_if_adopted(child.pid)
        assert child.wait(10) == -signal.SIGKILL
        assert not stop_if_adopted(child.pid)      # gone
    finally:
        child.kill()
        child.wait()


def test_the_reaper_waits_for_zombies_nobody_owns_and_leaves_owned_ones_to_their_owner():
    import asyncio

    from clusterd.ops import reaper

    async def scenario() -> tuple[str | None, str | None, int]:
        loop = asyncio.get_running_loop()
        owned = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(5)"])
        stray = subprocess.Popen([sys.executable, "-c", "pass"])
        stray_pid = stray.pid
        stray.returncode = 0   # let subprocess forget it, as nobody waits for an orphan
        reap = reaper.ChildReaper(loop, lambda: {owned.pid}).install()
        try:
            wait_until = loop.time() + 10
            while reaper.process_state(stray_pid) is not None and loop.time() < wait_until:
                await asyncio.sleep(0.05)
            stray_state, owned_state = reaper.process_state(stray_pid), reaper.process_state(owned.pid)
            return stray_state and stray_state[0], owned_state and owned_state[0], owned.wait()
        finally:
            reap.close()
            reaper.become_subreaper(False)  # pytest's own process must not collect other tests' orphans

    stray_state, owned_state, owned_code = asyncio.run(scenario())
    assert stray_state is None  # the zombie nobody owns was reaped ...
    assert owned_state == "Z"   # ... the owned one left alone ...
    assert owned_code == 5      # ... so its owner still reads its exit status


def test_on_uvloop_the_reaper_still_reaps_after_libuv_took_sigchld_over(monkeypatch):
    """The master runs on uvloop when installed, which refuses a SIGCHLD handler: the reaper uses a plain
    one, and once a uvloop subprocess made libuv take SIGCHLD over, its periodic sweep still reaps."""
    import asyncio

    from clusterd.ops import reaper
    uvloop = pytest.importorskip("uvloop")
    monkeypatch.setattr(reaper, "FALLBACK_SWEEP_S", 0.2)

    async def scenario() -> str | None:
        loop = asyncio.get_running_loop()
        reap = reaper.ChildReaper(loop, lambda: set()).install()
        try:
            proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")  # libuv's SIGCHLD now
            await proc.wait()
            stray = subprocess.Popen([sys.executable, "-c", "pass"])
            stray_pid = stray.pid
            stray.returncode = 0   # nobody waits for it: an orphan's zombie
            wait_until = loop.time() + 10
            while reaper.process_state(stray_pid) is not None and loop.time() < wait_until:
                await asyncio.sleep(0.05)
            state = reaper.process_state(stray_pid)
            return state and state[0]
        finally:
            reap.close()
            reaper.become_subreaper(False)

    assert uvloop.run(scenario()) is None  # reaped


def test_sigterm_while_the_app_is_still_importing_ends_pid1_as_it_would_a_process(launch_pid1, tmp_path):
    mark = tmp_path / "importing"
    inst, master = launch_pid1("tests.apps.slow_import:Master", "tests.apps.slow_import:Worker", "--workers", "1",
                               env={"SLOW_IMPORT_MARK": str(mark), "SLOW_IMPORT_S": "60"}, wait=False)
    wait_for(mark.exists, timeout=20, message="the app's import begun")
    master.send_signal(signal.SIGTERM)
    assert inst.wait_exit(15) == 128 + signal.SIGTERM   # not dropped: the import had a minute to go
