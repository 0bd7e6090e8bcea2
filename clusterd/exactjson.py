"""JSON for what orjson cannot carry: integers past 64 bits, at any depth, without recursion.

orjson reads integers past 64 bits as floats (and numbers past a double's range not at all) and
writes no integer past 64 bits; the standard library is exact but recursive, so a document nested a
thousand deep raises RecursionError. These two functions walk the document with an explicit stack:
a message orjson accepts is never refused here for its depth. Integers are bounded only by
sys.get_int_max_str_digits(), with a clear error past it. Only messages holding a long run of
digits come here, so being slower than orjson costs nothing on the common path.
"""

from __future__ import annotations

import json
import re
import sys
from json.decoder import scanstring
from typing import Any

import orjson

MAX_DEPTH = 1024
"""As deep as orjson reads: the two parsers accept the same documents."""

_OPTIONS = orjson.OPT_NON_STR_KEYS
_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?")
_END = object()
_INT64_MIN, _UINT64_MAX = -(2 ** 63), 2 ** 64 - 1


class TooManyDigits(ValueError):
    """A number in the document is longer than this interpreter converts (a limit, not bad JSON)."""


def too_many_digits() -> str:
    return (f"an integer has more than {sys.get_int_max_str_digits()} digits "
            f"(the limit of sys.get_int_max_str_digits())")


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Decode one JSON document exactly; ValueError when it is not valid JSON or holds a number too long."""
    text = data if isinstance(data, str) else bytes(data).decode("utf-8")
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        return _loads_flat(text)
    except ValueError as exc:
        if "integer string conversion" in str(exc):
            raise TooManyDigits(too_many_digits()) from None
        raise


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {text[:20]}... is out of a double's range")
    return value


def _number(text: str, match: re.Match) -> int | float:
    literal = match.group()
    if match.group(1) is None and match.group(2) is None:
        try:
            return int(literal)
        except ValueError:
            raise TooManyDigits(too_many_digits()) from None
    return _finite_float(literal)


def _key(text: str, i: int) -> tuple[str, int]:
    if text[i:i + 1] != '"':
        raise ValueError(f"expected a string key at char {i}")
    key, i = scanstring(text, i + 1, True)
    i = _WS.match(text, i).end()
    if text[i:i + 1] != ":":
        raise ValueError(f"expected ':' at char {i}")
    return key, _WS.match(text, i + 1).end()


def _loads_flat(text: str) -> Any:
    """json.loads with an explicit stack of open containers instead of recursion."""
    ws = _WS.match
    stack: list[list | dict] = []
    keys: list[str | None] = []
    i = ws(text, 0).end()
    while True:
        char = text[i:i + 1]
        if char == "{" or char == "[":
            i = ws(text, i + 1).end()
            closer = "}" if char == "{" else "]"
            if text[i:i + 1] == closer:
                value: Any = {} if char == "{" else []
                i += 1
            else:
                if len(stack) >= MAX_DEPTH:
                    raise ValueError(f"nested deeper than {MAX_DEPTH}")
                if char == "{":
                    stack.append({})
                    key, i = _key(text, i)
                    keys.append(key)
                else:
                    stack.append([])
                    keys.append(None)
                continue
        elif char == '"':
            value, i = scanstring(text, i + 1, True)
        elif text.startswith("true", i):
            value, i = True, i + 4
        elif text.startswith("false", i):
            value, i = False, i + 5
        elif text.startswith("null", i):
            value, i = None, i + 4
        else:
            match = _NUMBER.match(text, i)
            if match is None:
                raise ValueError(f"unexpected character at char {i}")
            value, i = _number(text, match), match.end()
        while True:  # put the value into its container; close the containers that end here
            i = ws(text, i).end()
            if not stack:
                if i != len(text):
                    raise ValueError(f"extra data at char {i}")
                return value
            top = stack[-1]
            if type(top) is list:
                top.append(value)
            else:
                top[keys[-1]] = value
            char = text[i:i + 1]
            if char == ",":
                i = ws(text, i + 1).end()
                if type(top) is dict:
                    keys[-1], i = _key(text, i)
                break
            if char != ("]" if type(top) is list else "}"):
                raise ValueError(f"expected ',' or a closing bracket at char {i}")
            i += 1
            value = stack.pop()
            keys.pop()


def dumps(obj: Any) -> bytes:
    """Encode to JSON bytes like orjson (OPT_NON_STR_KEYS), plus integers of any size, at any depth.

    TypeError for what JSON cannot carry: a cycle, an unknown type, an integer past
    sys.get_int_max_str_digits().
    """
    parts: list[bytes] = []
    open_ids: set[int] = set()    # containers being written: meeting one again is a cycle
    stack: list[list] = []        # [iterator, closer, id, is_dict, first]
    value = obj
    while True:
        if isinstance(value, (dict, list, tuple)):
            ident = id(value)
            if ident in open_ids:
                raise TypeError("a circular reference cannot be encoded as JSON")
            open_ids.add(ident)
            if isinstance(value, dict):
                parts.append(b"{")
                stack.append([iter(value.items()), b"}", ident, True, True])
            else:
                parts.append(b"[")
                stack.append([iter(value), b"]", ident, False, True])
        else:
            parts.append(_leaf(value))
        while stack:
            frame = stack[-1]
            item = next(frame[0], _END)
            if item is _END:
                parts.append(frame[1])
                open_ids.discard(frame[2])
                stack.pop()
                continue
            if frame[4]:
                frame[4] = False
            else:
                parts.append(b",")
            if frame[3]:
                key, value = item
                parts.append(_dict_key(key))
                parts.append(b":")
            else:
                value = item
            break
        else:
            return b"".join(parts)


def _leaf(value: Any) -> bytes:
    if isinstance(value, int) and not isinstance(value, bool) and not _INT64_MIN <= value <= _UINT64_MAX:
        try:
            return str(int(value)).encode()
        except ValueError:
            raise TypeError(too_many_digits()) from None
    try:
        return orjson.dumps(value, option=_OPTIONS)
    except TypeError:
        if isinstance(value, str):  # lone surrogates: only escaped they are JSON
            return json.dumps(value).encode()
        raise TypeError(f"{type(value).__name__} is not JSON serialisable") from None


def _dict_key(key: Any) -> bytes:
    if isinstance(key, str):
        return _leaf(key)
    if isinstance(key, int) and not isinstance(key, bool):
        return b'"' + _leaf(key) + b'"'
    try:
        return orjson.dumps({key: None}, option=_OPTIONS)[1:-6]  # b'{"k":null}' -> b'"k"'
    except TypeError:
        raise TypeError(f"a key of type {type(key).__name__} is not JSON serialisable") from None
