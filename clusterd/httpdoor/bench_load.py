"""The raw-socket load generator of bench_refs.py: plain non-blocking sockets and ``selectors``, with
requests built once, so it spends a few microseconds per call.
"""


import base64
import os
import selectors
import socket
import time
from collections.abc import Callable

import orjson

PAYLOAD = {"jsonrpc": "2.0", "method": "echo", "params": ["x" * 16], "id": 1}
BODY = orjson.dumps(PAYLOAD)


def http_request(port: int) -> bytes:
    return (b"POST / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (port, len(BODY))) + BODY


def ws_frame(payload: bytes) -> bytes:
    """One masked client text frame (the mask is fixed: fine for a benchmark, not for a browser)."""
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    n = len(payload)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    return head + mask + masked


def ws_connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (port, key))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the WebSocket handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
    if head.index(b"\r\n\r\n") + 4 != len(head):
        raise ConnectionError("data after the 101")
    return sock


def count_http(buf: bytearray) -> int:
    """Remove whole responses from ``buf``; how many."""
    n = 0
    pos = 0
    while True:
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        head = bytes(buf[pos:end]).lower()
        i = head.find(b"content-length:")
        length = int(head[i + 15: head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None]) if i >= 0 else 0
        if end + 4 + length > len(buf):
            break
        pos = end + 4 + length
        n += 1
    del buf[:pos]
    return n


def count_ws(buf: bytearray) -> int:
    """Remove whole server frames (unmasked) from ``buf``; how many."""
    n = 0
    pos = 0
    size = len(buf)
    while pos + 2 <= size:
        length = buf[pos + 1] & 0x7F
        head = 2
        if length == 126:
            if pos + 4 > size:
                break
            length = int.from_bytes(buf[pos + 2: pos + 4], "big")
            head = 4
        elif length == 127:
            if pos + 10 > size:
                break
            length = int.from_bytes(buf[pos + 2: pos + 10], "big")
            head = 10
        if pos + head + length > size:
            break
        pos += head + length
        n += 1
    del buf[:pos]
    return n


def drive(socks: list[socket.socket], message: bytes, window: int, count: Callable[[bytearray], int],
          duration: float, warmup: float = 0.3) -> float:
    """Keep ``window`` messages in flight on every socket for ``duration`` s; answered calls/s."""
    sel = selectors.DefaultSelector()
    bufs = {}
    for sock in socks:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
        bufs[sock] = bytearray()
        sock.send(message * window)
    answered = 0
    start = time.perf_counter()
    t_measure = start + warmup
    t_end = t_measure + duration
    counting = False
    while True:
        now = time.perf_counter()
        if not counting and now >= t_measure:
            counting, answered, t_measure = True, 0, now
        if now >= t_end:
            break
        for key, _ in sel.select(0.5):
            sock = key.fileobj
            data = sock.recv(262144)  # type: ignore[union-attr]
            if not data:
                raise ConnectionError("server closed a connection")
            buf = bufs[sock]
            buf += data
            done = count(buf)
            if done:
                answered += done
                sock.send(message * done)  # type: ignore[union-attr]
    elapsed = time.perf_counter() - t_measure
    sel.close()
    for sock in socks:
        sock.close()
    return answered / elapsed


def sequential(sock: socket.socket, message: bytes, count: Callable[[bytearray], int], calls: int) -> list[float]:
    """One call at a time; each call's round trip in microseconds."""
    samples = []
    buf = bytearray()
    clock = time.perf_counter_ns
    for i in range(calls + calls // 10):
        t0 = clock()
        sock.sendall(message)
        while not count(buf):
            buf += sock.recv(65536)
        if i >= calls // 10:
            samples.append((clock() - t0) / 1000)
    sock.close()
    return samples


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def http_connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
