"""The reference systems of ``clusterd bench`` and the client loops every system is measured with.

Loaded by path in the reference processes (see procs.py), so that they never import the clusterd
core: this file imports nothing from ``clusterd`` and nothing relative. The bench process imports
it as ``clusterd.bench.references`` for the same client loops.
"""

from __future__ import annotations

import collections
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson
import zmq

PAYLOAD = "x" * 50
REPLY_TIMEOUT_S = 10.0


class BenchError(RuntimeError):
    """A measurement could not be made (a process did not start, a call failed)."""


# --------------------------------------------------------------------------------------------
# JSON-RPC client helpers (run in the bench process and in client processes)


def encode_call(call_id: int, method: str = "echo", params: Sequence[Any] = (PAYLOAD,)) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": call_id, "method": method,
                         "params": list(params)})


def reply_id(raw: bytes) -> Any:
    reply = orjson.loads(raw)
    if "result" not in reply:
        raise BenchError(f"call failed: {reply.get('error')!r}")
    return reply["id"]


def client_socket(ctx: zmq.Context[zmq.Socket[bytes]], addr: str) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    # A blocking recv with a timeout costs the client less than a poll before each recv.
    sock.setsockopt(zmq.RCVTIMEO, int(REPLY_TIMEOUT_S * 1000))
    sock.connect(addr)
    return sock


def recv_reply(sock: zmq.Socket[bytes]) -> bytes:
    try:
        return sock.recv()
    except zmq.Again:
        raise BenchError(f"no reply within {REPLY_TIMEOUT_S:g} s") from None


def sequential_us(sock: zmq.Socket[bytes], calls: int) -> list[float]:
    """Round-trip times in µs of ``calls`` echo calls made one at a time."""
    request = encode_call(0)
    times: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(calls):
        t0 = clock()
        sock.send(request)
        raw = recv_reply(sock)
        times.append((clock() - t0) / 1000)
        reply_id(raw)
    return times


def pipelined(sock: zmq.Socket[bytes], window: int, duration_s: float) -> tuple[int, float]:
    """Keep ``window`` echo calls in flight for ``duration_s``; returns (calls, seconds).

    Requests are encoded once; the id of a reply says which one to send again, so the client
    spends its time on the socket, not on JSON.
    """
    requests = [encode_call(i) for i in range(window)]
    for raw in requests:
        sock.send(raw)
    done = 0
    clock = time.perf_counter
    t0 = clock()
    deadline = t0 + duration_s
    elapsed = 0.0
    while True:
        call_id = reply_id(recv_reply(sock))
        done += 1
        if done & 63 == 0:
            now = clock()
            if now >= deadline:
                elapsed = now - t0
                break
        sock.send(requests[call_id])
    for _ in range(window - 1):  # collect what is still in flight: the socket stays clean
        reply_id(recv_reply(sock))
    return done, elapsed


# --------------------------------------------------------------------------------------------
# Reference processes. They run this file loaded by path (see _spawn_ref): no clusterd import.


def _echo_worker(addr: str, hello: bool) -> None:
    """A plain pyzmq worker: DEALER, echoes JSON-RPC calls as clusterd's workers answer them."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(addr)
    if hello:
        sock.send(b"READY")
    print("ready", flush=True)
    loads, dumps = orjson.loads, orjson.dumps
    while True:
        frames = sock.recv_multipart()
        req = loads(frames[-1])
        frames[-1] = dumps({"jsonrpc": "2.0", "id": req["id"], "result": req["params"][0]})
        sock.send_multipart(frames)


def _c_proxy(front: str, back: str) -> None:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(front)
    dealer = ctx.socket(zmq.DEALER)
    dealer.bind(back)
    print("ready", flush=True)
    zmq.proxy(router, dealer)


def _routers(front: str, back: str) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes], zmq.Poller]:
    """The hand-written master's sockets: ROUTER to clients, ROUTER to workers, one poller for both."""
    ctx = zmq.Context()
    clients = ctx.socket(zmq.ROUTER)
    clients.bind(front)
    backend = ctx.socket(zmq.ROUTER)
    backend.bind(back)
    poller = zmq.Poller()
    poller.register(clients, zmq.POLLIN)
    poller.register(backend, zmq.POLLIN)
    return clients, backend, poller


def _handwritten_master(front: str, back: str, workers: int) -> None:
    """The least a Python master does: track every call by its id, balance, forward unchanged."""
    clients, backend, poller = _routers(front, back)
    ready: list[bytes] = []
    inflight: dict[bytes, int] = {}
    pending: dict[tuple[bytes, Any], bytes] = {}
    backlog: collections.deque[list[bytes]] = collections.deque()
    next_rr = 0
    loads = orjson.loads
    noblock = zmq.NOBLOCK

    def pick() -> bytes:
        nonlocal next_rr
        n = len(ready)
        best = ready[next_rr % n]
        for k in range(1, n):
            cand = ready[(next_rr + k) % n]
            if inflight[cand] < inflight[best]:
                best = cand
        next_rr = ready.index(best) + 1
        return best

    def forward(frames: list[bytes]) -> None:
        client, body = frames[0], frames[-1]
        wid = pick()
        inflight[wid] += 1
        pending[(client, loads(body)["id"])] = wid
        backend.send_multipart([wid, client, body])

    while True:
        events = dict(poller.poll())
        if backend in events:
            for _ in range(1000):
                try:
                    frames = backend.recv_multipart(noblock)
                except zmq.Again:
                    break
                if len(frames) == 2 and frames[1] == b"READY":
                    ready.append(frames[0])
                    inflight[frames[0]] = 0
                    if len(ready) == workers:
                        print("ready", flush=True)
                        while backlog:
                            forward(backlog.popleft())
                    continue
                _, client, body = frames
                wid = pending.pop((client, loads(body)["id"]), None)
                if wid is not None:
                    inflight[wid] -= 1
                clients.send_multipart([client, body])
        if clients in events:
            for _ in range(1000):
                try:
                    frames = clients.recv_multipart(noblock)
                except zmq.Again:
                    break
                if ready:
                    forward(frames)
                else:
                    backlog.append(frames)


def _client_process(addr: str, window: int, duration_s: float, warmup_s: float) -> None:
    """One of the multi-client processes: warm up, say ready, wait for "go", run, report."""
    ctx = zmq.Context()
    sock = client_socket(ctx, addr)
    pipelined(sock, window, warmup_s)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    calls, elapsed = pipelined(sock, window, duration_s)
    print(json.dumps({"calls": calls, "elapsed_s": elapsed}), flush=True)


def child_main(argv: list[str]) -> None:
    role, args = argv[0], argv[1:]
    if role == "echo-worker":
        _echo_worker(args[0], hello=args[1] == "hello")
    elif role == "c-proxy":
        _c_proxy(args[0], args[1])
    elif role == "handwritten":
        _handwritten_master(args[0], args[1], int(args[2]))
    elif role == "client":
        _client_process(args[0], int(args[1]), float(args[2]), float(args[3]))
    else:
        raise SystemExit(f"unknown bench role {role!r}")




if __name__ == "__main__":
    child_main(sys.argv[1:])
