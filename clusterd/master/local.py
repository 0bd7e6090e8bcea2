"""Calls the master answers itself: the MasterEndpoint's own methods, the control commands (from the
control socket only) and the internal methods workers use to reach each other (from workers only)."""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

import zmq

from .. import protocol
from ..endpoint import Dispatcher, encode_response
from ..ops import log
from ..protocol import NO_ID, RPCError
from .view import MasterView

Handler = Callable[..., Awaitable[Any]]

# The door the master's calls to workers are counted under: "master" for its own (WorkersProxy), "worker"
# while it relays a worker's self.workers.* call (set for the task running the internal method).
calling_door: contextvars.ContextVar[str] = contextvars.ContextVar("calling_door", default="master")
# The metrics' door of a call, by the source the router gives it. A call a worker's HTTP/WebSocket
# door passed on to the master ("http") is not counted here: that door counts it, in the worker.
DOORS: dict[str, str | None] = {"admin": "zmq", "client": "zmq", "worker": "worker", "http": None}


class LocalMethods:
    """`name in local` tells the router the master answers it, not a worker.

    Their params are decoded exactly: only forwarded calls are routed on orjson's fast decoding."""

    def __init__(self, router: MasterView, dispatcher: Dispatcher, admin: dict[str, Handler],
                 internal: dict[str, Handler]) -> None:
        self.router = router
        self.dispatcher = dispatcher
        self.methods = dispatcher.methods
        self.admin = admin
        self.internal = internal
        self._faults = log.RateLimited()

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self.methods or name.startswith("clusterd."))

    async def answer(self, req: protocol.Request, sock: zmq.Socket, envelope: list[bytes], source: str,
                     request: dict | None = None) -> None:
        try:
            response = await self.run(req, source, request)
        except Exception:  # a fault of ours (user code is answered -32000 by the dispatcher)
            self._faults.exception(f"answering {req.method!r} failed")
            response = None if req.id is NO_ID else protocol.encode_error(req.id, protocol.INTERNAL_ERROR)
        if response is not None:
            self.router.send(sock, envelope, response)

    def _handler(self, method: str, source: str) -> Handler | None:
        if source == "admin":
            return self.admin.get(method)
        if source == "worker":
            return self.internal.get(method) or (self.admin["clusterd.status"] if method == "clusterd.status"
                                                 else None)
        return None

    async def run(self, req: protocol.Request, source: str, request: dict | None = None) -> bytes | None:
        """Run a master, admin or internal method; the encoded response, None for a notification.
        `request` (the decoded object) is given when tracing: it may carry the caller's trace context."""
        tracing = self.router.tracing
        if tracing is None or (source == "admin" and req.method not in self.methods):  # control commands: no span
            return await self._run(req, source)
        span = tracing.start(req.method, request, door=DOORS.get(source))
        with tracing.use(span):
            response = await self._run(req, source)
        tracing.end(span, _error_code(response))
        return response

    async def _run(self, req: protocol.Request, source: str) -> bytes | None:
        method = req.method
        if method in self.methods:
            started = perf_counter()
            response = await self.dispatcher.run(req)
            door = DOORS.get(source)
            if door is not None and req.id is not NO_ID:
                error = response.get("error")
                self.router.telemetry.record_code(method, door, error.get("code") if error else None,
                                                  perf_counter() - started)
        else:
            handler = self._handler(method, source)
            if handler is None:
                response = master_lacks(req) if source == "worker" else protocol.method_not_found(
                    req.id, method)
            else:
                if source == "worker":
                    calling_door.set("worker")
                response = await _call(handler, req)
        if req.id is NO_ID:
            return None
        return encode_response(response, self.router.config.debug)


def _error_code(response: bytes | None) -> int | None:
    if response is None or b'"error"' not in response:
        return None
    try:
        return protocol.loads(response)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return protocol.INTERNAL_ERROR


def master_lacks(req: protocol.Request) -> dict:
    """The answer to a worker asking the master for a method it does not have."""
    return protocol.error_response(req.id, protocol.METHOD_NOT_FOUND,
                                   f"Method not found: the master has no method {req.method!r}")


async def _call(handler: Handler, req: protocol.Request) -> dict:
    try:
        params = req.params
        result = await (handler(*params) if isinstance(params, list) else handler(**params))
        return protocol.result_response(req.id, result)
    except RPCError as exc:
        return protocol.error_response(req.id, exc.code, exc.message, exc.data)
    except TypeError as exc:
        return protocol.error_response(req.id, protocol.INVALID_PARAMS, data=str(exc))
    except Exception as exc:
        log.logger.exception("internal method %s failed", req.method)
        return protocol.error_response(req.id, protocol.INTERNAL_ERROR, data=str(exc))


__all__ = ["LocalMethods", "master_lacks"]
