"""Unit tests of the master's decisions, without processes or sockets: the restart policy, the
balancer, the supervisor (driven through a fake host and a fake spawner), the reload manager and
the heartbeat's busy-versus-stalled rule. Each runs in well under a second."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from clusterd.master.balancer import Balancer
from clusterd.master.health import BOOT_SILENCE_S, is_hung, over_memory
from clusterd.master.host import BootFailure
from clusterd.master.pool import Call, Worker
from clusterd.master.reload import ReloadManager
from clusterd.master.restart import BACKOFF_MAX_S, STABLE_AFTER_S, CrashLoop, RestartPolicy, backoff
from clusterd.master.states import ClusterState, ExitReason, WorkerState
from clusterd.master.supervisor import Supervisor
from clusterd.ops.telemetry import Telemetry
from clusterd.settings import Config
from clusterd.wire import SPEC_ENV, WorkerSpec
from clusterd.worker.heartbeat import MainThreadWatch

pytestmark = pytest.mark.timeout(10)


# ---------------------------------------------------------------------------- restart policy
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_from_the_second_failure_up_to_the_cap():
    assert [backoff(n) for n in range(1, 6)] == [0.0, 0.1, 0.2, 0.4, 0.8]
    assert backoff(50) == BACKOFF_MAX_S


def test_a_slot_that_keeps_failing_waits_longer_each_time():
    policy = RestartPolicy(crash_limit=0, crash_window=60, clock=FakeClock())
    count, delays = 0, []
    for _ in range(4):
        count, delay = policy.failed(count, served_for=None, slots=1)
        delays.append(delay)
    assert count == 4 and delays == [0.0, 0.1, 0.2, 0.4]


def test_a_worker_that_served_long_enough_resets_its_slots_backoff():
    policy = RestartPolicy(crash_limit=0, crash_window=60, clock=FakeClock())
    count, _ = policy.failed(5, served_for=STABLE_AFTER_S + 0.5, slots=1)
    assert count == 1
    count, _ = policy.failed(5, served_for=STABLE_AFTER_S / 2, slots=1)
    assert count == 6


def test_failures_within_the_window_are_a_crash_loop_and_older_ones_are_forgotten():
    clock = FakeClock()
    policy = RestartPolicy(crash_limit=3, crash_window=10, clock=clock)
    policy.failed(0, None, slots=1)
    policy.failed(0, None, slots=1)
    clock.now += 11  # both fall out of the window
    policy.failed(0, None, slots=1)
    policy.failed(0, None, slots=1)
    with pytest.raises(CrashLoop, match="3 worker failures within 10s"):
        policy.failed(0, None, slots=1)


def test_the_crash_limit_is_per_slot():
    policy = RestartPolicy(crash_limit=2, crash_window=10, clock=FakeClock())
    for _ in range(3):
        policy.failed(0, None, slots=2)  # 3 < 2 x 2
    with pytest.raises(CrashLoop):
        policy.failed(0, None, slots=2)


# ---------------------------------------------------------------------------- balancer
def _worker(slot: int, busy: int = 0) -> Worker:
    w = Worker(slot=slot, generation=1, ident=f"{slot}".encode())
    for i in range(busy):
        w.calls[bytes([i])] = Call(b"", i, None, None, None)
    return w


def test_balancer_picks_the_least_busy_worker():
    b = Balancer()
    workers = [_worker(0, busy=3), _worker(1, busy=1), _worker(2, busy=2)]
    for w in workers:
        b.add(w)
    assert b.pick() is workers[1]


def test_balancer_takes_turns_among_equally_busy_workers():
    b = Balancer()
    workers = [_worker(i) for i in range(3)]
    for w in reversed(workers):
        b.add(w)  # kept in slot order whatever the order they became ready in
    assert [b.pick().slot for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_balancer_never_picks_the_excluded_worker():
    b = Balancer()
    only = _worker(0)
    b.add(only)
    assert b.pick(exclude=only) is None
    other = _worker(1, busy=5)
    b.add(other)
    assert all(b.pick(exclude=only) is other for _ in range(4))


def test_round_robin_ignores_load_and_removed_workers_get_nothing():
    b = Balancer(least_busy=False)
    workers = [_worker(0, busy=9), _worker(1), _worker(2)]
    for w in workers:
        b.add(w)
    assert [b.pick().slot for _ in range(3)] == [0, 1, 2]
    b.remove(workers[1])
    assert {b.pick().slot for _ in range(4)} == {0, 2}
    assert Balancer().pick() is None


# ---------------------------------------------------------------------------- supervisor, faked
class FakeHandle:
    isolation = "process"

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.killed = False

    def send_signal(self, sig: int) -> None:
        pass

    def kill(self) -> None:
        self.killed = True

    def measure(self):
        return None


class FakeSpawner:
    def __init__(self, on_line, on_exit) -> None:
        self.on_exit = on_exit
        self.spawned: list[tuple[Worker, dict]] = []
        self.resets: list[int] = []
        self.retired: list[int] = []

    def spawn(self, worker, env, label, generation=0, link=None):
        self.spawned.append((worker, env))
        return FakeHandle(1000 + len(self.spawned))

    def reset(self, generation: int) -> None:
        self.resets.append(generation)

    def retire_generation(self, generation: int) -> None:
        self.retired.append(generation)

    def alive(self) -> bool:
        return False

    def close(self) -> None:
        pass


class FakeHost:
    worker_endpoint = "ipc:///nowhere"
    token = "t0ken"

    def keep_runtime_dir(self) -> None:
        pass

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def child_environ(self) -> dict:
        return {}

    def start_remote(self, agent, worker, spec):
        raise AssertionError("no agents here")

    def learn_methods(self, methods: dict) -> None:
        self.events.append(("methods", methods))

    def on_worker_ready(self, worker: Worker) -> None:
        self.events.append(("ready", worker.slot))

    def on_worker_gone(self, worker: Worker, exit_info: dict) -> None:
        self.events.append(("gone", exit_info["reason"]))

    def send_stop(self, worker: Worker) -> None:
        self.events.append(("stop", worker.slot))

    def open_link(self, worker: Worker):
        return None  # the fake workers need no link

    def flush_worker_messages(self) -> None:
        pass


def _supervisor(**options) -> tuple[Supervisor, FakeHost, FakeSpawner]:
    config = Config(master="m:M", worker="w:W", name="unit", **options)
    host = FakeHost()
    made: list[FakeSpawner] = []

    def make_spawner(on_line, on_exit):
        made.append(FakeSpawner(on_line, on_exit))
        return made[0]
    sup = Supervisor(config, host, make_spawner)
    return sup, host, made[0]


def _hello(sup: Supervisor, worker: Worker) -> None:
    sup.on_hello(worker.ident, {"pid": worker.pid, "methods": {"add": {}}})


async def _boot(sup: Supervisor, spawner: FakeSpawner) -> None:
    boot = asyncio.ensure_future(sup.start())
    await asyncio.sleep(0)
    for worker, _env in list(spawner.spawned):
        _hello(sup, worker)
    await boot


def test_supervisor_boots_its_slots_and_passes_the_spec_to_each_worker():
    async def main():
        sup, host, spawner = _supervisor(workers=2, heartbeat_timeout=8)
        await _boot(sup, spawner)
        assert [s.active.state for s in sup.slots.values()] == [WorkerState.READY] * 2
        assert ("ready", 0) in host.events and ("ready", 1) in host.events
        spec = WorkerSpec.from_env(spawner.spawned[1][1])
        assert (spec.slot, spec.generation, spec.heartbeat_timeout, spec.heartbeat_interval) == (1, 1, 8, 1.0)
        assert spec.ident == spawner.spawned[1][0].ident.decode() and SPEC_ENV in spawner.spawned[1][1]
        assert len(sup.balancer.ready) == 2
        sup.health.stop()
    asyncio.run(main())


def test_a_boot_failure_is_raised_with_the_workers_traceback():
    async def main():
        sup, _host, spawner = _supervisor(workers=1)
        boot = asyncio.ensure_future(sup.start())
        await asyncio.sleep(0)
        worker = spawner.spawned[0][0]
        sup.on_boot_failure(worker.ident, {"error": "ImportError: nope", "traceback": "Traceback ..."})
        sup.worker_exited(worker, 1)
        with pytest.raises(BootFailure) as failure:
            await boot
        assert failure.value.error == "ImportError: nope" and failure.value.traceback == "Traceback ..."
        sup.health.stop()
    asyncio.run(main())


def test_a_crashed_worker_is_restarted_at_once_then_with_backoff():
    async def main():
        sup, host, spawner = _supervisor(workers=1)
        await _boot(sup, spawner)
        first = sup.slots[0].active
        sup.worker_exited(first, 1)
        assert ("gone", ExitReason.CRASHED) in host.events
        second = sup.slots[0].active
        assert second is not None and second is not first and sup.slots[0].restarts == 1  # at once
        sup.worker_exited(second, 1)  # never became ready: fails again
        assert sup.slots[0].active is None and sup.slots[0].restart_handle is not None  # waits
        await asyncio.sleep(0.15)
        assert sup.slots[0].active is not None and sup.slots[0].restarts == 2  # ... then restarts
        sup.health.stop()
    asyncio.run(main())


def test_a_crash_loop_stops_restarting_and_makes_the_instance_fail():
    async def main():
        sup, _host, spawner = _supervisor(workers=1, crash_limit=2, crash_window=60)
        await _boot(sup, spawner)
        sup.worker_exited(sup.slots[0].active, 1)
        sup.worker_exited(sup.slots[0].active, 1)
        assert sup.fatal.done() and "crash loop" in sup.fatal.result()
        assert sup.slots[0].active is None and sup.slots[0].restart_handle is None
        sup.health.stop()
    asyncio.run(main())


def test_a_planned_exit_is_replaced_without_counting_as_a_failure():
    async def main():
        sup, _host, spawner = _supervisor(workers=1, crash_limit=1)
        await _boot(sup, spawner)
        worker = sup.slots[0].active
        worker.retire_reason = ExitReason.MAX_MEMORY
        sup.worker_exited(worker, 0)
        assert not sup.fatal.done() and sup.slots[0].active is not None
        sup.health.stop()
    asyncio.run(main())


def test_a_replacement_takes_the_slot_once_ready_and_the_old_worker_drains():
    async def main():
        sup, host, spawner = _supervisor(workers=1)
        await _boot(sup, spawner)
        old = sup.slots[0].active
        generation = sup.begin_generation()
        assert generation == 2 and spawner.resets == [2]
        fut = sup.replace(0, ExitReason.RELOAD)
        new = sup.slots[0].incoming
        assert new.generation == 2 and sup.slots[0].active is old
        _hello(sup, new)
        await fut
        assert sup.slots[0].active is new and old.state is WorkerState.STOPPING and ("stop", 0) in host.events
        assert old not in sup.balancer.ready and new in sup.balancer.ready
        sup.health.stop()
    asyncio.run(main())


def test_a_replacement_that_cannot_start_leaves_the_old_worker_serving():
    async def main():
        sup, _host, spawner = _supervisor(workers=1)
        await _boot(sup, spawner)
        old = sup.slots[0].active
        previous = sup.generation
        sup.begin_generation()
        fut = sup.replace(0, ExitReason.RELOAD)
        sup.worker_exited(sup.slots[0].incoming, 1)
        with pytest.raises(BootFailure):
            await fut
        sup.abort_generation(previous)
        assert sup.slots[0].active is old and old.state is WorkerState.READY and sup.generation == previous
        sup.health.stop()
    asyncio.run(main())


def test_scaling_down_retires_the_highest_slots_and_up_takes_the_lowest_free_ones():
    async def main():
        sup, _host, spawner = _supervisor(workers=3)
        await _boot(sup, spawner)
        sup.scale(1)
        assert [i for i, s in sup.slots.items() if not s.retired] == [0]
        for index in (1, 2):
            sup.worker_exited(sup.slots[index].active, 0)
        assert sorted(sup.slots) == [0]
        sup.scale(2)
        assert sorted(sup.slots) == [0, 1]
        sup.health.stop()
    asyncio.run(main())


def test_remote_slots_take_free_numbers_and_start_when_asked():
    async def main():
        sup, _host, spawner = _supervisor(workers=1)
        await _boot(sup, spawner)
        indices = sup.add_remote_slots("host:1", 2)
        assert indices == [1, 2] and all(sup.slots[i].agent == "host:1" for i in indices)
        assert all(sup.slots[i].active is None for i in indices)
        sup.health.stop()
    asyncio.run(main())


# ---------------------------------------------------------------------------- health rules
def test_a_silent_or_stalled_worker_is_hung_and_a_busy_one_is_not():
    w = _worker(0)
    now = w.last_beat + 3.0
    assert not is_hung(w, now, timeout=2.0)  # still booting: no beat yet, and not past BOOT_SILENCE_S
    assert is_hung(w, w.last_beat + BOOT_SILENCE_S + 0.1, timeout=2.0)  # a boot that never beats
    w.heard = True
    assert is_hung(w, now, timeout=2.0)  # no beat for 3 s
    w.last_beat = now - 0.5
    assert not is_hung(w, now, timeout=2.0)  # beating (busy or idle)
    w.stalled = 2.5
    assert is_hung(w, now, timeout=2.0)  # beating, but its main thread made no progress


def test_only_a_serving_worker_over_the_memory_limit_is_recycled():
    w = _worker(0)
    w.rss_bytes = 200
    assert not over_memory(w, 100)  # still starting
    w.state = WorkerState.READY
    assert over_memory(w, 100) and not over_memory(w, 0) and not over_memory(w, 300)


def _watch_thread(target) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    started = threading.Event()
    thread = threading.Thread(target=target, args=(stop, started), daemon=True)
    thread.start()
    started.wait(2)
    return thread, stop


def test_a_thread_busy_in_python_is_not_stalled():
    def spin(stop, started):
        started.set()
        n = 0
        while not stop.is_set():
            n += 1

    thread, stop = _watch_thread(spin)
    try:
        watch = MainThreadWatch(thread.ident)
        now = time.monotonic()
        for i in range(5):
            time.sleep(0.02)
            assert watch.stalled_for(now + i) == 0.0
    finally:
        stop.set()
        thread.join(2)


def test_a_thread_blocked_without_progress_is_stalled_for_as_long_as_it_stays_so():
    def block(stop, started):
        started.set()
        stop.wait()  # blocked in a lock: no CPU, no bytecode

    thread, stop = _watch_thread(block)
    try:
        watch = MainThreadWatch(thread.ident)
        watch.stalled_for(100.0)  # first look: where it is now
        assert watch.stalled_for(101.0) == 0.0  # stalled since this look
        assert watch.stalled_for(103.5) == 2.5
    finally:
        stop.set()
        thread.join(2)


# ---------------------------------------------------------------------------- reload manager, faked
class FakeReloadSupervisor:
    def __init__(self, slots: int, fail_slot: int | None = None) -> None:
        self.generation = 1
        self.slots = {i: _Slot() for i in range(slots)}
        self.fail_slot = fail_slot
        self.replaced: list[int] = []
        self.finished: list[int] = []
        self.gate: asyncio.Event | None = None

    def begin_generation(self) -> int:
        self.generation += 1
        return self.generation

    def abort_generation(self, previous: int) -> None:
        self.generation = previous

    def finish_generation(self, generation: int) -> None:
        self.finished.append(generation)

    async def replace(self, index: int, reason: ExitReason) -> None:
        assert reason is ExitReason.RELOAD
        if self.gate is not None:
            await self.gate.wait()
        if index == self.fail_slot:
            raise BootFailure(_worker(index), "RuntimeError: bad code", "Traceback ...")
        self.replaced.append(index)

    async def wait_generation_gone(self, generation: int, timeout: float) -> None:
        pass


class _Slot:
    retired = False
    active = None


class FakeRouter:
    def __init__(self, sup: FakeReloadSupervisor) -> None:
        self.supervisor = sup
        self.state = ClusterState.RUNNING
        self.states: list[ClusterState] = []
        self.config = Config(master="m:M", worker="w:W", name="unit")
        self.telemetry = Telemetry(dict, "unit")

    def set_state(self, state: ClusterState) -> None:
        self.state = state
        self.states.append(state)


def test_a_reload_replaces_every_slot_in_order_and_ends_running():
    async def main():
        router = FakeRouter(FakeReloadSupervisor(3))
        reloads = ReloadManager(router)
        result = await reloads.request(wait=True)
        sup = router.supervisor
        assert result["ok"] is True and sup.replaced == [0, 1, 2] and sup.finished == [2]
        await asyncio.sleep(0)   # the reload's end is counted when its task is done
        assert router.telemetry.counters["reloads"] == {"ok": 1, "failed": 0}
        assert [e["event"] for e in result["events"]] == [
            "start", "slot-starting", "slot-ready", "slot-starting", "slot-ready", "slot-starting",
            "slot-ready", "draining", "done"]
        assert router.states == [ClusterState.RELOADING, ClusterState.RUNNING]
    asyncio.run(main())


def test_a_reload_that_fails_in_its_first_slot_keeps_the_running_generation():
    async def main():
        router = FakeRouter(FakeReloadSupervisor(2, fail_slot=0))
        result = await ReloadManager(router).request(wait=True)
        assert result["ok"] is False and result["error"] == "RuntimeError: bad code"
        assert router.supervisor.generation == 1 and router.supervisor.replaced == []
        assert router.state is ClusterState.RUNNING
        await asyncio.sleep(0)
        assert router.telemetry.counters["reloads"] == {"ok": 0, "failed": 1}
    asyncio.run(main())


def test_a_reload_that_fails_after_a_slot_moved_keeps_the_new_generation():
    async def main():
        router = FakeRouter(FakeReloadSupervisor(2, fail_slot=1))
        result = await ReloadManager(router).request(wait=True)
        assert result["ok"] is False and router.supervisor.generation == 2 and router.supervisor.replaced == [0]
    asyncio.run(main())


def test_triggers_during_a_reload_queue_exactly_one_more():
    async def main():
        router = FakeRouter(FakeReloadSupervisor(1))
        sup = router.supervisor
        sup.gate = asyncio.Event()
        reloads = ReloadManager(router)
        first = asyncio.ensure_future(reloads.request(wait=True))
        await asyncio.sleep(0)
        second = await reloads.request(wait=False)
        third = await reloads.request(wait=False)
        assert second["id"] == third["id"] == 2 and [e["event"] for e in second["events"]] == ["queued"]
        sup.gate.set()
        assert (await first)["ok"] is True
        done = await reloads.progress(2, after=1)
        while not done["done"]:
            done = await reloads.progress(2, after=len(done["events"]))
        assert sup.generation == 3 and sup.replaced == [0, 0]
    asyncio.run(main())


def test_no_reload_while_stopping():
    async def main():
        router = FakeRouter(FakeReloadSupervisor(1))
        router.state = ClusterState.STOPPING
        result = await ReloadManager(router).request(wait=True)
        assert result["ok"] is False and router.supervisor.generation == 1
    asyncio.run(main())


# ---------------------------------------------------------------------------- SocketReader
def _reader_pair(handler_for):
    """A PAIR socket read by a SocketReader on a fresh loop, and its peer."""
    import asyncio as _asyncio

    import zmq as _zmq

    from clusterd.zmqloop import SocketReader
    ctx = _zmq.Context.instance()
    address = f"inproc://units-reader-{id(handler_for):x}"
    read = ctx.socket(_zmq.PAIR)
    read.bind(address)
    peer = ctx.socket(_zmq.PAIR)
    peer.connect(address)
    loop = _asyncio.new_event_loop()
    reader = SocketReader(loop, read, handler_for(peer))
    return loop, reader, read, peer


def test_a_flush_ends_while_a_peer_keeps_sending():
    """The health check flushes worker sockets: a peer that sends as fast as it is read cannot keep it."""
    from clusterd import zmqloop
    handled = []

    def handler_for(peer):
        def handle(frames):
            handled.append(frames)
            peer.send(b"more")  # there is always one more message
        return handle
    loop, reader, read, peer = _reader_pair(handler_for)
    try:
        peer.send(b"first")
        reader.flush()
        assert 0 < len(handled) <= zmqloop.FLUSH_BATCHES * zmqloop.BATCH
    finally:
        reader.close()
        read.close(linger=0)
        peer.close(linger=0)
        loop.close()


def test_a_recv_error_does_not_stop_the_reader():
    import zmq as _zmq
    handled = []
    loop, reader, read, peer = _reader_pair(lambda peer: handled.append)
    real = reader._recv
    failures = [1]

    def flaky(sock):
        if failures:
            failures.pop()
            raise _zmq.ZMQError(_zmq.EFAULT)
        return real(sock)
    reader._recv = flaky
    escaped = []
    loop.set_exception_handler(lambda _loop, context: escaped.append(context))
    try:
        for i in range(3):
            peer.send(b"%d" % i)

        async def until_read():
            for _ in range(200):
                if len(handled) == 3:
                    return
                await __import__("asyncio").sleep(0.01)
        loop.run_until_complete(until_read())
        assert [f[0] for f in handled] == [b"0", b"1", b"2"]
        assert escaped == [], "a recv error escaped the reader"
    finally:
        reader.close()
        read.close(linger=0)
        peer.close(linger=0)
        loop.close()


def test_log_lines_name_only_what_is_known_and_count_in_english():
    from clusterd.master.supervisor import _how
    from clusterd.ops.log import plural
    assert Worker(slot=0, generation=1, ident=b"0").label() == "worker 0 (generation 1)"  # not yet spawned
    assert Worker(slot=0, generation=1, ident=b"0", pid=42).label() == "worker 0 (pid 42, generation 1)"
    assert _how({"code": None, "signal": 9}) == "signal 9, " and _how({"code": 1, "signal": None}) == "code 1, "
    assert _how({"code": None, "signal": None}) == ""
    assert (plural(1, "worker"), plural(0, "worker"), plural(2, "worker")) == ("1 worker", "0 workers", "2 workers")
