"""The HTTP and WebSocket front door of `clusterd run --http-bind`, driven by real clients over a real
port: the JSON-RPC specification's examples, status codes, WebSocket concurrency, access control,
curl, and Node when it is installed. Lifecycle (probes, reloads, crashes) is in test_http_lifecycle.py."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from clusterd import protocol

from .conftest import free_port, running_instance, wait_for
from .http_clients import HttpRpc, WsRpc

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def inst():
    port = free_port()
    with running_instance("--workers", "2", "--http-bind", f"127.0.0.1:{port}", "--max-message-size", "64K",
                          "--max-batch", "20", "--http-status", name="door") as inst:
        inst.port = port
        yield inst


@pytest.fixture
def http(inst):
    c = HttpRpc(inst.port)
    yield c
    c.close()


def post(c: HttpRpc, text: str) -> tuple[int, object]:
    status, _headers, body = c.post(text.encode())
    return status, (json.loads(body) if body else None)


# ---------------------------------------------------------------------------- the specification's examples
# https://www.jsonrpc.org/specification section 7, sent as HTTP bodies: errors answer 200 with the
# error in the body; notifications alone answer 204 with no body. (The test app has no get_data.)
SPEC_EXAMPLES = [
    ('{"jsonrpc": "2.0", "method": "subtract", "params": [42, 23], "id": 1}',
     200, {"jsonrpc": "2.0", "result": 19, "id": 1}),
    ('{"jsonrpc": "2.0", "method": "subtract", "params": [23, 42], "id": 2}',
     200, {"jsonrpc": "2.0", "result": -19, "id": 2}),
    ('{"jsonrpc": "2.0", "method": "subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}',
     200, {"jsonrpc": "2.0", "result": 19, "id": 3}),
    ('{"jsonrpc": "2.0", "method": "update", "params": [1,2,3,4,5]}', 204, None),
    ('{"jsonrpc": "2.0", "method": "foobar"}', 204, None),
    ('{"jsonrpc": "2.0", "method": "foobar", "id": "1"}',
     200, {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found: 'foobar'"}, "id": "1"}),
    ('{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]',
     200, {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}),
    ('{"jsonrpc": "2.0", "method": 1, "params": "bar"}',
     200, {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}),
    ('[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"}, {"jsonrpc": "2.0", "method"]',
     200, {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}),
    ('[]', 200, {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}),
    ('[1]', 200, [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}]),
    ('[1,2,3]', 200, [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None}] * 3),
    ('''[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]},
        {"jsonrpc": "2.0", "method": "subtract", "params": [42,23], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "get_data", "id": "9"}]''',
     200, [{"jsonrpc": "2.0", "result": 7, "id": "1"},
           {"jsonrpc": "2.0", "result": 19, "id": "2"},
           {"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request"}, "id": None},
           {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found: 'foo.get'"}, "id": "5"},
           {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found: 'get_data'"}, "id": "9"}]),
    ('''[{"jsonrpc": "2.0", "method": "notify_sum", "params": [1,2,4]},
        {"jsonrpc": "2.0", "method": "notify_hello", "params": [7]}]''', 204, None),
]


@pytest.mark.parametrize("body,status,expected", SPEC_EXAMPLES)
def test_the_specification_examples_over_http(http, body, status, expected):
    assert post(http, body) == (status, expected)


def test_worker_methods_run_on_the_worker_holding_the_connection(inst, http):
    pids = {http.result("pid") for _ in range(20)}
    assert len(pids) == 1  # one keep-alive connection: one worker
    assert pids < {w["pid"] for w in inst.status()["workers"]}


def test_master_methods_and_calls_between_workers_work_over_http(http):
    assert http.result("config") == {"greeting": "hello"}
    assert http.result("master_add", 2, 3) == 5
    assert http.result("total", 4) == 8  # the master broadcasts to both workers
    assert http.result("master_sum", 1, 1) == 2  # a worker method that calls the master


def test_errors_keep_their_codes_over_http(http):
    assert http.call("fail_rpc")["error"] == {"code": 1234, "message": "custom failure", "data": {"why": "because"}}
    assert http.call("fail", "boom")["error"]["code"] == protocol.APPLICATION_ERROR
    assert http.call("add", 1)["error"]["code"] == protocol.INVALID_PARAMS
    assert http.call("async_with_timeout", 5)["error"]["code"] == protocol.CALL_TIMEOUT
    assert http.result("async_with_timeout", 0.01) > 0  # the worker serves on after a timeout


@pytest.mark.parametrize("door", ["http", "ws"])
def test_numbers_come_back_exactly_from_a_worker_method(inst, door):
    """The short path of a plain def decodes with orjson, which reads integers past 64 bits as floats:
    such a message (at any depth, or as the id) is read exactly instead."""
    c = HttpRpc(inst.port) if door == "http" else WsRpc(inst.port)
    try:
        for value in (2 ** 70 + 1, -(2 ** 70) - 1, 2 ** 64 - 1, -(2 ** 63), [2 ** 64 + 1, 1.5],
                      {"n": 2 ** 63 * 3 + 1}, 0.1, 1e300, "12345678901234567890", True, None):
            assert json.dumps(c.result("echo", value)) == json.dumps(value)  # the same types too
        assert json.dumps(c.result("echo", x=10 ** 30 + 1)) == str(10 ** 30 + 1)
        reply = c.request({"jsonrpc": "2.0", "method": "echo", "params": [1.5], "id": 2 ** 80 + 1})
        assert json.dumps(reply) == json.dumps({"jsonrpc": "2.0", "result": 1.5, "id": 2 ** 80 + 1})
        assert c.call("echo", 1, 2)["error"]["code"] == protocol.INVALID_PARAMS
        assert c.call("add", a=1, c=2)["error"]["code"] == protocol.INVALID_PARAMS
    finally:
        c.close()


def test_the_rpc_path_answers_wrong_requests_with_http_status_codes(inst, http):
    call = b'{"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1}'
    assert http.post(call, path="/rpc")[0] == 200
    assert http.post(call, method="PUT")[0] == 405
    assert http.get("/rpc")[0] == 405
    assert http.post(call, headers={"Content-Type": "text/plain"})[0] == 415
    assert http.post(call, path="/nothing")[0] == 404
    assert http.result("add", 2, 2) == 4  # the connection is kept alive through all of these
    big = json.dumps({"jsonrpc": "2.0", "method": "echo", "params": ["x" * 70_000], "id": 1}).encode()
    status, headers, _body = http.post(big)
    assert status == 413 and headers.get("connection") == "close"


def test_a_batch_over_max_batch_is_refused_whole(http):
    batch = [{"jsonrpc": "2.0", "method": "add", "params": [i, 1], "id": i} for i in range(21)]
    reply = http.request(batch)
    assert reply["error"]["code"] == protocol.INVALID_REQUEST and reply["id"] is None
    assert len(http.request(batch[:20])) == 20


def test_keep_alive_serves_many_calls_on_one_connection(http):
    assert http.result("add", 0, 0) == 0
    sock_before = http.conn.sock
    for i in range(50):
        assert http.result("add", i, 1) == i + 1
    assert http.conn.sock is sock_before


def test_status_is_served_with_http_status(inst, http):
    status, body = http.get("/status")
    assert status == 200
    doc = json.loads(body)
    assert doc["name"] == "door" and doc["ready"] is True and len(doc["workers"]) == 2


def test_status_is_not_served_without_http_status(cluster):
    port = free_port()
    cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "1", "--http-bind",
            f"127.0.0.1:{port}", name="nostatus")
    c = HttpRpc(port)
    try:
        assert c.get("/status")[0] == 404
        assert c.get("/livez")[0] == 200
    finally:
        c.close()


# ---------------------------------------------------------------------------- WebSocket
def test_websocket_calls_are_answered_as_they_finish(inst):
    with ws_connect(f"ws://127.0.0.1:{inst.port}/ws") as ws:
        ws.send(json.dumps({"jsonrpc": "2.0", "method": "sleep", "params": [0.5], "id": "slow"}))
        ws.send(json.dumps({"jsonrpc": "2.0", "method": "config", "id": "master"}))
        for i in range(20):
            ws.send(json.dumps({"jsonrpc": "2.0", "method": "add", "params": [i, 1], "id": i}))
        answers = [json.loads(ws.recv(10)) for _ in range(22)]
    ids = [a["id"] for a in answers]
    assert ids[-1] == "slow"  # sent first, answered last: not in order
    assert {a["id"]: a["result"] for a in answers if isinstance(a["id"], int)} == {i: i + 1 for i in range(20)}
    assert next(a for a in answers if a["id"] == "master")["result"] == {"greeting": "hello"}


def test_websocket_on_the_root_path_and_batches(inst):
    c = WsRpc(inst.port, path="/")
    try:
        replies = c.request([{"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1},
                             {"jsonrpc": "2.0", "method": "master_add", "params": [3, 4], "id": 2}])
        assert sorted((r["id"], r["result"]) for r in replies) == [(1, 3), (2, 7)]
        c.send_raw(b"not json")
        assert json.loads(c.ws.recv(5))["error"]["code"] == protocol.PARSE_ERROR
    finally:
        c.close()


def test_offloaded_sync_method_leaves_the_loop_serving(inst):
    with ws_connect(f"ws://127.0.0.1:{inst.port}/ws") as ws:
        ws.send(json.dumps({"jsonrpc": "2.0", "method": "offloaded_block", "params": [1.0], "id": "slow"}))
        ws.send(json.dumps({"jsonrpc": "2.0", "method": "add", "params": [1, 1], "id": "fast"}))
        first = json.loads(ws.recv(10))
        second = json.loads(ws.recv(10))
    assert first["id"] == "fast" and second["id"] == "slow"


def test_a_plain_def_blocks_its_worker_connections_while_it_runs(inst):
    """The documented rule: a sync method holds its worker's loop (use offload=True or the ZeroMQ door)."""
    with ws_connect(f"ws://127.0.0.1:{inst.port}/ws") as ws:
        ws.send(json.dumps({"jsonrpc": "2.0", "method": "block", "params": [0.5], "id": "slow"}))
        ws.send(json.dumps({"jsonrpc": "2.0", "method": "add", "params": [1, 1], "id": "fast"}))
        assert json.loads(ws.recv(10))["id"] == "slow"
        assert json.loads(ws.recv(10))["id"] == "fast"


# ---------------------------------------------------------------------------- curl
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_calls_the_http_door(inst):
    out = subprocess.run(["curl", "-sS", "-H", "Content-Type: application/json", "-d",
                          '{"jsonrpc":"2.0","method":"add","params":[20,22],"id":1}',
                          f"http://127.0.0.1:{inst.port}/"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"jsonrpc": "2.0", "result": 42, "id": 1}
    probe = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                            f"http://127.0.0.1:{inst.port}/readyz"], capture_output=True, text=True, timeout=30)
    assert probe.stdout == "200"


# ---------------------------------------------------------------------------- unix socket
def test_unix_socket_bind_serves_http_and_is_removed_on_stop(cluster, runtime_dir):
    path = str(runtime_dir / "http.sock")
    inst = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "1",
                   "--http-bind", f"unix:{path}", name="unixdoor")
    c = HttpRpc(0, unix=path)
    try:
        assert c.result("add", 1, 2) == 3
        assert c.result("config") == {"greeting": "hello"}
    finally:
        c.close()
    assert inst.cli("stop", "--name", "unixdoor").returncode == 0
    assert inst.wait_exit(30) == 0
    assert not (runtime_dir / "http.sock").exists()


# ---------------------------------------------------------------------------- access control
@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    token_file = tmp_path_factory.mktemp("tok") / "token"
    token_file.write_text("s3cret-token_1\n")
    port = free_port()
    with running_instance("--workers", "1", "--http-bind", f"127.0.0.1:{port}", "--http-token-file",
                          str(token_file), "--http-cors", "https://app.example", name="guarded") as inst:
        inst.port = port
        yield inst


def test_a_token_is_required_on_the_rpc_path_but_not_on_probes(guarded):
    call = b'{"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1}'
    c = HttpRpc(guarded.port)
    try:
        status, headers, _ = c.post(call)
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        assert c.post(call, headers={"Authorization": "Bearer wrong"})[0] == 401
        status, headers, body = c.post(call, headers={"Authorization": "Bearer s3cret-token_1"})
        assert status == 200 and json.loads(body)["result"] == 3
        assert headers["access-control-allow-origin"] == "https://app.example"
        assert c.get("/livez")[0] == 200 and c.get("/readyz")[0] == 200
        assert c.get("/metrics")[0] == 401  # not a probe: it names the methods and the workers' memory
        status, _body = c.get("/metrics", headers={"Authorization": "Bearer s3cret-token_1"})
        assert status == 200
    finally:
        c.close()


def test_a_websocket_takes_the_token_as_a_header_or_a_subprotocol(guarded):
    url = f"ws://127.0.0.1:{guarded.port}/ws"
    call = json.dumps({"jsonrpc": "2.0", "method": "add", "params": [2, 3], "id": 1})
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(url).__enter__()
    assert refused.value.response.status_code == 401
    with ws_connect(url, additional_headers={"Authorization": "Bearer s3cret-token_1"}) as ws:
        ws.send(call)
        assert json.loads(ws.recv(10))["result"] == 5
    # what a browser can do: new WebSocket(url, ["jsonrpc", "bearer." + token])
    with ws_connect(url, subprotocols=["jsonrpc", "bearer.s3cret-token_1"],
                    additional_headers={"Origin": "https://app.example"}) as ws:
        assert ws.subprotocol == "jsonrpc"  # the token is not echoed back
        ws.send(call)
        assert json.loads(ws.recv(10))["result"] == 5
    with pytest.raises(InvalidStatus):
        ws_connect(url, subprotocols=["jsonrpc", "bearer.wrong"]).__enter__()
    with pytest.raises(InvalidStatus) as other_origin:
        ws_connect(url, subprotocols=["jsonrpc", "bearer.s3cret-token_1"],
                   additional_headers={"Origin": "https://evil.example"}).__enter__()
    assert other_origin.value.response.status_code == 403


def test_cors_preflight_is_answered(guarded):
    c = HttpRpc(guarded.port)
    try:
        status, headers, body = c.post(b"", method="OPTIONS", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization"})
        assert status == 204 and body == b""
        assert headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in headers["access-control-allow-methods"]
        assert "authorization" in headers["access-control-allow-headers"].lower()
    finally:
        c.close()


def test_a_bad_token_file_is_a_usage_error(cluster, tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for path in (str(tmp_path / "missing"), str(empty)):
        inst = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--http-bind",
                       f"127.0.0.1:{free_port()}", "--http-token-file", path, name="badtoken", start=False)
        inst.start(wait=False)
        assert inst.wait_exit(30) == 2
        assert "--http-token-file" in inst.stderr() and "Traceback" not in inst.stderr()


def test_a_port_in_use_fails_with_one_line(cluster):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        inst = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--http-bind",
                       f"127.0.0.1:{busy.getsockname()[1]}", name="portbusy", start=False)
        inst.start(wait=False)
        assert inst.wait_exit(30) == 1
        err = inst.stderr()
        assert "cannot listen" in err and "Traceback" not in err
    finally:
        busy.close()


def test_a_bad_http_bind_is_a_usage_error(cluster):
    inst = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--http-bind", "nonsense",
                   name="badbind", start=False)
    inst.start(wait=False)
    assert inst.wait_exit(30) == 2
    assert "--http-bind" in inst.stderr() and "Traceback" not in inst.stderr()


# ---------------------------------------------------------------------------- Node
NODE_CLIENT = r"""
const port = process.argv[2];
const call = (method, params, id) => JSON.stringify({jsonrpc: "2.0", method, params, id});
(async () => {
  const res = await fetch(`http://127.0.0.1:${port}/`, {method: "POST",
    headers: {"Content-Type": "application/json"}, body: call("add", [40, 2], 1)});
  const viaFetch = (await res.json()).result;
  let viaWs = null;
  if (typeof WebSocket !== "undefined") {
    viaWs = await new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`);
      ws.onopen = () => ws.send(call("master_add", [1, 2], 2));
      ws.onmessage = (event) => { ws.close(); resolve(JSON.parse(event.data).result); };
      ws.onerror = (event) => reject(new Error("websocket error"));
    });
  }
  console.log(JSON.stringify({fetch: viaFetch, ws: viaWs}));
})().catch((err) => { console.error(err); process.exit(1); });
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_a_node_client_calls_over_fetch_and_websocket(inst, tmp_path):
    script = tmp_path / "client.js"
    script.write_text(NODE_CLIENT)
    # Node 20 has fetch; its WebSocket (undici's) is behind a flag until Node 22
    version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    flags = ["--experimental-websocket"] if version.startswith("v20.") or version.startswith("v21.") else []
    out = subprocess.run(["node", *flags, str(script), str(inst.port)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["fetch"] == 42
    if result["ws"] is None:
        pytest.skip(f"node {version} has no WebSocket client: only fetch was checked")
    assert result["ws"] == 3


def test_many_connections_are_spread_over_the_workers(inst):
    pids: set[int] = set()
    lock = threading.Lock()

    def one() -> None:
        c = HttpRpc(inst.port)
        try:
            pid = c.result("pid")
            with lock:
                pids.add(pid)
        finally:
            c.close()

    deadline = time.monotonic() + 20
    while len(pids) < 2 and time.monotonic() < deadline:
        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(pids) == 2


def test_the_token_is_rotated_by_a_reload(cluster, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("first-token")
    port = free_port()
    inst = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "1", "--http-bind",
                   f"127.0.0.1:{port}", "--http-token-file", str(token_file), name="rotate")
    call = b'{"jsonrpc": "2.0", "method": "add", "params": [1, 2], "id": 1}'

    def status_with(token: str) -> int:
        c = HttpRpc(port)
        try:
            return c.post(call, headers={"Authorization": f"Bearer {token}"})[0]
        finally:
            c.close()

    assert status_with("first-token") == 200
    token_file.write_text("second-token")
    assert inst.cli("reload", "--name", "rotate").returncode == 0
    assert status_with("first-token") == 401
    assert status_with("second-token") == 200


def test_the_status_document_counts_each_workers_http_calls(inst, http):
    pid = http.result("pid")

    def figures() -> dict:
        return next(w for w in inst.status()["workers"] if w["pid"] == pid)["http"] or {"served": 0}
    before = figures()["served"]
    for i in range(30):
        http.result("add", i, 1)
    after = wait_for(lambda: (lambda f: f if f["served"] >= before + 30 else None)(figures()), timeout=10,
                     message="HTTP calls in the status document")
    assert after["connections"] >= 1 and after["inflight"] == 0


def test_log_calls_logs_http_and_websocket_calls_too(cluster):
    port = free_port()
    inst = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "1", "--http-bind",
                   f"127.0.0.1:{port}", "--log-format", "json", "--log-calls", name="httplog")
    c = HttpRpc(port)
    try:
        assert c.result("add", 1, 2) == 3
        assert c.call("fail", "boom")["error"]["code"] == protocol.APPLICATION_ERROR
    finally:
        c.close()
    with ws_connect(f"ws://127.0.0.1:{port}/ws") as ws:
        ws.send(json.dumps({"jsonrpc": "2.0", "method": "sleep", "params": [0.01], "id": 1}))
        assert json.loads(ws.recv(10))["result"] > 0

    def access() -> list[dict]:
        lines = [json.loads(line) for line in inst.stderr().splitlines() if line.startswith("{")]
        found = [r for r in lines if r.get("logger") == "clusterd.access"]
        return found if len(found) >= 3 else []
    lines = wait_for(access, message="access lines")
    assert [(r["method"], r["msg"].split()[1]) for r in lines] == [("add", "ok"), ("fail", "error"), ("sleep", "ok")]


def test_metrics_on_the_http_port_count_http_and_websocket_calls(inst, http):
    assert http.result("add", 40, 2) == 42
    with ws_connect(f"ws://127.0.0.1:{inst.port}/ws") as ws:
        ws.send(json.dumps({"jsonrpc": "2.0", "method": "add", "params": [1, 1], "id": 1}))
        assert json.loads(ws.recv(10))["result"] == 2

    def counted() -> str | None:
        status, body = http.get("/metrics")
        text = body.decode()
        lines = [line for line in text.splitlines() if line.startswith("clusterd_calls_total{")
                 and 'method="add"' in line and 'outcome="ok"' in line]
        return text if status == 200 and any('door="http"' in x for x in lines) and any(
            'door="ws"' in x for x in lines) else None
    text = wait_for(counted, timeout=15, message="HTTP and WebSocket calls in /metrics")
    assert "clusterd_workers" in text
