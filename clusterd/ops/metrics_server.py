"""The master's own small HTTP server for `--metrics-bind HOST:PORT`: GET /metrics and, with
`--dashboard`, GET /dashboard, its files and its event stream.

It runs on the master's event loop (the status document and the statistics live there, so a
thread such as prometheus_client's start_http_server would have to reach into them unsafely). It
speaks just enough HTTP/1.1 for Prometheus and a browser: GET and HEAD, one request per
connection, bounded head size, time and number of connections. Anything else gets 4xx/405.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from .dashboard import KEEPALIVE_S, PAGE_HEADERS, STATIC_HEADERS, DashboardFeed, page, static_file

if TYPE_CHECKING:
    from .metrics import Exporter

log = logging.getLogger("clusterd")

HEAD_LIMIT = 16 * 1024
HEAD_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 10.0
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


class OpsServer:
    """Serves the exporter (and the dashboard when a feed is given) on one TCP address."""

    def __init__(self, exporter: Exporter, feed: DashboardFeed | None = None, max_connections: int = 64,
                 max_streams: int = 16) -> None:
        self.exporter = exporter
        self.feed = feed
        self.max_connections = max_connections
        self.max_streams = max_streams
        self.server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._streams = 0

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; return the address bound (port 0 picks a free one). Raises OSError if it cannot bind."""
        self.server = await asyncio.start_server(self._serve, host, port, limit=HEAD_LIMIT)
        return self.server.sockets[0].getsockname()[:2]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self._writers):
            writer.close()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._writers) >= self.max_connections:
            writer.close()
            return
        self._writers.add(writer)
        try:
            await self._handle(reader, writer)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass  # the peer went away or stalled: nothing to answer
        except asyncio.LimitOverrunError:
            await self._respond(writer, 431, b"request head too large\n")
        except Exception:
            log.exception("metrics server: request failed")
            with contextlib.suppress(Exception):
                await self._respond(writer, 500, b"internal error\n")
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return await self._respond(writer, 400, b"bad request\n")
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return await self._respond(writer, 405, b"only GET\n", {"Allow": "GET, HEAD"})
        head_only = method == b"HEAD"
        if target == b"/metrics":
            body, content_type = self.exporter.render(_header(head, b"accept"))
            return await self._respond(writer, 200, body, {"Content-Type": content_type}, head_only)
        if self.feed is not None:
            if target == b"/dashboard":
                return await self._respond(writer, 200, page(), {"Content-Type": "text/html; charset=utf-8",
                                                                 **PAGE_HEADERS}, head_only)
            if target == b"/dashboard/events" and not head_only:
                return await self._stream(writer)
            if target.startswith(b"/dashboard/"):
                found = static_file(target[len(b"/dashboard/"):].decode("ascii", "replace"))
                if found is not None:
                    return await self._respond(writer, 200, found[0], {"Content-Type": found[1], **STATIC_HEADERS},
                                               head_only)
        await self._respond(writer, 404, b"not found\n")

    async def _respond(self, writer: asyncio.StreamWriter, status: int, body: bytes,
                       headers: dict[str, str] | None = None, head_only: bool = False) -> None:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}", f"Content-Length: {len(body)}",
                 "Connection: close"]
        headers = headers or {}
        if "Content-Type" not in headers:
            lines.append("Content-Type: text/plain; charset=utf-8")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body))
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        """Server-Sent Events: hello, then every message of the feed until the peer goes away."""
        feed = self.feed
        if self._streams >= self.max_streams:
            return await self._respond(writer, 503, b"too many dashboards open\n", {"Retry-After": "5"})
        self._streams += 1
        feed.readers += 1
        try:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
                         b"X-Accel-Buffering: no\r\nConnection: close\r\n\r\nretry: 2000\n\n")
            seq, hello = feed.hello()
            writer.write(hello)
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
            while not feed.closed and not writer.is_closing():
                messages = await feed.after(seq, KEEPALIVE_S)
                if messages is None:       # fell behind the ring: start over
                    seq, hello = feed.hello()
                    writer.write(hello)
                elif not messages:
                    writer.write(b": keepalive\n\n")   # also finds peers that left
                else:
                    seq = messages[-1][0]
                    writer.write(b"".join(m[1] for m in messages))
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
        finally:
            feed.readers -= 1
            self._streams -= 1


def _header(head: bytes, name: bytes) -> str:
    """The value of one request header (name in lower case), "" when absent."""
    for line in head.split(b"\r\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name:
            return value.strip().decode("latin-1")
    return ""


def parse_bind(value: str) -> tuple[str, int]:
    """HOST:PORT (or [IPv6]:PORT) of --metrics-bind; ValueError with a clear message otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--metrics-bind wants HOST:PORT, not {value!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "127.0.0.1", int(port)


__all__ = ["OpsServer", "parse_bind"]
