"""One request never disables a worker or a socket (issue 12, item 2), and a worker's call to its
master is never forwarded back to a worker (item 10): real masters and workers, over control.sock
and a --bind DEALER; after each hostile call the same worker still serves and the status is right."""

from __future__ import annotations

import asyncio
import json
import math
import re
import sys

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterd import exactjson, protocol
from clusterd.zmqloop import SocketReader

from .conftest import ROOT, Rpc, free_port, running_instance, wait_for

DEEP = 1000
LONG = "1234567890123456789"   # 19 digits: the messages that take the exact (big integer) path


@pytest.fixture(scope="module")
def inst():
    port = free_port()
    with running_instance("--workers", "1", "--bind", f"tcp://127.0.0.1:{port}", master="tests.apps.hardening:Master",
                          worker="tests.apps.hardening:Worker", name="hard") as inst:
        inst.tcp = f"tcp://127.0.0.1:{port}"
        yield inst


@pytest.fixture(params=["control", "tcp"])
def client(request, inst):
    c = Rpc(inst.control if request.param == "control" else inst.tcp)
    yield c
    c.close()


def _worker(inst) -> dict:
    (worker,) = inst.status()["workers"]
    return worker


def assert_still_serving(inst, client, pid: int) -> None:
    """The same worker answers later calls, and the status says it is ready."""
    for _ in range(3):
        assert client.result("pid") == pid
    worker = _worker(inst)
    assert worker["pid"] == pid and worker["state"] == "ready", worker
    assert inst.status()["state"] == "running"
    assert wait_for(lambda: inst.status()["client_inflight"] == 0, 5, message="no call left in flight")


def _raw_call(client: Rpc, method: str, params: bytes, rid: int = 7) -> dict:
    client.send_raw(b'{"jsonrpc":"2.0","id":%d,"method":"%s","params":%s}' % (rid, method.encode(), params))
    return protocol.loads(client.recv_raw(10))


@pytest.mark.parametrize("method", ["echo", "m_echo"])
def test_request_nested_a_thousand_deep_around_a_long_integer_is_answered(inst, client, method):
    pid = client.result("pid")
    value = b"[" * DEEP + LONG.encode() + b"]" * DEEP
    reply = _raw_call(client, method, b"[" + value + b"]")
    assert reply["id"] == 7 and "error" not in reply, reply
    assert protocol.dumps(reply["result"]) == value  # exact, at full depth
    assert_still_serving(inst, client, pid)


@pytest.mark.parametrize("method", ["echo", "m_echo"])
def test_integers_up_to_the_digit_limit_round_trip_and_past_it_are_a_clear_parse_error(inst, client, method):
    pid = client.result("pid")
    limit = sys.get_int_max_str_digits()
    for digits in (20, 400, limit):  # past 309 digits orjson cannot even read the number as a float
        n = int("9" * digits)
        reply = _raw_call(client, method, b"[%d]" % n)
        assert reply.get("result") == n, (digits, str(reply)[:200])
    reply = _raw_call(client, method, b"[" + b"9" * (limit + 1) + b"]")
    assert reply["error"]["code"] == protocol.PARSE_ERROR, reply
    assert str(limit) in reply["error"]["data"]
    assert_still_serving(inst, client, pid)


@pytest.mark.parametrize("prefix", ["", "m_"])
@pytest.mark.parametrize("suffix", ["", "_async"])
def test_results_json_cannot_carry_are_internal_errors_and_the_worker_serves_on(inst, client, prefix, suffix):
    pid = client.result("pid")
    factorial, cycle = f"{prefix}factorial{suffix}", f"{prefix}cycle{suffix}"
    assert client.result(factorial, 1000) == math.factorial(1000)  # 2,568 digits: exact
    assert client.result(factorial, 25) == math.factorial(25)
    too_long = client.call(factorial, 2000)  # 5,736 digits: past sys.get_int_max_str_digits()
    assert too_long["error"]["code"] == protocol.INTERNAL_ERROR, too_long
    assert str(sys.get_int_max_str_digits()) in too_long["error"]["data"]
    cyclic = client.call(cycle)
    assert cyclic["error"]["code"] == protocol.INTERNAL_ERROR, cyclic
    assert "circular" in cyclic["error"]["data"]
    assert_still_serving(inst, client, pid)


def test_a_workers_call_to_a_method_the_master_lacks_is_method_not_found(inst, client):
    pid = client.result("pid")
    served = _worker(inst)["served"]
    for method in ("echo", "no_such_method", "clusterd.no_such_method"):
        reply = client.call("master_call", method, timeout=10)
        assert reply["error"]["code"] == protocol.METHOD_NOT_FOUND, reply
        assert method in reply["error"]["message"], reply
    assert client.result("master_call", "m_echo") is None  # a master method is answered by the master
    assert_still_serving(inst, client, pid)
    assert _worker(inst)["served"] == served + 4 + 3  # nothing was forwarded back to the worker


# ---------------------------------------------------------------------------- README's example
def _readme_service() -> str:
    """The Python block under "Writing a service" in README.md, exactly as printed."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Writing a service", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README.md's 'Writing a service' has no python block"
    return match.group(1)


def test_readme_service_example_runs_as_printed(cluster, tmp_path):
    source = _readme_service()
    path = re.match(r"# (\S+)\.py\n", source)
    assert path, "the example starts with its file name"
    module = tmp_path / f"{path.group(1)}.py"
    module.parent.mkdir(parents=True, exist_ok=True)
    (module.parent / "__init__.py").touch()
    module.write_text(source)
    name = path.group(1).replace("/", ".")
    inst = cluster(f"{name}:Master", f"{name}:Worker", "--workers", "2", cwd=tmp_path, name="readme")
    c = inst.client()
    workers = inst.wait_ready(2)
    assert c.result("fib", 20) == 6765
    assert c.result("config") == {"greeting": "hello"}
    greeting = c.result("greet", "ann")
    assert greeting.startswith("hello, ann"), greeting
    assert c.result("pids") == {str(w["slot"]): w["pid"] for w in workers}
    assert c.call("fib", -1)["error"]["code"] == protocol.INVALID_PARAMS
    assert inst.status()["client_inflight"] == 0


# ---------------------------------------------------------------------------- the pieces, alone
json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
    | st.integers() | st.integers(min_value=2 ** 64, max_value=10 ** 400) | st.integers(max_value=-(2 ** 63) - 1),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(value=json_values)
def test_exact_json_round_trips_what_the_standard_library_does(value):
    text = json.dumps(value)
    assert exactjson._loads_flat(text) == json.loads(text)
    assert protocol.loads(protocol.dumps(value)) == value
    assert protocol.loads(exactjson.dumps(value)) == value


def test_exact_json_has_no_depth_limit_of_its_own_below_orjsons():
    deep = "[" * exactjson.MAX_DEPTH + "123456789012345678901" + "]" * exactjson.MAX_DEPTH
    assert exactjson.dumps(protocol.loads(deep)) == deep.encode()
    with pytest.raises(ValueError):
        protocol.loads("[" + deep + "]")  # past orjson's depth too: refused by both, as bad input


def test_a_reader_survives_a_handler_that_raises():
    async def run() -> list:
        ctx = zmq.Context.instance()
        pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
        pull.bind("inproc://hardening-reader")
        push.connect("inproc://hardening-reader")
        seen: list = []
        done = asyncio.get_running_loop().create_future()

        def handler(frames):
            seen.append(frames[0])
            if frames[0] == b"last":
                done.set_result(None)
            raise RecursionError("a handler fault")

        reader = SocketReader(asyncio.get_running_loop(), pull, handler)
        for payload in (b"one", b"two", b"last"):
            push.send(payload)
        await asyncio.wait_for(done, 5)
        reader.close()
        pull.close(0)
        push.close(0)
        return seen
    assert asyncio.run(run()) == [b"one", b"two", b"last"]
