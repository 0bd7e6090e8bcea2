"""Hostile input against a real master, on both client endpoints (control.sock and a --bind): the
master answers what JSON-RPC 2.0 says, never crashes, keeps its memory, and enforces its limits
(message size, batch size, calls in flight per client). Clients that vanish mid-call cost nothing.

Protocol examples of the specification itself live in test_protocol.py; this file is about abuse."""

from __future__ import annotations

import json
import time

import orjson
import psutil
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterd import protocol

from .conftest import Rpc, free_port, running_instance, wait_for

MAX_BATCH = 100
MAX_MESSAGE = 1024 * 1024
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

WORKER_METHODS = {"echo", "add", "subtract", "sum", "pid", "whoami", "count", "sleep", "block", "spin", "deadlock",
                  "crash", "idem_sleep", "slow_with_timeout", "fail", "fail_rpc", "allocate", "ask_master",
                  "master_sum", "peer_pid", "peers", "any_pid", "slow_unique", "shared_from_worker"}
MASTER_METHODS = {"config", "master_add", "total", "broadcast_pids", "via_slot", "shared_slow", "hooks"}
ADMIN_METHODS = {"clusterd.status", "clusterd.reload", "clusterd.reload_wait", "clusterd.scale", "clusterd.stop"}
REACHABLE = WORKER_METHODS | MASTER_METHODS | ADMIN_METHODS


@pytest.fixture(scope="module")
def inst():
    port = free_port()
    with running_instance("--workers", "2", "--bind", f"tcp://127.0.0.1:{port}", "--max-batch", str(MAX_BATCH),
                          "--max-message-size", str(MAX_MESSAGE), name="hostile") as inst:
        inst.tcp = f"tcp://127.0.0.1:{port}"
        inst.master_pid = inst.status()["master"]["pid"]
        yield inst


class Probe:
    """A DEALER client that sends anything and reads whatever comes back, with a timeout."""

    def __init__(self, address: str) -> None:
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.pings = 0

    def drain(self) -> None:
        while self.sock.poll(0):
            self.sock.recv_multipart()

    def ask(self, frames: bytes | list[bytes], timeout: float = 5.0) -> list[bytes]:
        """Send one message; its answer's frames (fails the test when none comes)."""
        self.drain()
        self.sock.send_multipart(frames if isinstance(frames, list) else [frames])
        assert self.sock.poll(int(timeout * 1000)), f"no answer to {frames!r:.200}"
        return self.sock.recv_multipart()

    def answer(self, payload: bytes) -> object:
        frames = self.ask(payload)
        assert len(frames) == 1, frames
        return orjson.loads(frames[0])

    def silent(self, payload: bytes) -> None:
        """Send a message that deserves no answer; the next ping must be the first thing answered."""
        self.drain()
        self.sock.send(payload)
        self.ping(first=True)

    def ping(self, first: bool = False) -> None:
        self.pings += 1
        rid = f"ping-{self.pings}"
        self.sock.send(protocol.dumps({"jsonrpc": "2.0", "method": "add", "params": [2, 3], "id": rid}))
        while True:
            assert self.sock.poll(5000), "the master stopped answering"
            reply = orjson.loads(self.sock.recv())
            if reply.get("id") == rid:
                assert reply["result"] == 5
                return
            assert not first, f"answered a message that deserves no answer: {reply}"

    def close(self) -> None:
        self.sock.close(linger=0)


@pytest.fixture(scope="module", params=["control", "tcp"])
def probe(request, inst):
    p = Probe(inst.control if request.param == "control" else inst.tcp)
    p.endpoint = request.param
    yield p
    p.ping()
    assert inst.status()["master"]["pid"] == inst.master_pid
    p.close()


def assert_error(reply: object, code: int, rid: object = None) -> dict:
    assert isinstance(reply, dict), reply
    assert reply.get("jsonrpc") == "2.0" and "result" not in reply, reply
    assert reply["error"]["code"] == code, reply
    assert isinstance(reply["error"]["message"], str)
    assert reply["id"] == rid, reply
    return reply["error"]


def _parses(payload: bytes) -> bool:
    try:
        orjson.loads(payload)
        return True
    except orjson.JSONDecodeError:
        return False


# ---------------------------------------------------------------------------- malformed bytes
@FUZZ
@given(payload=st.binary(max_size=3000))
def test_arbitrary_bytes_get_a_parse_error_or_invalid_request(probe, payload):
    if _parses(payload):
        return  # covered by the JSON strategies below
    assert_error(probe.answer(payload), protocol.PARSE_ERROR)


@FUZZ
@given(method=st.sampled_from(["add", "echo", "config", "nope"]), cut=st.integers(min_value=0),
       batch=st.booleans())
def test_truncated_json_is_a_parse_error(probe, method, cut, batch):
    request = {"jsonrpc": "2.0", "method": method, "params": [1, 2], "id": 7}
    full = protocol.dumps([request, request] if batch else request)
    assert_error(probe.answer(full[: cut % len(full)]), protocol.PARSE_ERROR)


@FUZZ
@given(garbage=st.binary(min_size=1, max_size=50).filter(lambda b: not _utf8(b)),
       where=st.sampled_from(["method", "params", "id", "key"]))
def test_invalid_utf8_is_a_parse_error(probe, garbage, where):
    payload = {
        "method": b'{"jsonrpc":"2.0","method":"add' + garbage + b'","id":1}',
        "params": b'{"jsonrpc":"2.0","method":"echo","params":["x' + garbage + b'"],"id":1}',
        "id": b'{"jsonrpc":"2.0","method":"add","params":[1,2],"id":"i' + garbage + b'"}',
        "key": b'{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1,"k' + garbage + b'":0}',
    }[where]
    assert_error(probe.answer(payload), protocol.PARSE_ERROR)


def _utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@FUZZ
@given(depth=st.integers(min_value=1, max_value=4000), kind=st.sampled_from(["list", "dict"]),
       where=st.sampled_from(["params", "message", "batch-item"]))
def test_deeply_nested_json(probe, depth, kind, where):
    opening, closing = (b"[" * depth, b"]" * depth) if kind == "list" else (b'{"a":' * depth, b"1" + b"}" * depth)
    value = opening + closing
    if where == "params":
        payload = b'{"jsonrpc":"2.0","method":"echo","id":9,"params":[' + value + b"]}"
    elif where == "batch-item":
        payload = b'[{"jsonrpc":"2.0","method":"echo","id":9,"params":[' + value + b"]}]"
    else:
        payload = value
    reply = probe.answer(payload)
    if not _parses(payload):
        assert_error(reply, protocol.PARSE_ERROR)
    elif where == "params":
        assert reply["id"] == 9 and ("result" in reply or reply["error"]["code"] == protocol.INTERNAL_ERROR), reply
        if "result" in reply and depth < 300:  # deeper would exhaust the comparison's recursion
            assert reply["result"] == orjson.loads(value)
    elif where == "batch-item":
        assert isinstance(reply, list) and len(reply) == 1 and reply[0]["id"] == 9, reply
    elif kind == "list":
        # a batch whose item is a list (or an empty batch): invalid requests
        if depth == 1:
            assert_error(reply, protocol.INVALID_REQUEST)
        else:
            assert isinstance(reply, list) and len(reply) == 1, reply
            assert_error(reply[0], protocol.INVALID_REQUEST)
    else:
        assert_error(reply, protocol.INVALID_REQUEST)  # an object without jsonrpc/method


# ---------------------------------------------------------------------------- wrong types
ABSENT = object()
JSON_VALUES = [None, True, False, 0, -1, 1.5, 2 ** 70, "", "x", [], {}, [1], {"a": 1}]
jsonrpc_values = st.sampled_from(["2.0", "1.0", "2", 2.0, ABSENT, *JSON_VALUES])
method_values = st.sampled_from(["add", "echo", "master_add", "", "ADD", ABSENT, *JSON_VALUES[:-4], ["add"],
                                 {"name": "add"}])
params_values = st.sampled_from([[1, 2], {"a": 1, "b": 2}, [], [1], [1, 2, 3], {"c": 1}, ABSENT, *JSON_VALUES,
                                 ["a", "b"]])
id_values = st.sampled_from([1, -5, 0, 2.5, "an id", "", None, ABSENT, True, False, [], {}, [1], {"id": 1}])


def _request(jsonrpc, method, params, rid, extra) -> dict:
    msg = {k: v for k, v in (("jsonrpc", jsonrpc), ("method", method), ("params", params), ("id", rid))
           if v is not ABSENT}
    msg.update(extra)
    return msg


def _expected(msg: dict) -> tuple[str, object, object] | None:
    """What the specification says about one request: None for no answer, else (kind, id, value)."""
    rid = msg.get("id", ABSENT)
    id_ok = rid is ABSENT or rid is None or (isinstance(rid, (str, int, float)) and not isinstance(rid, bool))
    if not id_ok:
        return ("error", None, protocol.INVALID_REQUEST)
    answer_id = None if rid is ABSENT else rid
    method, params = msg.get("method"), msg.get("params", ABSENT)
    if msg.get("jsonrpc") != "2.0" or not isinstance(method, str) or not (
            params is ABSENT or isinstance(params, (list, dict))):
        return ("error", answer_id, protocol.INVALID_REQUEST)
    if rid is ABSENT:
        return None
    if method not in ("add", "echo", "master_add"):
        return ("error", answer_id, protocol.METHOD_NOT_FOUND)
    if method == "echo":  # echo(x=None)
        fits = True
        if isinstance(params, list):
            fits = len(params) <= 1
        elif isinstance(params, dict):
            fits = set(params) <= {"x"}
        return ("any", answer_id, None) if fits else ("error", answer_id, protocol.INVALID_PARAMS)
    names = {"a", "b"}
    if params is ABSENT or (isinstance(params, list) and len(params) != 2) or (
            isinstance(params, dict) and set(params) != names):
        return ("error", answer_id, protocol.INVALID_PARAMS)
    if params in ([1, 2], {"a": 1, "b": 2}):
        return ("result", answer_id, 3)
    return ("any", answer_id, None)  # ["a", "b"] concatenates: user code decides


def _check(reply: dict, expected: tuple[str, object, object]) -> None:
    kind, rid, value = expected
    assert reply.get("jsonrpc") == "2.0" and reply.get("id") == rid, (reply, expected)
    if kind == "error":
        assert_error(reply, value, rid)
    elif kind == "result":
        assert reply.get("result") == value, (reply, expected)
    else:
        assert ("result" in reply) != ("error" in reply), reply


requests = st.builds(_request, jsonrpc_values, method_values, params_values, id_values,
                     st.dictionaries(st.sampled_from(["extra", "ID", "Method", "result", "error"]),
                                     st.sampled_from(JSON_VALUES), max_size=2))


@FUZZ
@given(msg=requests)
def test_wrong_types_in_every_member(probe, msg):
    payload = json.dumps(msg).encode()
    expected = _expected(msg)
    if expected is None:
        probe.silent(payload)
    else:
        _check(probe.answer(payload), expected)


@FUZZ
@given(items=st.lists(st.one_of(requests, st.sampled_from(JSON_VALUES)), min_size=1, max_size=30))
def test_batches_of_wrong_types(probe, items):
    payload = json.dumps(items).encode()
    expected = [("error", None, protocol.INVALID_REQUEST) if not isinstance(m, dict) else _expected(m) for m in items]
    expected = [e for e in expected if e is not None]
    if not expected:
        probe.silent(payload)  # a batch of notifications gets no answer at all
        return
    reply = probe.answer(payload)
    assert isinstance(reply, list) and len(reply) == len(expected), (reply, expected)
    unmatched = list(expected)
    for answer in reply:  # answers come in any order, and ids may repeat: match each to one expectation
        match = next((e for e in unmatched if _matches(answer, e)), None)
        assert match is not None, (answer, unmatched)
        unmatched.remove(match)


def _matches(reply: dict, expected: tuple) -> bool:
    try:
        _check(reply, expected)
        return True
    except AssertionError:
        return False


# ---------------------------------------------------------------------------- sizes and shapes
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(n=st.integers(min_value=0, max_value=MAX_BATCH + 200))
def test_huge_batches(probe, n):
    items = [{"jsonrpc": "2.0", "method": "add", "params": [i, 1], "id": i} for i in range(n)]
    reply = probe.answer(protocol.dumps(items))
    if n == 0:
        assert_error(reply, protocol.INVALID_REQUEST)
    elif n > MAX_BATCH:
        error = assert_error(reply, protocol.INVALID_REQUEST)
        assert f"at most {MAX_BATCH}" in error["message"]
    else:
        assert sorted((r["id"], r["result"]) for r in reply) == [(i, i + 1) for i in range(n)]


@FUZZ
@given(prefix=st.lists(st.binary(max_size=40), min_size=1, max_size=6),
       last=st.sampled_from([b'{"jsonrpc":"2.0","method":"add","params":[1,2],"id":1}', b"garbage", b"[]"]))
def test_extra_message_parts_are_an_envelope_answered_back(probe, prefix, last):
    """The last part is the request; the parts before it are an envelope (as REQ sends), echoed back."""
    frames = probe.ask([*prefix, last])
    assert frames[:-1] == prefix
    reply = orjson.loads(frames[-1])
    if last.startswith(b"{"):
        assert reply == {"jsonrpc": "2.0", "result": 3, "id": 1}
    else:
        assert_error(reply, protocol.PARSE_ERROR if last == b"garbage" else protocol.INVALID_REQUEST)


@FUZZ
@given(name=st.one_of(
    st.sampled_from(["__class__", "__init__", "__dict__", "__getattribute__", "_private", "hidden", "not_exposed",
                     "start_services", "stop_services", "on_worker_ready", "shared_block", "workers", "master",
                     "_router", "dispatcher", "endpoint", "a.b", "add.__globals__", "config.__self__",
                     "workers.call", "master.call", "__class__.__init__", "echo.__code__", "clusterd.workers.call",
                     "clusterd.workers.broadcast", "clusterd.shared_block", "clusterd.status.__self__",
                     "clusterd.", "clusterd", "rpc.discover", "add ", " add", "Add", "add\x00", "echo\n"]),
    st.text(max_size=40).filter(lambda s: s not in REACHABLE)))
def test_unreachable_method_names(probe, name):
    reply = probe.answer(protocol.dumps({"jsonrpc": "2.0", "method": name, "params": [], "id": "n"}))
    assert_error(reply, protocol.METHOD_NOT_FOUND, "n")


def test_flood_of_unknown_methods_notifications_and_garbage_is_survived(inst, probe):
    sock = probe.sock
    probe.drain()
    for i in range(3000):
        sock.send(b'{"jsonrpc":"2.0","method":"nope%d","id":%d}' % (i, i))
        sock.send(b'{"jsonrpc":"2.0","method":"add","params":[1,2]}')  # notification: no answer
        sock.send(b"\xff" * (i % 50))
    got = 0
    while got < 6000:
        assert sock.poll(10000), f"only {got} answers"
        sock.recv()
        got += 1
    probe.ping(first=True)


# ---------------------------------------------------------------------------- memory
def _hostile_messages(i: int) -> list[bytes] | bytes:
    kind = i % 8
    if kind == 0:
        return bytes((i * 7 + j) % 256 for j in range(200))
    if kind == 1:
        return b'{"jsonrpc":"2.0","method":"echo","id":%d,"params":["' % i + b"y" * 50000 + b'"]}'
    if kind == 2:
        return b"[" * 2000
    if kind == 3:
        return protocol.dumps([{"jsonrpc": "2.0", "method": "nope", "id": j} for j in range(MAX_BATCH)])
    if kind == 4:
        return [b"part" * 10, b"\x00", b'{"jsonrpc":"2.0","method":"add","params":[1,2],"id":%d}' % i]
    if kind == 5:
        return b'{"jsonrpc":"2.0","method":"__class__","id":%d}' % i
    if kind == 6:
        return b'{"jsonrpc":"2.0","method":"add","params":[1,2]}'  # notification
    return b'{"jsonrpc":"2.0","method":"add","params":{"a":"x","b":[%d]},"id":%d}' % (i, i)


def _flood(address: str, n: int, window: int = 256) -> None:
    """n hostile messages from a client that keeps reading, with up to `window` answers outstanding."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    try:
        expected, got = 0, 0
        for i in range(n):
            msg = _hostile_messages(i)
            sock.send_multipart(msg if isinstance(msg, list) else [msg])
            expected += i % 8 != 6
            while sock.poll(0 if expected - got < window else 10000):
                sock.recv_multipart()
                got += 1
                if expected - got < window:
                    break
        while got < expected:
            assert sock.poll(10000), f"{expected - got} answers missing"
            sock.recv_multipart()
            got += 1
    finally:
        sock.close(linger=0)


def test_master_memory_stays_bounded_under_thousands_of_hostile_messages(inst):
    master = psutil.Process(inst.master_pid)
    _flood(inst.control, 2000)  # warm up: allocator pools, caches, pipes
    _flood(inst.tcp, 2000)
    before = master.memory_info().rss
    for _ in range(3):
        _flood(inst.control, 4000)
        _flood(inst.tcp, 4000)
    after = master.memory_info().rss
    print(f"\nmaster RSS before {before / 2**20:.1f} MiB, after 24000 hostile messages {after / 2**20:.1f} MiB")
    assert after - before < 30 * 2 ** 20, (before, after)
    doc = inst.status()
    assert doc["master"]["pid"] == inst.master_pid and doc["queued"] == 0 and doc["client_inflight"] == 0
    assert all(w["inflight"] == 0 for w in doc["workers"])


# ---------------------------------------------------------------------------- limits
@pytest.mark.parametrize("endpoint", ["control", "tcp"])
def test_message_over_max_message_size_drops_only_that_connection(inst, endpoint):
    address = inst.control if endpoint == "control" else inst.tcp
    big, other = Rpc(address), Rpc(address)
    try:
        assert other.result("add", 1, 2) == 3
        payload = b'{"jsonrpc":"2.0","method":"echo","id":1,"params":["' + b"z" * MAX_MESSAGE + b'"]}'
        big.send_raw(payload)
        for i in range(20):  # the other client is served all along
            assert other.result("add", i, 1, timeout=5) == i + 1
        with pytest.raises(TimeoutError):
            big.recv_raw(timeout=0.5)
        # its socket reconnects by itself and is served again
        assert wait_for(lambda: big.call("add", 2, 2, timeout=0.5)["result"], timeout=10) == 4
        under = b'{"jsonrpc":"2.0","method":"echo","id":2,"params":["' + b"z" * (MAX_MESSAGE - 1000) + b'"]}'
        big.send_raw(under)
        assert len(orjson.loads(big.recv_raw())["result"]) == MAX_MESSAGE - 1000
    finally:
        big.close()
        other.close()
    assert inst.status()["master"]["pid"] == inst.master_pid


def test_batch_at_the_limit_is_served_and_past_it_refused_clearly(inst):
    c = Rpc(inst.tcp)
    try:
        at = [{"jsonrpc": "2.0", "method": "add", "params": [i, i], "id": i} for i in range(MAX_BATCH)]
        assert sorted(r["result"] for r in c.request(at)) == [2 * i for i in range(MAX_BATCH)]
        reply = c.request(at + [{"jsonrpc": "2.0", "method": "add", "params": [1, 1], "id": "one too many"}])
        assert reply["id"] is None and reply["error"]["code"] == protocol.INVALID_REQUEST
        assert reply["error"]["message"] == f"Batch too large (at most {MAX_BATCH} requests)"
    finally:
        c.close()


def _sleep_request(rid: object, seconds: float) -> bytes:
    return protocol.dumps({"jsonrpc": "2.0", "method": "sleep", "params": [seconds], "id": rid})


def test_calls_in_flight_per_client_are_bounded_and_others_are_not_starved(cluster):
    inst = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "2",
                   env={"CLUSTERD_MAX_CLIENT_INFLIGHT": "8"})
    assert inst.status()["config"]["max_client_inflight"] == 8
    greedy, polite = inst.client(), inst.client()
    for i in range(30):
        greedy.send_raw(_sleep_request(i, 1.0))
    started = time.monotonic()
    refused = []
    while len(refused) < 22:  # refused at once, long before the sleeps end
        reply = protocol.loads(greedy.recv_raw(timeout=0.8))
        assert reply["error"]["code"] == protocol.TOO_BUSY, reply
        assert "at most 8" in reply["error"]["message"]
        refused.append(reply["id"])
    assert time.monotonic() - started < 0.8
    assert sorted(refused) == list(range(8, 30))
    assert polite.result("add", 1, 2, timeout=0.5) == 3  # another client is served at once
    assert inst.status()["client_inflight"] == 8
    # a batch counts each of its calls: refused whole while the client is at its limit
    batch = [{"jsonrpc": "2.0", "method": "add", "params": [1, 1], "id": f"b{i}"} for i in range(3)]
    greedy.send_raw(protocol.dumps(batch))
    answers = protocol.loads(greedy.recv_raw(timeout=0.8))
    assert sorted(a["id"] for a in answers) == ["b0", "b1", "b2"]
    assert {a["error"]["code"] for a in answers} == {protocol.TOO_BUSY}
    results = [protocol.loads(greedy.recv_raw(timeout=5)) for _ in range(8)]
    assert sorted(r["id"] for r in results) == list(range(8)) and all("result" in r for r in results)
    # answered calls no longer count: the client may call again
    assert greedy.result("add", 2, 2) == 4
    assert wait_for(lambda: inst.status()["client_inflight"] == 0, timeout=5)


def test_calls_counted_against_a_client_are_released_when_their_worker_dies(cluster):
    inst = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "1",
                   "--max-client-inflight", "4")
    c = inst.client()
    for i in range(4):
        c.send_raw(_sleep_request(i, 30))
    wait_for(lambda: inst.status()["client_inflight"] == 4, timeout=5)
    import os
    import signal
    os.kill(inst.ready_workers()[0]["pid"], signal.SIGKILL)
    codes = [protocol.loads(c.recv_raw())["error"]["code"] for _ in range(4)]
    assert codes == [protocol.WORKER_DIED] * 4
    assert inst.status()["client_inflight"] == 0
    inst.wait_ready(1)
    assert c.result("add", 1, 1) == 2


# ---------------------------------------------------------------------------- vanishing clients
@pytest.mark.parametrize("kind", [zmq.DEALER, zmq.REQ], ids=["dealer", "req"])
def test_clients_that_vanish_mid_call_leave_nothing_behind(inst, kind):
    master = psutil.Process(inst.master_pid)
    ctx = zmq.Context.instance()

    def vanish(n_clients: int, calls: int) -> None:
        for _ in range(n_clients):
            s = ctx.socket(kind)
            s.setsockopt(zmq.LINGER, 1000)  # the calls do leave before the socket closes
            s.connect(inst.tcp if kind == zmq.DEALER else inst.control)
            for i in range(calls if kind == zmq.DEALER else 1):
                s.send(_sleep_request(i, 0.2))
            s.close()

    vanish(50, 5)
    wait_for(lambda: inst.status()["client_inflight"] == 0, timeout=10)
    before = master.memory_info().rss
    served_before = sum(w["served"] for w in inst.status()["workers"])
    vanish(400, 10)
    # a vanishing socket may take some of its calls with it (linger): wait until calls arrived, then
    # until the count of answered calls stands still
    wait_for(lambda: sum(w["served"] for w in inst.status()["workers"]) > served_before, timeout=30,
             message="calls of the vanished clients reached a worker")
    last = [-1]

    def still() -> bool:
        served = sum(w["served"] for w in inst.status()["workers"])
        done, last[0] = served == last[0], served
        return done
    wait_for(still, timeout=30, interval=0.25, message="the answered count to stand still")

    def settled():
        doc = inst.status()
        return doc["client_inflight"] == 0 and doc["queued"] == 0 and all(w["inflight"] == 0 for w in doc["workers"])
    wait_for(settled, timeout=20, message="every call of the vanished clients answered and dropped")
    after = master.memory_info().rss
    print(f"\nvanishing clients ({'DEALER' if kind == zmq.DEALER else 'REQ'}): master RSS {before / 2**20:.1f} -> "
          f"{after / 2**20:.1f} MiB")
    assert after - before < 30 * 2 ** 20
    assert inst.status()["master"]["pid"] == inst.master_pid
    c = Rpc(inst.tcp)
    try:
        assert c.result("add", 1, 2) == 3
    finally:
        c.close()
