"""A draining worker's HTTP/WebSocket door loses no call a client could not know about, and
--max-requests counts the calls a worker serves on its door.

The clients here have no retry logic: a connection closed (or reset) while a call is outstanding is a
failure. A close the client sees before it sends (an answer with `Connection: close`, a WebSocket
Close frame that came with the last answer, a FIN seen on an idle keep-alive connection) is not: the
client opens a new connection, as every HTTP client does."""

from __future__ import annotations

import http.client
import json
import select
import threading
from collections import Counter

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from .conftest import free_port, wait_for
from .http_clients import HttpRpc

pytestmark = pytest.mark.timeout(180)

APP = ("tests.apps.basic:Master", "tests.apps.basic:Worker")


def start(cluster, *options: str, name: str):
    port = free_port()
    inst = cluster(*APP, "--http-bind", f"127.0.0.1:{port}", *options, name=name)
    inst.port = port
    return inst


def _add(i: int) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "method": "add", "params": [i, 1], "id": i}).encode()


class StrictHttpClient(threading.Thread):
    """Sequential add(i, 1) calls on one keep-alive connection at a time, no retry."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.calls = self.closes_seen = 0
        self.failures: list[str] = []

    def _closed_by_server(self, conn: http.client.HTTPConnection) -> bool:
        """Before sending on a reused connection: is the server's FIN already here (readable, idle)?"""
        return conn.sock is not None and bool(select.select([conn.sock], [], [], 0)[0])

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        i = 0
        while not self.stop.is_set():
            if self._closed_by_server(conn):
                conn.close()
                self.closes_seen += 1
            i += 1
            try:
                conn.request("POST", "/", body=_add(i), headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"call {i}: {exc!r}")
                conn.close()
                continue
            if resp.getheader("Connection", "").lower() == "close":
                self.closes_seen += 1  # http.client opens a new connection for the next request
            if resp.status != 200 or json.loads(data).get("result") != i + 1:
                self.failures.append(f"call {i}: {resp.status} {data!r}")
            self.calls += 1
        conn.close()


class StrictWsClient(StrictHttpClient):
    """Sequential add(i, 1) calls on one WebSocket at a time, no retry: a Close seen on send (it came
    with the previous answer) opens a new connection; a Close while a call waits is a failure."""

    def run(self) -> None:
        url = f"ws://127.0.0.1:{self.port}/ws"
        i = 0
        ws = ws_connect(url).__enter__()
        try:
            while not self.stop.is_set():
                i += 1
                try:
                    ws.send(_add(i).decode())
                except ConnectionClosed:
                    self.closes_seen += 1
                    ws.close()
                    ws = ws_connect(url).__enter__()
                    ws.send(_add(i).decode())
                try:
                    reply = json.loads(ws.recv(30))
                except (ConnectionClosed, TimeoutError, OSError) as exc:
                    self.failures.append(f"call {i}: {exc!r}")
                    ws.close()
                    ws = ws_connect(url).__enter__()
                    continue
                if reply.get("result") != i + 1:
                    self.failures.append(f"call {i}: {reply}")
                self.calls += 1
        finally:
            ws.close()


def test_sequential_clients_lose_no_call_through_reload_and_scale_down(cluster):
    inst = start(cluster, "--workers", "3", name="drainseq")
    clients = [StrictHttpClient(inst.port) for _ in range(3)] + [StrictWsClient(inst.port) for _ in range(3)]
    for client in clients:
        client.start()

    def progress(n: int = 30) -> None:
        before = [c.calls for c in clients]
        wait_for(lambda: all(c.calls > b + n for c, b in zip(clients, before)), timeout=30,
                 message="every client calling")

    try:
        progress()
        for _ in range(2):
            done = inst.cli("reload", "--name", "drainseq")
            assert done.returncode == 0, done.stderr
            progress()
        assert inst.cli("scale", "1", "--name", "drainseq").returncode == 0
        wait_for(lambda: len(inst.status()["workers"]) == 1, timeout=30, message="scaled down to 1")
        progress()
    finally:
        for client in clients:
            client.stop.set()
        for client in clients:
            client.join(30)
    assert [c.failures for c in clients] == [[]] * len(clients)
    # every client met at least one drain (3 workers replaced twice), and went on on a new connection
    assert all(c.closes_seen >= 1 for c in clients), [c.closes_seen for c in clients]


def test_max_requests_counts_http_calls(cluster):
    inst = start(cluster, "--workers", "1", "--max-requests", "20", name="httprecycle")
    client = HttpRpc(inst.port)
    served: Counter[int] = Counter()
    for _ in range(60):
        sock = client.conn.sock
        if sock is not None and select.select([sock], [], [], 0)[0]:
            client.conn.close()  # the drained worker closed this idle keep-alive connection
        pid = client.result("pid")  # every call succeeds, before, during and after each recycle
        served[pid] += 1
        if served[pid] == 20:  # this worker reached its limit: it is replaced
            wait_for(lambda pid=pid: (lambda ws: ws and ws[0]["pid"] != pid)(inst.ready_workers()),
                     timeout=30, message="the worker recycled after 20 HTTP calls")
    client.close()
    assert len(served) >= 3, served
    worker = inst.status()["workers"][0]
    assert worker["last_exit"]["reason"] == "max-requests"
    wait_for(lambda: inst.status()["counters"]["restarts"].get("max-requests", 0) >= 2,
             message="two recycles counted")
    metrics = HttpRpc(inst.port).get("/metrics")[1].decode()
    restarts = [line for line in metrics.splitlines()
                if line.startswith('clusterd_worker_restarts_total{reason="max-requests"}')]
    assert restarts and float(restarts[0].split()[-1]) >= 2, restarts


def test_status_served_counts_http_and_websocket_calls(cluster):
    inst = start(cluster, "--workers", "1", name="httpserved")
    client = HttpRpc(inst.port)
    for i in range(5):
        assert client.result("add", i, 1) == i + 1
    with ws_connect(f"ws://127.0.0.1:{inst.port}/ws") as ws:
        for i in range(3):
            ws.send(_add(i).decode())
            assert json.loads(ws.recv(10))["result"] == i + 1
    client.close()
    worker = wait_for(lambda: (lambda w: w if w["served"] >= 8 else None)(inst.status()["workers"][0]),
                      message="served counts the door's calls")
    assert worker["served"] == 8 and worker["http"]["served"] == 8
    metrics = HttpRpc(inst.port).get("/metrics")[1].decode()
    assert 'clusterd_worker_calls_served_total{slot="0"} 8.0' in metrics
