"""The hand-made reference link of ``clusterd bench --links`` (see links.py): one asyncio ROUTER process and
one asyncio DEALER process exchanging orjson-encoded JSON-RPC, with nothing else.

Runs in its own processes, loaded by path: imports nothing from ``clusterd``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import zmq

PAYLOAD = "x" * 50



async def _timed_loop(call: Callable[[], Awaitable[Any]], seconds: float, inflight: int) -> dict:
    """The loop of links_app.timed_loop (kept apart: this file never imports clusterd)."""
    clock = time.perf_counter
    deadline = clock() + seconds
    done = 0

    async def lane() -> None:
        nonlocal done
        while clock() < deadline:
            await call()
            done += 1

    started = clock()
    await asyncio.gather(*(lane() for _ in range(inflight)))
    return {"calls": done, "seconds": clock() - started}


class _RefLink:
    """One end of the hand-made link: answers "echo", makes calls, reports control notices."""

    def __init__(self, sock: zmq.Socket, routed: bool, on_notice: Callable[[str], None]) -> None:
        self.loop = asyncio.get_running_loop()
        self.sock = sock
        self.routed = routed
        self.peer = b""
        self.on_notice = on_notice
        self.pending: dict[int, asyncio.Future] = {}
        self.next_id = 0
        self.scheduled = False
        self.loop.add_reader(sock.getsockopt(zmq.FD), self.drain)
        self.kick()

    def drain(self) -> None:
        sock = self.sock
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if self.routed:
                self.peer = frames[0]
            msg = orjson.loads(frames[-1])
            method = msg.get("method")
            if method == "echo":
                self.send(orjson.dumps({"jsonrpc": "2.0", "result": msg["params"][0], "id": msg["id"]}))
            elif method is not None:
                self.on_notice(method)
            else:
                fut = self.pending.pop(msg["id"], None)
                if fut is not None:
                    fut.set_result(msg["result"])

    def send(self, raw: bytes) -> None:
        if self.routed:
            self.sock.send_multipart([self.peer, raw])
        else:
            self.sock.send(raw)
        self.kick()

    def kick(self) -> None:
        """ZMQ_FD is edge-triggered: after a send, look once more for what may have arrived."""
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self._check)

    def _check(self) -> None:
        self.scheduled = False
        if self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self.drain()

    def notify(self, method: str) -> None:
        self.send(orjson.dumps({"jsonrpc": "2.0", "method": method}))

    def call(self, method: str, *params: Any) -> asyncio.Future:
        self.next_id += 1
        fut = self.loop.create_future()
        self.pending[self.next_id] = fut
        self.send(orjson.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": self.next_id}))
        return fut


async def _ref_side(role: str, addr: str, path: str, seconds: float, inflight: int) -> None:
    """role "master" binds a ROUTER, "worker" connects a DEALER; whoever runs the loop prints
    {"calls", "seconds"}; the master prints its CPU seconds over the loop ("cpu_s")."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER if role == "master" else zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    notices: asyncio.Queue[str] = asyncio.Queue()
    if role == "master":
        sock.bind(addr)
    else:
        sock.connect(addr)
    link = _RefLink(sock, role == "master", notices.put_nowait)
    payload = PAYLOAD
    out: dict[str, Any] = {}
    if role == "worker":
        link.notify("hello")
        if path == "w2m":
            link.notify("begin")
            out = await _timed_loop(lambda: link.call("echo", payload), seconds, inflight)
            link.notify("end")
        await notices.get()  # "stop"
    else:
        await notices.get()  # "hello"
        if path == "w2m":
            await notices.get()  # "begin"
            cpu = time.process_time()
            await notices.get()  # "end"
            out = {"cpu_s": time.process_time() - cpu}
        else:
            cpu = time.process_time()
            out = await _timed_loop(lambda: link.call("echo", payload), seconds, inflight)
            out["cpu_s"] = time.process_time() - cpu
        link.notify("stop")
    print(orjson.dumps(out).decode(), flush=True)
    await asyncio.sleep(0.05)  # let the last notice leave
    sock.close(0)
    ctx.term()


def child_main(argv: list[str]) -> None:
    role, addr, path, seconds, inflight = argv
    asyncio.run(_ref_side(role, addr, path, float(seconds), int(inflight)))


if __name__ == "__main__":
    child_main(sys.argv[1:])
