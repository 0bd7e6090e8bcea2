"""JSON-RPC 2.0 messages: codes, decoding, validation and encoding.

Pure functions over bytes and dicts: no sockets, no asyncio. The master, the workers and the
clients all share this module, so the wire format is decided in one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from . import exactjson

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# clusterd's own codes (DESIGN.md 7)
APPLICATION_ERROR = -32000
NO_WORKER = -32001
WORKER_DIED = -32002
CALL_TIMEOUT = -32003
SHUTTING_DOWN = -32004
TOO_BUSY = -32005

MESSAGES = {
    PARSE_ERROR: "Parse error",
    INVALID_REQUEST: "Invalid Request",
    METHOD_NOT_FOUND: "Method not found",
    INVALID_PARAMS: "Invalid params",
    INTERNAL_ERROR: "Internal error",
    APPLICATION_ERROR: "Application error",
    NO_WORKER: "No worker ready",
    WORKER_DIED: "Worker died while handling the call",
    CALL_TIMEOUT: "Call timed out",
    SHUTTING_DOWN: "Shutting down",
    TOO_BUSY: "Too many calls in flight",
}

_ABSENT = object()
NO_ID = object()
"""Marks a message without an "id" member: a notification, which gets no answer."""

_OPTIONS = orjson.OPT_NON_STR_KEYS
# orjson turns integers past 64 bits into floats: an id or a param of 2**70 would come back changed.
# Such a long run of digits is rare, so only messages holding one take the slower exact path.
_LONG_DIGITS_STR = re.compile(r"\d{19}")
# For bytes, every digit becomes "9" and a run of nineteen of them is looked for: a third of the
# time a regular expression takes on a small message.
_DIGITS_AS_NINES = bytes.maketrans(b"0123456789", b"9" * 10)
_NINETEEN = b"9" * 19


fast_loads = orjson.loads
"""For routing only: integers past 64 bits come back as floats (the master re-reads those exactly)."""


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Decode one JSON document; ValueError when it is not valid JSON (NaN and Infinity are not).

    Integers are exact up to sys.get_int_max_str_digits() digits, at any depth orjson reads."""
    if isinstance(data, memoryview):
        data = bytes(data)
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        if has_long_digits(data):  # a number past a double's range: only the exact parse reads it
            return exactjson.loads(data)
        raise
    if has_long_digits(data):
        return exactjson.loads(data)
    return obj


def has_long_digits(data: bytes | bytearray | str) -> bool:
    """Whether orjson may have misread data: it holds a run of 19 digits (an integer past 64 bits
    needs one). A decoder that used orjson directly decodes such data again with loads()."""
    if isinstance(data, str):
        return _LONG_DIGITS_STR.search(data) is not None
    return _NINETEEN in data.translate(_DIGITS_AS_NINES)


def dumps(obj: Any) -> bytes:
    """Encode to JSON bytes; TypeError for what JSON cannot carry (a cycle, an unknown type, an
    integer past sys.get_int_max_str_digits()). Integers past 64 bits take the exact encoder."""
    try:
        return orjson.dumps(obj, option=_OPTIONS)
    except TypeError:
        return exactjson.dumps(obj)


class RPCError(Exception):
    """An error that reaches the caller exactly as given: code, message and optional data."""

    def __init__(self, code: int, message: str | None = None, data: Any = None) -> None:
        self.code = int(code)
        self.message = message if message is not None else MESSAGES.get(self.code, "Error")
        self.data = data
        super().__init__(self.message)

    def to_dict(self) -> dict:
        error = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}, {self.message!r}, data={self.data!r})"


class RemoteError(RPCError):
    """An error answered by the other side of a call."""


@dataclass(slots=True)
class Request:
    """A validated request or notification (id is NO_ID for a notification)."""

    method: str
    params: list | dict
    id: Any

    @property
    def is_notification(self) -> bool:
        return self.id is NO_ID


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool))


def parse_request(obj: Any) -> Request | dict:
    """Validate one decoded request object.

    Returns a Request, or an error response dict to send back (the id is kept when it is usable,
    null otherwise, as the specification says).
    """
    if not isinstance(obj, dict):
        return error_response(None, INVALID_REQUEST)
    rid = obj.get("id", NO_ID)
    if rid is not NO_ID and not _valid_id(rid):
        return error_response(None, INVALID_REQUEST)
    answer_id = None if rid is NO_ID else rid
    method = obj.get("method")
    if obj.get("jsonrpc") != "2.0" or not isinstance(method, str):
        return error_response(answer_id, INVALID_REQUEST)
    params = obj.get("params", _ABSENT)
    if params is _ABSENT:
        params = []
    elif not isinstance(params, (list, dict)):
        return error_response(answer_id, INVALID_REQUEST)
    return Request(method, params, rid)


def error_response(rid: Any, code: int, message: str | None = None, data: Any = None) -> dict:
    error: dict = {"code": code, "message": message if message is not None else MESSAGES.get(code, "Error")}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "error": error, "id": None if rid is NO_ID else rid}


def parse_error(exc: ValueError, rid: Any = None) -> dict:
    """The answer to bytes that are not a JSON document this side can read; says why when it is a
    limit (an integer too long) rather than plain bad JSON."""
    return error_response(rid, PARSE_ERROR, data=str(exc) if isinstance(exc, exactjson.TooManyDigits) else None)


def result_response(rid: Any, result: Any) -> dict:
    return {"jsonrpc": "2.0", "result": result, "id": rid}


def encode_error(rid: Any, code: int, message: str | None = None, data: Any = None) -> bytes:
    return dumps(error_response(rid, code, message, data))


def method_not_found(rid: Any, method: str) -> dict:
    """-32601 that names the method (cut short: the name comes from whoever sent it)."""
    shown = method if len(method) <= 80 else method[:80] + "..."
    return error_response(rid, METHOD_NOT_FOUND, f"Method not found: {shown!r}")


def make_request(method: str, params: list | dict | tuple = (), rid: Any = NO_ID) -> dict:
    msg: dict = {"jsonrpc": "2.0", "method": method}
    if params:
        msg["params"] = list(params) if isinstance(params, tuple) else params
    if rid is not NO_ID:
        msg["id"] = rid
    return msg


def response_outcome(response: dict) -> Any:
    """Return the result of a decoded response, or raise its error as RemoteError."""
    error = response.get("error")
    if error is not None:
        if isinstance(error, dict):
            raise RemoteError(error.get("code", INTERNAL_ERROR), error.get("message"), error.get("data"))
        raise RemoteError(INTERNAL_ERROR, "Malformed error", error)
    return response.get("result")


def error_from(value: Any) -> RPCError:
    """Rebuild an RPCError from an error dict carried inside a result (broadcast, for example)."""
    if isinstance(value, dict):
        return RemoteError(value.get("code", INTERNAL_ERROR), value.get("message"), value.get("data"))
    return RemoteError(INTERNAL_ERROR, str(value))
