"""Python clients: `Client` (blocking) and `AsyncClient`, by instance name or address.

    with Client("myapp") as c:          # control.sock of the running instance "myapp"
        c.call("fib", 30)
    c = Client(address="tcp://127.0.0.1:7000")   # a --bind endpoint
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import zmq
import zmq.asyncio

from . import protocol
from .control import ControlClient, find_instance
from .protocol import RemoteError

__all__ = ["Client", "AsyncClient", "RemoteError"]


def _address(name: str | None, address: str | None) -> str:
    if address:
        return address
    return find_instance(name).control_address


def _params(params: tuple, named: dict) -> list | dict:
    if params and named:
        raise TypeError("use positional or named params, not both (JSON-RPC allows one kind per call)")
    return dict(named) if named else list(params)


class Client:
    """A blocking client; `call` raises RemoteError with code, message and data."""

    def __init__(self, name: str | None = None, *, address: str | None = None,
                 timeout: float | None = None) -> None:
        self._conn = ControlClient(_address(name, address), timeout)

    def call(self, method: str, *params: Any, **named: Any) -> Any:
        return self._conn.call(method, _params(params, named))

    def notify(self, method: str, *params: Any, **named: Any) -> None:
        self._conn.notify(method, _params(params, named))

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """An asyncio client: many calls may be in flight at once on one socket."""

    def __init__(self, name: str | None = None, *, address: str | None = None,
                 timeout: float | None = None) -> None:
        self.address = _address(name, address)
        self.timeout = timeout
        self._ctx = zmq.asyncio.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(self.address)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None

    async def call(self, method: str, *params: Any, **named: Any) -> Any:
        rid = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read())
        try:
            await self._sock.send(protocol.dumps(protocol.make_request(method, _params(params, named), rid)))
            reply = await asyncio.wait_for(fut, self.timeout) if self.timeout else await fut
        finally:
            self._pending.pop(rid, None)
        return protocol.response_outcome(reply)

    async def notify(self, method: str, *params: Any, **named: Any) -> None:
        await self._sock.send(protocol.dumps(protocol.make_request(method, _params(params, named))))

    async def _read(self) -> None:
        try:
            while self._pending:
                try:
                    reply = protocol.loads(await self._sock.recv())
                except ValueError:
                    continue
                if isinstance(reply, dict):
                    fut = self._pending.get(reply.get("id"))
                    if fut is not None and not fut.done():
                        fut.set_result(reply)
        except zmq.ZMQError as exc:  # the socket was closed or broke: no answer can come any more
            self._fail_pending(ConnectionError(f"connection to {self.address} lost: {exc}"))

    def _fail_pending(self, exc: BaseException) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)

    async def close(self) -> None:
        """Close the socket; calls still waiting get ConnectionError instead of waiting forever."""
        if self._reader is not None:
            self._reader.cancel()
        self._fail_pending(ConnectionError("client closed"))
        self._sock.close(linger=0)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
