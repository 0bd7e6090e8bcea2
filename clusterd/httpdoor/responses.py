"""HTTP/1.1 response bytes, built once where possible: the per-call path only joins a head and a body."""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"

_date_second = 0
_date_line = b""


def date_line() -> bytes:
    """The ``Date`` header line (RFC 9110 asks an origin server with a clock for it), cached per second."""
    global _date_second, _date_line
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_line = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
    return _date_line


def response(status: int, body: bytes = b"", content_type: bytes = TEXT, *, keep_alive: bool = True,
             extra: bytes = b"") -> bytes:
    """One whole response. ``extra`` is raw header lines, each ending in CRLF."""
    phrase = HTTPStatus(status).phrase.encode()
    head = [b"HTTP/1.1 %d %s\r\n" % (status, phrase), date_line(), extra]
    if status == 204 or status == 304:
        pass
    else:
        if body:
            head.append(b"Content-Type: " + content_type + b"\r\n")
        head.append(b"Content-Length: %d\r\n" % len(body))
    if not keep_alive:
        head.append(b"Connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head) + body


_OK_JSON = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


def json_ok(body: bytes, keep_alive: bool, extra: bytes) -> bytes:
    """The hot path's answer: 200 with a JSON-RPC response."""
    return b"".join((_OK_JSON, date_line(), extra, b"Content-Length: %d\r\n" % len(body),
                     b"" if keep_alive else b"Connection: close\r\n", b"\r\n", body))


def no_content(keep_alive: bool, extra: bytes) -> bytes:
    """The answer to notifications only: 204, no body."""
    return b"".join((b"HTTP/1.1 204 No Content\r\n", date_line(), extra,
                     b"" if keep_alive else b"Connection: close\r\n", b"\r\n"))
