"""Python clients: `Client` (blocking) and `AsyncClient`, by instance name or address.

    with Client("myapp", timeout=10) as c:      # control.sock of the running instance "myapp"
        c.call("fib", 30)                       # waits at most 10 s (the client's default)
        c.call("fib", 35, timeout=60)           # this call may take a minute
    c = Client(address="tcp://127.0.0.1:7000")   # a --bind endpoint

`timeout` is the one keyword `call` keeps for itself; to pass a named param called timeout, use
`call_params(method, {"timeout": 5})`. A call past its timeout raises TimeoutError; an error answer
raises RemoteError (code, message, data); no instance to call raises clusterd.control.NoInstance.
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


_DEFAULT: Any = object()  # "the client's default timeout"


def _address(name: str | None, address: str | None) -> str:
    if address:
        return address
    return find_instance(name, choose="Client(name=...)").control_address


def _check_timeout(timeout: Any) -> None:
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ValueError(f"timeout must be a positive number of seconds or None, not {timeout!r}")


def _params(params: tuple, named: dict) -> list | dict:
    if params and named:
        raise TypeError("use positional or named params, not both (JSON-RPC allows one kind per call)")
    return dict(named) if named else list(params)


class Client:
    """A blocking client; `call` raises RemoteError with code, message and data, TimeoutError past
    its timeout (the call's own, else the client's; None waits for ever)."""

    def __init__(self, name: str | None = None, *, address: str | None = None,
                 timeout: float | None = None) -> None:
        _check_timeout(timeout)
        self.timeout = timeout
        self._conn = ControlClient(_address(name, address), None)

    def call(self, method: str, *params: Any, timeout: float | None = _DEFAULT, **named: Any) -> Any:
        return self.call_params(method, _params(params, named), timeout=timeout)

    def call_params(self, method: str, params: list | dict, *, timeout: float | None = _DEFAULT) -> Any:
        """Call with params given as one list or dict (any names, `timeout` included)."""
        if timeout is _DEFAULT:
            timeout = self.timeout
        _check_timeout(timeout)
        return self._conn.call(method, params, timeout=timeout)  # None: the connection waits for ever

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
        _check_timeout(timeout)
        self.address = _address(name, address)
        self.timeout = timeout
        self._ctx = zmq.asyncio.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(self.address)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None

    async def call(self, method: str, *params: Any, timeout: float | None = _DEFAULT, **named: Any) -> Any:
        """Call and return the result; RemoteError for an error answer, TimeoutError past the timeout."""
        return await self.call_params(method, _params(params, named), timeout=timeout)

    async def call_params(self, method: str, params: list | dict, *, timeout: float | None = _DEFAULT) -> Any:
        """Call with params given as one list or dict (any names, `timeout` included)."""
        if timeout is _DEFAULT:
            timeout = self.timeout
        _check_timeout(timeout)
        rid = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read())
        try:
            await self._sock.send(protocol.dumps(protocol.make_request(method, params, rid)))
            try:
                reply = await asyncio.wait_for(fut, timeout) if timeout is not None else await fut
            except TimeoutError:
                raise TimeoutError(f"no answer to {method} from {self.address} within {timeout:g}s") from None
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
