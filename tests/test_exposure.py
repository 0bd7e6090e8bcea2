"""What a caller can reach, and where: only @rpc methods (no attribute walking), admin methods only on
control.sock, runtime files private to the user, tracebacks only with --debug.

The same rules hold on every front door: the tests that take `client` or `door` run over control.sock
(where the admin methods are), a ZeroMQ --bind, and the HTTP and WebSocket door of --http-bind."""

from __future__ import annotations

import stat

import pytest

from clusterd import protocol

from .conftest import free_port, running_instance, wait_for
from .http_clients import HttpRpc, WsRpc

PRIVATE_NAMES = [
    # worker: plain methods, private and dunder attributes, lifecycle hooks, injected attributes
    "hidden", "_private", "__init__", "__class__", "__dict__", "__module__", "__getattribute__", "__reduce__",
    "start_services", "stop_services", "master", "workers", "slot", "generation", "counter",
    # master: plain methods, hooks and internals
    "not_exposed", "on_worker_ready", "on_worker_exit", "shared_block", "_router", "settings", "name",
    # attribute walking through dotted names
    "a.b", "add.__globals__", "add.__code__", "config.__self__", "__class__.__init__", "__class__.__mro__",
    "workers.call", "workers.broadcast", "master.call", "master.notify", "_router.supervisor",
    "endpoint.not_exposed", "dispatcher.target.hidden", "Worker.hidden", "tests.apps.basic.Worker.hidden",
    # internal methods meant for workers only, and look-alikes of admin methods
    "clusterd.workers.call", "clusterd.workers.call_slot", "clusterd.workers.broadcast",
    "clusterd.workers.call_shared", "clusterd.shared_block", "clusterd.admin_status", "clusterd.status.x",
    "clusterd._internal", "clusterd.__class__", "clusterd.", "admin_status", "admin_stop", "request_stop",
]
ADMIN = ["clusterd.status", "clusterd.reload", "clusterd.reload_wait", "clusterd.scale", "clusterd.stop"]


@pytest.fixture(scope="module")
def inst():
    port, http_port = free_port(), free_port()
    with running_instance("--workers", "1", "--bind", f"tcp://127.0.0.1:{port}",
                          "--http-bind", f"127.0.0.1:{http_port}", name="exposed") as inst:
        inst.tcp = f"tcp://127.0.0.1:{port}"
        inst.http_port = http_port
        yield inst


def door_client(inst, door: str):
    """A client of one front door: control.sock, the ZeroMQ --bind, HTTP or WebSocket."""
    if door == "http":
        return HttpRpc(inst.http_port)
    if door == "ws":
        return WsRpc(inst.http_port)
    return inst.client(inst.control if door == "control" else inst.tcp)


@pytest.fixture(params=["control", "tcp", "http", "ws"])
def client(request, inst):
    c = door_client(inst, request.param)
    yield c
    c.close()


@pytest.fixture(params=["tcp", "http", "ws"])
def door(request, inst):
    """A client of each door other than control.sock: the admin methods must not be reachable there."""
    c = door_client(inst, request.param)
    yield c
    c.close()


def test_rpc_methods_of_master_and_worker_are_reachable_on_both_endpoints(client):
    assert client.result("add", 1, 2) == 3
    assert client.result("config") == {"greeting": "hello"}


@pytest.mark.parametrize("name", PRIVATE_NAMES)
def test_nothing_but_rpc_methods_is_reachable(client, name):
    params = ["add", [1, 2]] if name.startswith("clusterd.workers") else []
    reply = client.call(name, *params)
    assert reply["error"]["code"] == protocol.METHOD_NOT_FOUND, reply
    assert "data" not in reply["error"]


def test_private_names_in_a_batch_are_not_reachable_either(client):
    batch = [{"jsonrpc": "2.0", "method": name, "id": i} for i, name in enumerate(PRIVATE_NAMES)]
    replies = client.request(batch)
    assert len(replies) == len(PRIVATE_NAMES)
    assert {r["error"]["code"] for r in replies} == {protocol.METHOD_NOT_FOUND}


@pytest.mark.parametrize("method", ADMIN)
def test_admin_methods_answer_method_not_found_on_a_bind(inst, door, method):
    c = door
    params = {"clusterd.scale": [5], "clusterd.stop": [0.1], "clusterd.reload_wait": [1]}.get(method, [])
    reply = c.call(method, *params)
    assert reply["error"]["code"] == protocol.METHOD_NOT_FOUND, reply
    batch = c.request([{"jsonrpc": "2.0", "method": method, "params": params, "id": 1}])
    assert batch[0]["error"]["code"] == protocol.METHOD_NOT_FOUND
    c.send_raw(protocol.dumps({"jsonrpc": "2.0", "method": method, "params": params}))  # as a notification
    assert c.result("add", 2, 2) == 4
    doc = inst.status()
    assert doc["state"] == "running" and len(doc["workers"]) == 1  # nothing was scaled, stopped or reloaded
    assert doc["generation"] == 1


def test_admin_methods_work_on_control_sock(inst):
    assert inst.client().result("clusterd.status")["name"] == "exposed"


def test_runtime_files_are_private_to_the_user(inst):
    def mode(path):
        return stat.S_IMODE(path.stat().st_mode)
    assert mode(inst.dir) == 0o700
    assert mode(inst.dir / "control.sock") == 0o600
    assert mode(inst.dir / "workers.sock") == 0o600
    assert stat.S_ISSOCK((inst.dir / "control.sock").stat().st_mode)


def test_errors_carry_no_traceback_without_debug(client):
    for method, params in (("fail", ["boom"]), ("master_add", ["a", 1])):
        error = client.call(method, *params)["error"]
        assert error["code"] == protocol.APPLICATION_ERROR
        assert "traceback" not in (error.get("data") or {})
        assert "Traceback" not in str(error) and ".py" not in str(error)


def test_tracebacks_reach_callers_only_with_debug():
    port = free_port()
    with running_instance("--workers", "1", "--debug", "--bind", f"tcp://127.0.0.1:{port}", name="dbg2") as inst:
        c = inst.client(f"tcp://127.0.0.1:{port}")
        for method, params in (("fail", ["boom"]), ("master_add", ["a", 1])):
            error = c.call(method, *params)["error"]
            assert error["code"] == protocol.APPLICATION_ERROR
            assert "Traceback" in error["data"]["traceback"]


def test_a_bind_reachable_from_other_hosts_without_keys_is_warned_about():
    port = free_port()
    with running_instance("--workers", "1", "--bind", f"tcp://0.0.0.0:{port}", name="wide") as inst:
        wait_for(lambda: "reachable from other hosts" in inst.stderr(), timeout=5)
