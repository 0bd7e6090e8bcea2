"""Calls the master answers itself: the MasterEndpoint's own methods, the control commands (from the
control socket only) and the internal methods workers use to reach each other (from workers only)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import zmq

from .. import protocol
from ..endpoint import Dispatcher, encode_response
from ..ops import log
from ..protocol import NO_ID, RPCError
from .view import MasterView

Handler = Callable[..., Awaitable[Any]]


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

    async def answer(self, req: protocol.Request, sock: zmq.Socket, envelope: list[bytes], source: str) -> None:
        try:
            response = await self.run(req, source)
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

    async def run(self, req: protocol.Request, source: str) -> bytes | None:
        """Run a master, admin or internal method; the encoded response, None for a notification."""
        method = req.method
        if method in self.methods:
            response = await self.dispatcher.run(req)
        else:
            handler = self._handler(method, source)
            if handler is None:
                response = master_lacks(req) if source == "worker" else protocol.method_not_found(
                    req.id, method)
            else:
                response = await _call(handler, req)
        if req.id is NO_ID:
            return None
        return encode_response(response, self.router.config.debug)


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
