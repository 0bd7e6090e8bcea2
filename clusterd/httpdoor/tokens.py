"""The bearer token of --http-token-file: read once per worker, checked in constant time.

A client gives it as ``Authorization: Bearer <token>``. Browsers cannot set headers on a WebSocket,
so the upgrade also accepts it as a ``Sec-WebSocket-Protocol`` entry ``bearer.<token>`` (the way
Kubernetes' API server does); the server then answers with the other protocol the client offered
(``jsonrpc``): a browser fails a handshake whose answer names none of the protocols it offered, and
this way the token is not sent back (it is only when the client offered nothing else). Tokens are
therefore limited to characters an HTTP token may hold (RFC 9110 ``tchar``): what
``secrets.token_urlsafe`` and ``openssl rand -hex`` give.
"""

from __future__ import annotations

import hmac
import re

BEARER_PROTOCOL_PREFIX = b"bearer."
_TCHARS = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


class TokenError(ValueError):
    """The token file cannot be used; the message is one line for the user."""


def read_token(path: str) -> str:
    """The token in ``path`` (surrounding whitespace ignored)."""
    try:
        with open(path, encoding="utf-8") as fh:
            token = fh.read().strip()
    except OSError as exc:
        raise TokenError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TokenError(f"{path} is not text") from None
    if not token:
        raise TokenError(f"{path} is empty")
    if not _TCHARS.match(token):
        raise TokenError(f"{path}: the token may hold only letters, digits and !#$%&'*+.^_`|~- "
                         "(e.g. from python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return token


def split_protocols(header: bytes) -> list[bytes]:
    """The entries of a ``Sec-WebSocket-Protocol`` header."""
    return [p.strip() for p in header.split(b",") if p.strip()]


def protocol_token(header: bytes) -> bytes | None:
    """The token given as a ``bearer.<token>`` subprotocol, if any."""
    for entry in split_protocols(header):
        if entry.startswith(BEARER_PROTOCOL_PREFIX):
            return entry[len(BEARER_PROTOCOL_PREFIX):]
    return None


def chosen_protocol(header: bytes) -> bytes | None:
    """The subprotocol the server answers with: the first one offered that is not a token, else the first."""
    entries = split_protocols(header)
    for entry in entries:
        if not entry.startswith(BEARER_PROTOCOL_PREFIX):
            return entry
    return entries[0] if entries else None


def same(given: bytes, expected: bytes) -> bool:
    return hmac.compare_digest(given, expected)
