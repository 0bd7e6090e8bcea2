"""clusterd.httpdoor on its own: a fake dispatcher behind a real listening socket, real clients.

The door runs in its own thread and event loop; clients (http.client, raw sockets, the
``websockets`` client, curl, Node) talk to it over real TCP and unix sockets.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect
from websockets.sync.client import unix_connect as ws_unix_connect

from clusterd.httpdoor import BindError, HttpDoor, Probes, open_listener, parse_bind
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(30)

JSON_HEADERS = {"Content-Type": "application/json"}


class FakeWorker:
    """A JSON-RPC dispatcher in miniature: echo, hold/release (named gates), fail, notifications, batches."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.calls = 0

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())

    async def one(self, request: dict[str, Any]) -> dict[str, Any] | None:
        self.calls += 1
        method, params = request.get("method"), request.get("params", [])
        if method == "hold":
            await self.gate(params[0]).wait()
            result: Any = f"released {params[0]}"
        elif method == "release":
            self.gate(params[0]).set()
            result = "ok"
        elif method == "fail":
            raise RuntimeError("dispatcher bug")
        else:
            result = params
        if "id" not in request:
            return None
        return {"jsonrpc": "2.0", "result": result, "id": request["id"]}

    def dispatch(self, payload: bytes) -> Any:
        """Like a worker: a sync method (echo) or an error is answered at once, the rest later."""
        try:
            message = json.loads(payload)
        except ValueError:
            return b'{"jsonrpc":"2.0","error":{"code":-32700,"message":"Parse error"},"id":null}'
        if isinstance(message, dict) and message.get("method") == "echo":
            self.calls += 1
            if "id" not in message:
                return None
            return json.dumps({"jsonrpc": "2.0", "result": message.get("params", []), "id": message["id"]}).encode()
        if isinstance(message, dict) and message.get("method") == "fail_now":
            raise RuntimeError("dispatcher bug")
        return self.dispatch_later(message)

    async def dispatch_later(self, message: Any) -> bytes | None:
        if isinstance(message, list):
            answers = [a for a in await asyncio.gather(*(self.one(m) for m in message)) if a is not None]
            return json.dumps(answers).encode() if answers else None
        answer = await self.one(message)
        return None if answer is None else json.dumps(answer).encode()


class RunningDoor:
    """An HttpDoor serving a listening socket made here, in a thread with its own loop."""

    def __init__(self, sock: socket.socket, **options: Any) -> None:
        self.sock = sock
        self.worker = FakeWorker()
        self.ready = True
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        options.setdefault("probes", Probes(readyz=lambda: self.ready))
        self.door = HttpDoor(self.worker.dispatch, **options)
        self.run(self.door.serve(sock.dup()))  # a worker serves its own inherited copy

    def run(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def release(self, name: str) -> None:
        self.loop.call_soon_threadsafe(self.worker.gate(name).set)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.door.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def make_door() -> Iterator[Any]:
    doors: list[RunningDoor] = []

    def make(**options: Any) -> RunningDoor:
        sock = socket.create_server(("127.0.0.1", 0))
        door = RunningDoor(sock, **options)
        door.port = sock.getsockname()[1]
        doors.append(door)
        return door
    yield make
    for door in doors:
        door.stop()


@pytest.fixture
def door(make_door: Any) -> RunningDoor:
    return make_door()


def post(port: int, body: Any, path: str = "/", headers: dict[str, str] | None = None,
         conn: http.client.HTTPConnection | None = None) -> http.client.HTTPResponse:
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, data, headers=JSON_HEADERS if headers is None else headers)
    return conn.getresponse()


def get(port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, headers=headers or {})
    return conn.getresponse()


def call(method: str, params: Any, id: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params, "id": id}


# ------------------------------------------------------------------ HTTP

@pytest.mark.parametrize("path", ["/", "/rpc"])
def test_post_answers_200_with_the_json_rpc_response(door: RunningDoor, path: str) -> None:
    resp = post(door.port, call("echo", [1, "a"], 7), path)
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "application/json"
    assert json.loads(resp.read()) == {"jsonrpc": "2.0", "result": [1, "a"], "id": 7}


def test_json_rpc_errors_travel_in_a_200_body(door: RunningDoor) -> None:
    resp = post(door.port, b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]')
    assert resp.status == 200
    assert json.loads(resp.read())["error"]["code"] == -32700


def test_notification_and_all_notification_batch_answer_204_without_body(door: RunningDoor) -> None:
    for body in ({"jsonrpc": "2.0", "method": "echo", "params": [1]},       # answered at once
                 {"jsonrpc": "2.0", "method": "release", "params": ["x"]},  # answered later
                 [{"jsonrpc": "2.0", "method": "echo"}, {"jsonrpc": "2.0", "method": "echo"}]):
        resp = post(door.port, body)
        assert resp.status == 204
        assert resp.read() == b""
        assert resp.getheader("Content-Length") is None


def test_batch_answers_the_calls_and_skips_notifications(door: RunningDoor) -> None:
    resp = post(door.port, [call("echo", [1], 1), {"jsonrpc": "2.0", "method": "echo"}, call("echo", [2], 2)])
    assert resp.status == 200
    assert sorted(a["id"] for a in json.loads(resp.read())) == [1, 2]


def test_body_over_max_message_size_gets_413(make_door: Any) -> None:
    door = make_door(max_message_size=1000)
    assert post(door.port, call("echo", ["x" * 900])).status == 200
    resp = post(door.port, call("echo", ["x" * 2000]))
    assert resp.status == 413
    assert resp.getheader("Connection") == "close"


def test_chunked_body_over_max_message_size_gets_413(make_door: Any) -> None:
    door = make_door(max_message_size=1000)
    conn = http.client.HTTPConnection("127.0.0.1", door.port, timeout=10)
    conn.request("POST", "/", body=iter([b'{"jsonrpc":"2.0","method":"echo","params":["', b"x" * 3000, b'"]}']),
                 headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"}, encode_chunked=True)
    assert conn.getresponse().status == 413


@pytest.mark.parametrize("method,path", [("GET", "/rpc"), ("PUT", "/"), ("DELETE", "/rpc"), ("GET", "/")])
def test_other_method_on_the_rpc_path_gets_405_with_allow(door: RunningDoor, method: str, path: str) -> None:
    resp = get(door.port, path, method)
    assert resp.status == 405
    assert "POST" in resp.getheader("Allow")


def test_non_json_content_type_gets_415(door: RunningDoor) -> None:
    resp = post(door.port, call("echo", []), headers={"Content-Type": "text/plain"})
    assert resp.status == 415
    assert door.worker.calls == 0
    assert post(door.port, call("echo", []), headers={"Content-Type": "application/json; charset=utf-8"}).status == 200


def test_unknown_path_gets_404(door: RunningDoor) -> None:
    assert get(door.port, "/nope").status == 404
    assert post(door.port, call("echo", []), "/nope").status == 404


def test_malformed_request_gets_400_and_close(door: RunningDoor) -> None:
    with socket.create_connection(("127.0.0.1", door.port), timeout=10) as s:
        s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        data = s.recv(4096)
        assert data.startswith(b"HTTP/1.1 400")
        while data:
            data = s.recv(4096)


def test_endless_request_head_gets_431_and_close(door: RunningDoor) -> None:
    with socket.create_connection(("127.0.0.1", door.port), timeout=10) as s:
        s.sendall(b"POST / HTTP/1.1\r\nX-Big: ")
        for _ in range(17):                # just past the 64 KiB limit, then wait: no unread bytes, no reset
            s.sendall(b"a" * 4096)
        data = s.recv(4096)
    assert data.startswith(b"HTTP/1.1 431")


@pytest.mark.parametrize("method", ["fail", "fail_now"])
def test_dispatch_exception_gets_500_and_the_connection_keeps_serving(door: RunningDoor, method: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", door.port, timeout=10)
    failed = post(door.port, call(method, []), conn=conn)
    assert failed.status == 500
    failed.read()
    assert post(door.port, call("echo", [1]), conn=conn).status == 200


def test_keep_alive_serves_many_requests_on_one_connection(door: RunningDoor) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", door.port, timeout=10)
    conn.connect()
    local = conn.sock.getsockname()
    for i in range(5):
        resp = post(door.port, call("echo", [i], i), conn=conn)
        assert json.loads(resp.read())["result"] == [i]
        assert conn.sock is not None and conn.sock.getsockname() == local


def test_idle_keep_alive_connections_and_half_sent_requests_are_closed(make_door: Any) -> None:
    door = make_door(idle_timeout=0.2)
    conn = http.client.HTTPConnection("127.0.0.1", door.port, timeout=10)
    assert post(door.port, call("echo", [1]), conn=conn).status == 200
    assert conn.sock.recv(1) == b""                      # closed by the server once idle
    with socket.create_connection(("127.0.0.1", door.port), timeout=10) as s:
        s.sendall(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n{")   # and never the rest
        assert s.recv(100) == b""
    with socket.create_connection(("127.0.0.1", door.port), timeout=10) as s:   # a call in flight is not idle
        body = json.dumps(call("hold", ["long"], 1)).encode()
        s.sendall(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        wait_for(lambda: door.worker.calls == 2, message="the held call dispatched")
        with socket.create_connection(("127.0.0.1", door.port), timeout=10) as later:
            assert later.recv(1) == b""  # a sweep closed this younger idle connection, and passed the busy one
        door.release("long")
        assert s.recv(100).startswith(b"HTTP/1.1 200")


def test_http_1_0_without_keep_alive_is_closed_after_the_answer(door: RunningDoor) -> None:
    body = json.dumps(call("echo", [1])).encode()
    with socket.create_connection(("127.0.0.1", door.port), timeout=10) as s:
        s.sendall(b"POST / HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b'"result": [1], "id": 1}')


def test_pipelined_http_requests_are_answered_in_request_order(door: RunningDoor) -> None:
    def raw(message: dict[str, Any]) -> bytes:
        body = json.dumps(message).encode()
        return b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(
            body) + body
    with socket.create_connection(("127.0.0.1", door.port), timeout=10) as s:
        s.sendall(raw(call("hold", ["a"], 1)) + raw(call("echo", ["fast"], 2)))
        wait_for(lambda: door.worker.calls == 2, message="both requests dispatched")  # the fast one is done
        door.release("a")
        data = b""
        while data.count(b"HTTP/1.1 200") < 2 or not data.endswith(b"}"):
            data += s.recv(4096)
    assert data.index(b'"id": 1') < data.index(b'"id": 2')


# ------------------------------------------------------------------ probes

def test_probes_answer_and_follow_their_hooks(door: RunningDoor) -> None:
    assert get(door.port, "/livez").status == 200
    assert get(door.port, "/readyz").status == 200
    door.ready = False
    assert get(door.port, "/readyz").status == 503
    assert get(door.port, "/livez", "HEAD").status == 200
    assert get(door.port, "/status").status == 404       # not given
    assert get(door.port, "/metrics").status == 404
    assert get(door.port, "/livez", "POST").status == 405


def test_status_metrics_and_dashboard_hooks_sync_or_async(make_door: Any) -> None:
    async def status() -> bytes:
        await asyncio.sleep(0)
        return b'{"workers": []}'
    door = make_door(probes=Probes(status=status, metrics=lambda: "clusterd_up 1\n",
                                   dashboard=lambda: b"<html></html>"))
    resp = get(door.port, "/status")
    assert (resp.status, resp.getheader("Content-Type"), resp.read()) == (200, "application/json", b'{"workers": []}')
    resp = get(door.port, "/metrics")
    assert resp.status == 200 and resp.read() == b"clusterd_up 1\n"
    assert get(door.port, "/dashboard").getheader("Content-Type").startswith("text/html")


# ------------------------------------------------------------------ token and CORS

def test_token_is_required_on_rpc_and_websocket_but_not_on_probes(make_door: Any) -> None:
    door = make_door(token="s3cret")
    assert post(door.port, call("echo", [])).status == 401
    assert post(door.port, call("echo", []), headers={**JSON_HEADERS, "Authorization": "Bearer nope"}).status == 401
    ok = post(door.port, call("echo", [1]), headers={**JSON_HEADERS, "Authorization": "Bearer s3cret"})
    assert ok.status == 200 and json.loads(ok.read())["result"] == [1]
    assert door.worker.calls == 1
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(f"ws://127.0.0.1:{door.port}/ws", open_timeout=5)
    assert refused.value.response.status_code == 401
    with ws_connect(f"ws://127.0.0.1:{door.port}/ws", additional_headers={"Authorization": "Bearer s3cret"}) as ws:
        ws.send(json.dumps(call("echo", [2])))
        assert json.loads(ws.recv(5))["result"] == [2]
    assert get(door.port, "/livez").status == 200
    assert get(door.port, "/readyz").status == 200


def test_cors_preflight_and_allow_origin(make_door: Any) -> None:
    door = make_door(cors_origin="https://app.example")
    resp = get(door.port, "/", "OPTIONS", {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                                           "Access-Control-Request-Headers": "content-type"})
    assert resp.status == 204
    assert resp.getheader("Access-Control-Allow-Origin") == "https://app.example"
    assert "POST" in resp.getheader("Access-Control-Allow-Methods")
    assert "Content-Type" in resp.getheader("Access-Control-Allow-Headers")
    resp = post(door.port, call("echo", []), headers={**JSON_HEADERS, "Origin": "https://app.example"})
    assert resp.status == 200 and resp.getheader("Access-Control-Allow-Origin") == "https://app.example"
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(f"ws://127.0.0.1:{door.port}/ws", origin="https://evil.example", open_timeout=5)
    assert refused.value.response.status_code == 403


def test_without_cors_a_preflight_is_405(door: RunningDoor) -> None:
    resp = get(door.port, "/", "OPTIONS")
    assert resp.status == 405 and resp.getheader("Access-Control-Allow-Origin") is None


# ------------------------------------------------------------------ WebSocket

@pytest.mark.parametrize("path", ["/", "/ws"])
def test_websocket_text_frames_both_ways(door: RunningDoor, path: str) -> None:
    with ws_connect(f"ws://127.0.0.1:{door.port}{path}") as ws:
        for i in range(3):
            ws.send(json.dumps(call("echo", [i], i)))
            answer = ws.recv(5)
            assert isinstance(answer, str) and json.loads(answer) == {"jsonrpc": "2.0", "result": [i], "id": i}
        ws.send(json.dumps([call("echo", [1], 1), call("echo", [2], 2)]))
        assert len(json.loads(ws.recv(5))) == 2
        for method in ("fail", "fail_now"):  # a dispatcher bug: an internal error, the connection serves on
            ws.send(json.dumps(call(method, [], 9)))
            assert json.loads(ws.recv(5))["error"]["code"] == -32603
        ws.send(json.dumps(call("echo", ["still"], 10)))
        assert json.loads(ws.recv(5))["result"] == ["still"]


def test_websocket_calls_in_flight_are_answered_as_they_finish(door: RunningDoor) -> None:
    with ws_connect(f"ws://127.0.0.1:{door.port}/ws") as ws:
        ws.send(json.dumps(call("hold", ["g"], 1)))
        ws.send(json.dumps(call("hold", ["h"], 2)))
        for i in range(3, 8):
            ws.send(json.dumps(call("echo", [i], i)))
        assert sorted(json.loads(ws.recv(5))["id"] for _ in range(5)) == [3, 4, 5, 6, 7]
        ws.send(json.dumps(call("release", ["h"], 8)))
        assert {json.loads(ws.recv(5))["id"] for _ in range(2)} == {2, 8}
        ws.send(json.dumps(call("release", ["g"], 9)))
        assert {json.loads(ws.recv(5))["id"] for _ in range(2)} == {1, 9}


def test_websocket_notifications_get_no_frame(door: RunningDoor) -> None:
    with ws_connect(f"ws://127.0.0.1:{door.port}/ws") as ws:
        ws.send(json.dumps({"jsonrpc": "2.0", "method": "echo"}))
        ws.send(json.dumps({"jsonrpc": "2.0", "method": "release", "params": ["x"]}))
        ws.send(json.dumps(call("echo", ["after"], 2)))
        assert json.loads(ws.recv(5))["id"] == 2


def test_websocket_message_over_max_size_closes_the_connection(make_door: Any) -> None:
    door = make_door(max_message_size=1000)
    with ws_connect(f"ws://127.0.0.1:{door.port}/ws", max_size=None) as ws:
        ws.send(json.dumps(call("echo", ["x" * 5000])))
        with pytest.raises(ConnectionClosed):
            ws.recv(5)


def test_get_ws_without_upgrade_gets_426(door: RunningDoor) -> None:
    assert get(door.port, "/ws").status == 426


# ------------------------------------------------------------------ drain

def test_drain_finishes_calls_in_flight_and_closes_idle_connections(door: RunningDoor) -> None:
    idle = http.client.HTTPConnection("127.0.0.1", door.port, timeout=10)
    assert post(door.port, call("echo", [0]), conn=idle).status == 200
    busy = http.client.HTTPConnection("127.0.0.1", door.port, timeout=10)
    busy.request("POST", "/", json.dumps(call("hold", ["http"], 1)), headers=JSON_HEADERS)
    with ws_connect(f"ws://127.0.0.1:{door.port}/ws") as ws:
        ws.send(json.dumps(call("hold", ["ws"], 2)))
        ws.send(json.dumps(call("echo", ["x"], 3)))
        assert json.loads(ws.recv(5))["id"] == 3
        drained = door.start(door.door.drain(timeout=10))

        assert idle.sock.recv(1) == b""          # the idle keep-alive connection is closed at once
        assert not drained.done()                # the held calls keep the door open
        door.release("http")
        resp = busy.getresponse()
        assert resp.status == 200 and resp.getheader("Connection") == "close"
        assert json.loads(resp.read())["result"] == "released http"
        door.release("ws")
        assert json.loads(ws.recv(5))["id"] == 2
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(5)
        assert closed.value.rcvd.code == 1001
        assert drained.result(10) is True
    assert door.door.open_connections == 0


def test_a_draining_websocket_answers_the_call_in_transit_and_its_close_comes_with_the_answer(
        door: RunningDoor) -> None:
    with ws_connect(f"ws://127.0.0.1:{door.port}/ws") as ws:
        ws.send(json.dumps(call("echo", [1], 1)))
        assert json.loads(ws.recv(5))["id"] == 1
        drained = door.start(door.door.drain(timeout=10))
        wait_for(lambda: door.door.draining, message="draining")
        # the client's next call was on its way when the drain began: answered, not cut off
        ws.send(json.dumps(call("echo", [2], 2)))
        assert json.loads(ws.recv(5))["result"] == [2]
        # the Close came with that answer: the client knows before it sends again
        with pytest.raises(ConnectionClosed) as closed:
            ws.send(json.dumps(call("echo", [3], 3)))
        assert closed.value.rcvd.code == 1001
        assert drained.result(10) is True
    assert door.worker.calls == 2


def test_a_closing_http_connection_shuts_its_write_side_and_reads_on_instead_of_resetting(
        door: RunningDoor) -> None:
    with socket.create_connection(("127.0.0.1", door.port), timeout=10) as s:
        body = json.dumps(call("echo", [1])).encode()
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b'"id": 1}')
        # the server's FIN came; a client that still sends (it had not seen the FIN yet) is read and
        # dropped for a while, not answered with RST (which may destroy an answer not read yet)
        for _ in range(10):
            s.sendall(b"x" * 100)
            assert not select.select([s], [], [], 0.02)[0] or s.recv(1) == b""


def test_a_draining_door_waits_longer_for_a_new_connections_first_request(door: RunningDoor) -> None:
    """A connection that has sent nothing yet was opened to send a request (a probe, a first call): the
    drain gives it DRAIN_FRESH_S, not the DRAIN_QUIET_S of a keep-alive connection between requests."""
    from clusterd.httpdoor.door_state import DRAIN_FRESH_S, DRAIN_QUIET_S
    with socket.create_connection(("127.0.0.1", door.port), timeout=10) as s:
        wait_for(lambda: door.door.open_connections == 1, message="the connection accepted")
        drained = door.start(door.door.drain(timeout=10))
        wait_for(lambda: door.door.draining, message="draining")
        time.sleep(DRAIN_QUIET_S * 2)  # the client is slow to write its request (the scenario itself)
        assert DRAIN_QUIET_S * 2 < DRAIN_FRESH_S
        s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200") and b"connection: close" in answer.lower()
        assert drained.result(10) is True


def test_drain_timeout_cuts_what_is_left(door: RunningDoor) -> None:
    with ws_connect(f"ws://127.0.0.1:{door.port}/ws") as ws:
        ws.send(json.dumps(call("hold", ["never"], 1)))
        assert door.run(door.door.drain(timeout=0.2)) is False
        with pytest.raises(ConnectionClosed):
            ws.recv(5)


def test_drained_door_accepts_no_new_connection(door: RunningDoor) -> None:
    assert door.run(door.door.drain(timeout=5)) is True
    with socket.create_connection(("127.0.0.1", door.port), timeout=10) as s:
        s.settimeout(0.5)   # the kernel queues it on the listening socket, but this door never reads it
        s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(TimeoutError):
            s.recv(100)


# ------------------------------------------------------------------ unix socket, curl, node

def test_unix_socket_http_and_websocket(tmp_path: Any) -> None:
    path = str(tmp_path / "door.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.listen()
    door = RunningDoor(sock)
    try:
        out = subprocess.run(["curl", "-s", "--unix-socket", path, "-H", "Content-Type: application/json",
                              "-d", json.dumps(call("echo", [1])), "http://localhost/rpc"],
                             capture_output=True, timeout=10) if shutil.which("curl") else None
        if out is not None:
            assert json.loads(out.stdout)["result"] == [1]
        with ws_unix_connect(path, uri="ws://localhost/ws") as ws:
            ws.send(json.dumps(call("echo", [2], 2)))
            assert json.loads(ws.recv(5))["result"] == [2]
    finally:
        door.stop()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl(door: RunningDoor) -> None:
    url = f"http://127.0.0.1:{door.port}/rpc"
    out = subprocess.run(["curl", "-s", "-H", "Content-Type: application/json", "-d",
                          json.dumps(call("echo", ["curl"])), url], capture_output=True, timeout=10, check=True)
    assert json.loads(out.stdout)["result"] == ["curl"]
    code = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-d",
                           json.dumps({"jsonrpc": "2.0", "method": "echo"}), "-H", "Content-Type: application/json",
                           url], capture_output=True, timeout=10, check=True)
    assert code.stdout == b"204"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_fetch(door: RunningDoor) -> None:
    script = f"""
    const r = await fetch("http://127.0.0.1:{door.port}/", {{method: "POST",
      headers: {{"Content-Type": "application/json"}},
      body: JSON.stringify({{jsonrpc: "2.0", method: "echo", params: ["node"], id: 5}})}});
    console.log(JSON.stringify({{status: r.status, body: await r.json()}}));
    """
    out = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True, timeout=20)
    if out.returncode != 0 and b"fetch is not defined" in out.stderr:
        pytest.skip("this node has no fetch")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"status": 200, "body": {"jsonrpc": "2.0", "result": ["node"], "id": 5}}


# ------------------------------------------------------------------ listeners: the master/worker seam

def test_parse_bind_forms() -> None:
    assert parse_bind("127.0.0.1:8080") == (socket.AF_INET, ("127.0.0.1", 8080))
    assert parse_bind(":8080") == (socket.AF_INET, ("0.0.0.0", 8080))
    assert parse_bind("[::1]:9") == (socket.AF_INET6, ("::1", 9))
    assert parse_bind("unix:/run/x.sock") == (socket.AF_UNIX, "/run/x.sock")
    for bad in ("8080", "host:", "host:http", "::1:80", "unix:", "h:70000"):
        with pytest.raises(BindError):
            parse_bind(bad)


def test_open_listener_refuses_a_port_in_use_with_one_line() -> None:
    taken = open_listener("127.0.0.1:0")
    try:
        with pytest.raises(BindError, match="cannot listen on 127.0.0.1:.*in use"):
            open_listener(f"127.0.0.1:{taken.getsockname()[1]}")
    finally:
        taken.close()


def test_open_listener_replaces_a_stale_unix_socket_but_not_a_live_one(tmp_path: Any) -> None:
    path = str(tmp_path / "s.sock")
    first = open_listener(f"unix:{path}")
    with pytest.raises(BindError):
        open_listener(f"unix:{path}")          # someone listens there
    first.close()                              # the file stays, nobody listens: stale
    second = open_listener(f"unix:{path}")
    second.close()
    (tmp_path / "plain").write_text("x")
    with pytest.raises(BindError):
        open_listener(f"unix:{tmp_path / 'plain'}")


def test_workers_sharing_an_inherited_socket_keep_serving_when_one_dies() -> None:
    """The design in miniature: this process plays the master (owns the socket), two children serve it."""
    from clusterd.httpdoor.bench_refs import ServerGroup
    group = ServerGroup("door", 2)
    try:
        def fresh_call(i: int) -> int:
            resp = post(group.port, call("echo", [i], i))
            assert json.loads(resp.read())["result"] == [i]
            return resp.status
        assert all(fresh_call(i) == 200 for i in range(10))
        group.children[0].kill()
        group.children[0].wait()
        assert all(fresh_call(i) == 200 for i in range(20))  # every new connection reaches the survivor
    finally:
        group.stop()
