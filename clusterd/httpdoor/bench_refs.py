"""Bare JSON-RPC echo servers on candidate HTTP/WebSocket stacks, measured by a raw-socket load generator
(bench_load.py).

Every server runs in ``processes`` processes that share one listening socket inherited from the
parent (no SO_REUSEPORT: the kernel hands each connection to whichever process accepts first, as
in clusterd's design). The load generator is plain non-blocking sockets and ``selectors`` in the
parent, with requests built once, so it spends a few microseconds per call. Run::

    python -m clusterd.httpdoor.bench_refs [--duration S] [--processes N] [stack ...]

``run_refs()`` returns the same figures as a dict for ``clusterd bench``: per stack,
``http_64_calls_per_s``, ``http_seq_p50_us``, ``ws_8x8_calls_per_s``, ``ws_seq_p50_us``,
``ws_seq_p99_us``, ``ws_seq_calls_per_s`` (1 / p50), for the paths the stack serves.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import orjson

from .bench_load import (
    BODY,
    count_http,
    count_ws,
    drive,
    http_connect,
    http_request,
    percentile,
    sequential,
    ws_connect,
    ws_frame,
)

# stack name -> (what it is, serves HTTP, serves WebSocket, wants uvloop)
STACKS: dict[str, tuple[str, bool, bool, bool]] = {
    "door": ("clusterd.httpdoor (httptools + picows), asyncio", True, True, False),
    "door-uvloop": ("clusterd.httpdoor (httptools + picows), uvloop", True, True, True),
    "aiohttp": ("aiohttp low-level server, asyncio", True, True, False),
    "aiohttp-uvloop": ("aiohttp low-level server, uvloop", True, True, True),
    "websockets": ("websockets 17 asyncio server, asyncio", False, True, False),
    "websockets-uvloop": ("websockets 17 asyncio server, uvloop", False, True, True),
    "picows-uvloop": ("picows server alone, uvloop", False, True, True),
}


# ---------------------------------------------------------------- servers (child processes)

def echo(payload: bytes) -> bytes | None:
    """The JSON-RPC echo every stack runs: decode, answer with the params, encode."""
    request = orjson.loads(payload)
    if "id" not in request:
        return None
    return orjson.dumps({"jsonrpc": "2.0", "result": request.get("params"), "id": request["id"]})


async def _serve_door(sock: socket.socket) -> None:
    from . import HttpDoor
    await HttpDoor(echo).serve(sock)


async def _serve_aiohttp(sock: socket.socket) -> None:
    from aiohttp import WSMsgType, web, web_server

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    answer = echo(msg.data.encode())
                    if answer is not None:
                        await ws.send_str(answer.decode())
            return ws
        answer = echo(await request.read())
        if answer is None:
            return web.Response(status=204)
        return web.Response(body=answer, content_type="application/json")
    server = web_server.Server(handler)
    await asyncio.get_running_loop().create_server(server, sock=sock)


async def _serve_websockets(sock: socket.socket) -> None:
    from websockets.asyncio.server import serve

    async def handler(ws: Any) -> None:
        async for message in ws:
            answer = echo(message if isinstance(message, bytes) else message.encode())
            if answer is not None:
                await ws.send(answer.decode())
    await serve(handler, sock=sock, compression=None)


async def _serve_picows(sock: socket.socket) -> None:
    from picows import WSListener, WSMsgType, ws_create_server

    class Echo(WSListener):
        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type == WSMsgType.TEXT:
                answer = echo(frame.get_payload_as_bytes())
                if answer is not None:
                    transport.send(WSMsgType.TEXT, answer)
            elif frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code())
                transport.disconnect()
    await ws_create_server(lambda request: Echo(), sock=sock)


def available_stacks() -> list[str]:
    """The stacks whose libraries are installed (aiohttp, websockets and uvloop are optional)."""
    def has(module: str) -> bool:
        return importlib.util.find_spec(module) is not None
    out = []
    for stack in STACKS:
        base = stack.removesuffix("-uvloop")
        if stack.endswith("-uvloop") and not has("uvloop"):
            continue
        if base in ("aiohttp", "websockets") and not has(base):
            continue
        out.append(stack)
    return out


SERVERS: dict[str, Callable[[socket.socket], Any]] = {
    "door": _serve_door, "aiohttp": _serve_aiohttp, "websockets": _serve_websockets, "picows": _serve_picows,
}


def serve_child(stack: str, fd: int) -> None:
    """Child process entry: serve ``stack`` on the inherited listening socket ``fd`` until killed."""
    base = stack.removesuffix("-uvloop")
    if stack.endswith("-uvloop"):
        import uvloop
        uvloop.install()
    sock = socket.socket(fileno=fd)

    async def main() -> None:
        await SERVERS[base](sock)
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        await asyncio.Event().wait()
    asyncio.run(main())


class ServerGroup:
    """``processes`` children serving one stack on one listening socket made here."""

    def __init__(self, stack: str, processes: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.port = self.sock.getsockname()[1]
        fd = self.sock.fileno()
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        # Children's complaints (clients vanishing at the end of a run) go to a file, shown on failure.
        self.errors = tempfile.TemporaryFile()
        self.children = [
            subprocess.Popen([sys.executable, "-m", "clusterd.httpdoor.bench_refs", "--serve", stack, "--fd", str(fd)],
                             pass_fds=[fd], stdout=subprocess.PIPE, stderr=self.errors, env=env)
            for _ in range(processes)]
        for child in self.children:
            if child.stdout.readline() != b"ready\n":  # type: ignore[union-attr]
                self.stop()
                self.errors.seek(0)
                raise RuntimeError(f"{stack} server did not start: {self.errors.read().decode()[-2000:]}")

    def stop(self) -> None:
        for child in self.children:
            child.kill()
        for child in self.children:
            child.wait()
            child.stdout.close()  # type: ignore[union-attr]
        self.sock.close()
        self.errors.close()


def measure_once(stack: str, port: int, duration: float, seq_calls: int) -> dict[str, Any]:
    """One round of every path ``stack`` serves, against servers already running on ``port``."""
    _, has_http, has_ws, _ = STACKS[stack]
    out: dict[str, Any] = {}
    if has_http:
        request = http_request(port)
        out["http_64_calls_per_s"] = drive([http_connect(port) for _ in range(64)], request, 1, count_http, duration)
        samples = sequential(http_connect(port), request, count_http, seq_calls)
        out["http_seq_p50_us"] = percentile(samples, 0.5)
    if has_ws:
        frame = ws_frame(BODY)
        out["ws_8x8_calls_per_s"] = drive([ws_connect(port) for _ in range(8)], frame, 8, count_ws, duration)
        samples = sequential(ws_connect(port), frame, count_ws, seq_calls)
        out["ws_seq_p50_us"] = percentile(samples, 0.5)
        out["ws_seq_p99_us"] = percentile(samples, 0.99)
    return out


def run_refs(stacks: list[str] | None = None, processes: int = 2, duration: float = 2.0, rounds: int = 3,
             seq_calls: int = 2000) -> dict[str, Any]:
    """Every stack's servers started first, then measured in turn, ``rounds`` times.

    A burst of outside load then slows one round of every stack rather than all of one stack.
    Rates are the best round's; latencies the median of the rounds' percentiles.
    """
    stacks = stacks or available_stacks()
    groups: dict[str, ServerGroup] = {}
    rounds_out: dict[str, list[dict[str, Any]]] = {stack: [] for stack in stacks}
    try:
        for stack in stacks:
            groups[stack] = ServerGroup(stack, processes)
        for _ in range(rounds):
            for stack in stacks:
                rounds_out[stack].append(measure_once(stack, groups[stack].port, duration / rounds, seq_calls))
    finally:
        for group in groups.values():
            group.stop()
    results: dict[str, Any] = {}
    for stack, per_round in rounds_out.items():
        figures: dict[str, Any] = {"label": STACKS[stack][0], "processes": processes}
        for key in per_round[0]:
            values = [r[key] for r in per_round]
            figures[key] = max(values) if key.endswith("_per_s") else statistics.median(values)
        if "ws_seq_p50_us" in figures:
            figures["ws_seq_calls_per_s"] = 1e6 / figures["ws_seq_p50_us"]
        results[stack] = figures
    return results


def _table(results: dict[str, Any]) -> str:
    def cell(figures: dict[str, Any], key: str, fmt: str) -> str:
        return fmt.format(figures[key]) if key in figures else "-"
    lines = ["| stack | HTTP 64 keep-alive conns | HTTP 1 conn p50 | WS 8 conns x 8 in flight | "
             "WS 1 in flight (p50) |", "|---|---|---|---|---|"]
    for figures in results.values():
        ws_seq = "-" if "ws_seq_p50_us" not in figures else "{:,.0f} ({:.0f} µs)".format(
            figures["ws_seq_calls_per_s"], figures["ws_seq_p50_us"])
        lines.append(f"| {figures['label']} | {cell(figures, 'http_64_calls_per_s', '{:,.0f}')} | "
                     f"{cell(figures, 'http_seq_p50_us', '{:.0f} µs')} | "
                     f"{cell(figures, 'ws_8x8_calls_per_s', '{:,.0f}')} | {ws_seq} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stacks", nargs="*", help=f"any of {', '.join(STACKS)} (default: all)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of pipelined load per path and stack")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve_child(args.serve, args.fd)
        return
    unknown = set(args.stacks) - set(STACKS)
    if unknown:
        parser.error(f"unknown stack(s): {', '.join(sorted(unknown))}")
    results = run_refs(args.stacks or None, args.processes, args.duration, args.rounds)
    print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode() if args.json else _table(results))


if __name__ == "__main__":
    main()
