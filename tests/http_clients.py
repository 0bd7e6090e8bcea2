"""HTTP and WebSocket clients with the interface of conftest.Rpc, so one test can run over every door."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

from websockets.sync.client import connect as ws_connect

from clusterd import protocol


class HttpRpc:
    """JSON-RPC over keep-alive HTTP/1.1 POSTs (http.client), to 127.0.0.1:port or a unix socket."""

    def __init__(self, port: int, path: str = "/", headers: dict | None = None, unix: str | None = None) -> None:
        self.port = port
        self.path = path
        self.unix = unix
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.conn = self._connect()
        self._id = 0

    def _connect(self) -> http.client.HTTPConnection:
        if self.unix is None:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn = http.client.HTTPConnection("localhost", timeout=30)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(self.unix)
        conn.sock = sock
        return conn

    def post(self, body: bytes, headers: dict | None = None, path: str | None = None,
             method: str = "POST") -> tuple[int, dict, bytes]:
        """(status, headers with lower-case names, body)."""
        self.conn.request(method, path or self.path, body=body, headers={**self.headers, **(headers or {})})
        resp = self.conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def get(self, path: str, headers: dict | None = None) -> tuple[int, bytes]:
        self.conn.request("GET", path, headers=headers or {})
        resp = self.conn.getresponse()
        return resp.status, resp.read()

    def send_raw(self, payload: bytes) -> None:
        status, _h, _body = self.post(payload)
        assert status in (200, 204), status

    def request(self, obj: Any, timeout: float = 10.0) -> Any:
        status, _h, body = self.post(protocol.dumps(obj))
        assert status in (200, 204), (status, body)
        return protocol.loads(body) if body else None

    def call(self, method: str, *params: Any, timeout: float = 10.0, **named: Any) -> dict:
        self._id += 1
        msg: dict = {"jsonrpc": "2.0", "method": method, "id": self._id}
        if params or named:
            msg["params"] = named if named else list(params)
        reply = self.request(msg, timeout)
        assert reply.get("id") == self._id, reply
        return reply

    def result(self, method: str, *params: Any, timeout: float = 10.0, **named: Any) -> Any:
        reply = self.call(method, *params, timeout=timeout, **named)
        assert "error" not in reply, reply
        return reply["result"]

    def close(self) -> None:
        self.conn.close()


class WsRpc(HttpRpc):
    """JSON-RPC over one WebSocket (the `websockets` sync client), text frames both ways."""

    def __init__(self, port: int, path: str = "/ws", **kwargs: Any) -> None:
        self.ws = ws_connect(f"ws://127.0.0.1:{port}{path}", **kwargs).__enter__()  # closed by close()
        self._id = 0

    def send_raw(self, payload: bytes) -> None:
        self.ws.send(payload.decode())

    def request(self, obj: Any, timeout: float = 10.0) -> Any:
        self.ws.send(json.dumps(obj))
        return protocol.loads(self.ws.recv(timeout))

    def close(self) -> None:
        self.ws.close()
