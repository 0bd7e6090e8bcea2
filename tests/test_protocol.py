"""JSON-RPC 2.0 as the specification says, on a --bind endpoint and on control.sock, with DEALER and
REQ clients; what user code raises; and which methods are reachable at all (DESIGN.md 2 and 7).

One instance serves every test here: none of them changes its state."""

from __future__ import annotations

import os
import stat

import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from clusterd import protocol
from clusterd.endpoint import Dispatcher, rpc
from clusterd.protocol import NO_ID
from tests.conftest import Rpc, free_port, running_instance

QUIET = 0.3  # seconds to listen for an answer that must not come (absence can only be observed so)


@pytest.fixture(scope="module")
def port():
    return free_port()


@pytest.fixture(scope="module")
def inst(port):
    with running_instance("--workers", "2", "--bind", f"tcp://127.0.0.1:{port}", name="proto") as inst:
        yield inst


@pytest.fixture(scope="module")
def debug_inst():
    with running_instance("--workers", "1", "--debug", name="dbg") as inst:
        yield inst


@pytest.fixture(params=["bind", "control"])
def client(request, inst, port):
    """A DEALER on the --bind endpoint, then on control.sock: both must speak the same protocol."""
    address = f"tcp://127.0.0.1:{port}" if request.param == "bind" else inst.control
    c = Rpc(address)
    yield c
    c.close()


@pytest.fixture
def public(inst, port):
    c = Rpc(f"tcp://127.0.0.1:{port}")
    yield c
    c.close()


@pytest.fixture
def control(inst):
    c = Rpc(inst.control)
    yield c
    c.close()


def raw(c: Rpc, text: str) -> object:
    c.send_raw(text.encode())
    return protocol.loads(c.recv_raw())


def assert_silent(c: Rpc) -> None:
    """Nothing more arrives: a sentinel call is answered, and nothing follows it."""
    sentinel = {"jsonrpc": "2.0", "method": "echo", "params": ["sentinel"], "id": "sentinel"}
    assert c.request(sentinel) == {"jsonrpc": "2.0", "result": "sentinel", "id": "sentinel"}
    assert not c.sock.poll(int(QUIET * 1000)), f"unexpected answer: {c.sock.recv()!r}"


def error_of(reply: dict, code: int, rid=None) -> dict:
    assert reply["jsonrpc"] == "2.0" and "result" not in reply, reply
    assert reply["id"] == rid, reply
    assert reply["error"]["code"] == code, reply
    assert isinstance(reply["error"]["message"], str) and reply["error"]["message"], reply
    return reply["error"]


# ---------------------------------------------------------------------------- specification, section 7
def test_positional_params(client):
    assert raw(client, '{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}') == \
        {"jsonrpc": "2.0", "result": 19, "id": 1}
    assert raw(client, '{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}') == \
        {"jsonrpc": "2.0", "result": -19, "id": 2}


def test_named_params(client):
    assert raw(client, '{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, '
                       '"id": 3}') == {"jsonrpc": "2.0", "result": 19, "id": 3}
    assert raw(client, '{"jsonrpc": "2.0", "method": "subtract", "params": {"minuend": 42, "subtrahend": 23}, '
                       '"id": 4}') == {"jsonrpc": "2.0", "result": 19, "id": 4}


def test_notifications_get_no_answer(client):
    client.send_raw(b'{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}')
    client.send_raw(b'{"jsonrpc": "2.0", "method": "foobar"}')
    client.send_raw(b'{"jsonrpc": "2.0", "method": "echo", "params": [1]}')          # a worker method
    client.send_raw(b'{"jsonrpc": "2.0", "method": "config"}')                        # a master method
    client.send_raw(b'{"jsonrpc": "2.0", "method": "subtract", "params": [1]}')       # wrong arity
    client.send_raw(b'{"jsonrpc": "2.0", "method": "fail", "params": ["quiet"]}')     # raises
    assert_silent(client)


def test_non_existent_method(client):
    assert raw(client, '{"jsonrpc": "2.0", "method": "foobar", "id": "1"}') == \
        {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found: 'foobar'"}, "id": "1"}


def test_invalid_json(client):
    reply = raw(client, '{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]')
    assert reply == {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}


def test_invalid_request_object(client):
    reply = raw(client, '{"jsonrpc": "2.0", "method": 1, "params": "bar"}')
    assert reply == {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}


def test_batch_invalid_json(client):
    reply = raw(client, '[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},'
                        '{"jsonrpc": "2.0", "method"]')
    assert reply == {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}


def test_empty_batch(client):
    assert raw(client, "[]") == {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"},
                                 "id": None}


def test_invalid_batch_of_one(client):
    assert raw(client, "[1]") == [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"},
                                   "id": None}]


def test_invalid_batch_of_three(client):
    invalid = {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}
    assert raw(client, "[1,2,3]") == [invalid, invalid, invalid]


def test_mixed_batch(client):
    reply = raw(client, """[
        {"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"},
        {"jsonrpc": "2.0", "method": "config", "id": 10},
        {"jsonrpc": "2.0", "method": "echo", "params": ["quiet"]}
    ]""")
    assert isinstance(reply, list) and len(reply) == 6, reply
    by_id = {}
    for item in reply:
        assert item["jsonrpc"] == "2.0"
        by_id.setdefault(item["id"], []).append(item)
    assert by_id["1"] == [{"jsonrpc": "2.0", "result": 7, "id": "1"}]
    assert by_id["2"] == [{"jsonrpc": "2.0", "result": 19, "id": "2"}]
    assert by_id[None] == [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}]
    assert by_id["5"][0]["error"]["code"] == -32601
    assert by_id["9"][0]["error"]["code"] == -32601
    assert by_id[10] == [{"jsonrpc": "2.0", "result": {"greeting": "hello"}, "id": 10}]


def test_batch_of_only_notifications_gets_no_answer(client):
    client.send_raw(b'[{"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},'
                    b'{"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},'
                    b'{"jsonrpc": "2.0", "method": "echo", "params": [7]},'
                    b'{"jsonrpc": "2.0", "method": "config"}]')
    assert_silent(client)


# ---------------------------------------------------------------------------- ids, params, errors
@pytest.mark.parametrize("rid", ["abc", "", 7, 0, -3, 2.5, None, 2 ** 53, 2 ** 64 - 1, 2 ** 70, -(2 ** 70)])
def test_id_of_each_type_comes_back_unchanged(client, rid):
    reply = client.request({"jsonrpc": "2.0", "method": "add", "params": [2, 3], "id": rid})
    assert reply == {"jsonrpc": "2.0", "result": 5, "id": rid}
    reply = client.request({"jsonrpc": "2.0", "method": "master_add", "params": [2, 3], "id": rid})
    assert reply == {"jsonrpc": "2.0", "result": 5, "id": rid}


@pytest.mark.parametrize("rid", [True, [1], {"a": 1}])
def test_id_of_a_wrong_type_is_an_invalid_request(client, rid):
    error_of(client.request({"jsonrpc": "2.0", "method": "add", "params": [2, 3], "id": rid}), -32600)


@pytest.mark.parametrize("message", [
    {"method": "add", "params": [1, 2], "id": 1},                         # no jsonrpc member
    {"jsonrpc": "1.0", "method": "add", "params": [1, 2], "id": 1},
    {"jsonrpc": 2.0, "method": "add", "params": [1, 2], "id": 1},
    {"jsonrpc": "2.0", "params": [1, 2], "id": 1},                        # no method
    {"jsonrpc": "2.0", "method": None, "id": 1},
    {"jsonrpc": "2.0", "method": "add", "params": 3, "id": 1},            # params neither array nor object
    {"jsonrpc": "2.0", "method": "add", "params": "1,2", "id": 1},
])
def test_malformed_request_keeps_its_id(client, message):
    error_of(client.request(message), -32600, rid=1)


@pytest.mark.parametrize("text", ['"just a string"', "42", "null", "true"])
def test_json_that_is_not_a_request(client, text):
    error_of(raw(client, text), -32600)


def test_invalid_utf8_is_a_parse_error(client):
    client.send_raw(b'{"jsonrpc": "2.0", "method": "echo", "params": ["\xff\xfe"], "id": 1}')
    error_of(protocol.loads(client.recv_raw()), -32700)


@pytest.mark.parametrize("method,params,why", [
    ("subtract", [1], "too few"),
    ("subtract", [1, 2, 3], "too many"),
    ("subtract", {"minuend": 1}, "missing named"),
    ("subtract", {"minuend": 1, "subtrahend": 2, "extra": 3}, "unknown named"),
    ("pid", [1], "none expected"),
    ("master_add", [1], "master method, too few"),
    ("master_add", {"a": 1, "c": 2}, "master method, unknown named"),
    ("config", [1], "async master method, too many"),
])
def test_wrong_params_are_invalid_params_not_application_errors(client, method, params, why):
    reply = client.request({"jsonrpc": "2.0", "method": method, "params": params, "id": why})
    error_of(reply, -32602, rid=why)


def test_integers_past_64_bits_stay_exact(client):
    big = 2 ** 70 + 1
    assert client.result("add", big, 1) == big + 1
    assert client.result("master_add", big, -big) == 0
    assert client.result("echo", {"n": big}) == {"n": big}


def test_varargs_method_takes_any_number_of_params(client):
    assert client.result("sum") == 0
    assert client.result("sum", *range(100)) == sum(range(100))


def test_exception_becomes_application_error_without_traceback(client):
    error = error_of(client.call("fail", "boom"), -32000, rid=client._id)
    assert error["data"]["type"] == "ValueError"
    assert error["data"]["message"] == "boom"
    assert "traceback" not in error["data"]
    assert "Traceback" not in protocol.dumps(error).decode()


def test_exception_carries_traceback_with_debug(debug_inst):
    c = debug_inst.client()
    error = error_of(c.call("fail", "boom"), -32000, rid=1)
    assert error["data"]["type"] == "ValueError" and error["data"]["message"] == "boom"
    assert "Traceback" in error["data"]["traceback"] and "raise ValueError(message)" in error["data"]["traceback"]


def test_rpc_error_passes_code_message_and_data_exactly(client):
    reply = client.call("fail_rpc")
    assert reply == {"jsonrpc": "2.0", "error": {"code": 1234, "message": "custom failure", "data": {"why": "because"}},
                     "id": client._id}


def test_result_json_cannot_carry_becomes_internal_error():
    from clusterd.endpoint import encode_response
    reply = protocol.loads(encode_response({"jsonrpc": "2.0", "result": {1, 2}, "id": 9}))
    error_of(reply, -32603, rid=9)


# ---------------------------------------------------------------------------- envelopes
@pytest.mark.parametrize("where", ["bind", "control"])
def test_req_client_works_like_dealer(inst, port, where):
    c = inst.client(f"tcp://127.0.0.1:{port}" if where == "bind" else inst.control, kind=zmq.REQ)
    for i in range(3):  # REQ enforces send/recv lockstep: each answer must carry the empty delimiter
        assert c.result("subtract", 10, i) == 10 - i
        assert c.result("config") == {"greeting": "hello"}
    c.send_raw(b"[]")
    error_of(protocol.loads(c.recv_raw()), -32600)


def test_extra_message_parts_are_answered_with_the_same_envelope(client):
    payload = b'{"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1}'
    client.send_raw([b"tag", b"", payload])
    assert client.sock.poll(5000)
    frames = client.sock.recv_multipart()
    assert frames[:-1] == [b"tag", b""]
    assert protocol.loads(frames[-1]) == {"jsonrpc": "2.0", "result": 3, "id": 1}


def test_odd_frames_do_not_harm_the_master(client):
    for frames in ([b""], [b"", b""], [b"\x00" * 10, b"{"], [b"x"] * 20, [b"", b"", b"[1]"]):
        client.send_raw(frames)
        if client.sock.poll(500):
            while client.sock.poll(50):
                client.sock.recv_multipart()
    assert client.result("add", 20, 22) == 42


def test_flood_of_unknown_methods_leaves_the_master_serving(client):
    n = 2000
    for i in range(n):
        client.send_raw(protocol.dumps({"jsonrpc": "2.0", "method": f"nope{i}", "id": i}))
    seen = 0
    while seen < n:
        reply = protocol.loads(client.recv_raw())
        assert reply["error"]["code"] == -32601
        seen += 1
    assert client.result("master_add", 1, 1) == 2


# ---------------------------------------------------------------------------- exposure
@pytest.mark.parametrize("method", ["hidden", "_private", "__init__", "__class__", "__dict__", "__module__",
                                    "start_services", "stop_services", "sum_all", "not_exposed",
                                    "on_worker_ready", "on_worker_exit", "shared_block", "workers", "master",
                                    "settings", "ready_events", "counter", "slot", "dispatcher", "_router",
                                    "config.__class__", "__getattribute__"])
def test_only_rpc_methods_are_reachable(client, method):
    error_of(client.call(method), -32601, rid=client._id)


@pytest.mark.parametrize("method", ["clusterd.status", "clusterd.stop", "clusterd.scale", "clusterd.reload",
                                    "clusterd.reload_wait"])
def test_admin_methods_are_not_found_on_a_bind_endpoint(public, inst, method):
    error_of(public.call(method), -32601, rid=public._id)
    assert inst.status()["state"] == "running"


@pytest.mark.parametrize("method", ["clusterd.workers.call", "clusterd.workers.call_slot",
                                    "clusterd.workers.broadcast", "clusterd.workers.call_shared",
                                    "clusterd.shared_block", "clusterd.nope"])
def test_worker_internal_methods_are_not_reachable_from_clients(client, method):
    error_of(client.call(method, "pid", []), -32601, rid=client._id)


def test_admin_methods_work_on_control_sock(control, inst):
    doc = control.result("clusterd.status")
    assert doc["name"] == "proto" and doc["state"] == "running"
    assert control.result("clusterd.scale", workers=2) == {"from": 2, "to": 2}
    # reachable, and checks its params like any method
    error_of(control.call("clusterd.scale", workers="lots"), -32602, rid=control._id)


def test_control_socket_is_private(inst):
    sock = inst.dir / "control.sock"
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(inst.dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(inst.runtime_dir).st_mode) & 0o077 == 0


# ---------------------------------------------------------------------------- the pure protocol module
def test_parse_request_accepts_every_valid_shape():
    assert protocol.parse_request({"jsonrpc": "2.0", "method": "m"}).id is NO_ID
    assert protocol.parse_request({"jsonrpc": "2.0", "method": "m", "id": None}).id is None
    req = protocol.parse_request({"jsonrpc": "2.0", "method": "m", "params": {"a": 1}, "id": "x"})
    assert (req.method, req.params, req.id) == ("m", {"a": 1}, "x")


def test_loads_is_exact_and_strict():
    assert protocol.loads(b'{"id": 1180591620717411303425}')["id"] == 2 ** 70 + 1
    assert protocol.loads('[18446744073709551616, "12345678901234567890"]') == [2 ** 64, "12345678901234567890"]
    for bad in (b"[NaN]", b"[Infinity]", b"{", b"", b"\xff"):
        with pytest.raises(ValueError):
            protocol.loads(bad)
    with pytest.raises(ValueError):
        protocol.loads(b"[NaN, 12345678901234567890123]")


def test_notification_error_responses_carry_null_id():
    assert protocol.error_response(NO_ID, -32601)["id"] is None


def test_dispatcher_checks_arity_before_calling():
    class Thing:
        called = False

        @rpc
        def one(self, a, *, b=1):
            Thing.called = True

        @rpc(name="renamed")
        def other(self, **kw):
            return kw

    d = Dispatcher(Thing())
    for params in ([], [1, 2], {"b": 2}, {"a": 1, "c": 2}):
        prepared = d.prepare(protocol.Request("one", params, 1))
        assert isinstance(prepared, dict) and prepared["error"]["code"] == -32602, params
    assert not Thing.called
    assert "other" not in d.methods and "renamed" in d.methods
    assert not isinstance(d.prepare(protocol.Request("renamed", {"anything": 1}, 1)), dict)


@given(st.binary(max_size=120) | st.lists(st.sampled_from([b"1", b"9", b"0", b" ", b"x", b"-", b"\xd9"]),
                                           max_size=60).map(b"".join))
def test_long_digit_runs_are_found_as_the_regular_expression_finds_them(data):
    import re

    from clusterd.protocol import has_long_digits
    assert has_long_digits(data) == (re.search(rb"\d{19}", data) is not None)
    assert has_long_digits(bytearray(data)) == has_long_digits(data)
