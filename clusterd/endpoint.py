"""The @rpc decorator, method tables, and running one request against an endpoint object.

Only methods marked with @rpc are reachable: the table is built from those marks, never from
attribute names, so no caller can walk to private attributes through a method name.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import protocol
from .protocol import RPCError

_MARK = "__clusterd_rpc__"


@dataclass(frozen=True, slots=True)
class RPCOptions:
    name: str | None
    timeout: float | None
    idempotent: bool
    offload: bool = False


def rpc(func: Callable | None = None, *, name: str | None = None, timeout: float | None = None,
        idempotent: bool = False, offload: bool = False) -> Any:
    """Mark a method as callable over JSON-RPC: `@rpc` or `@rpc(name=..., timeout=..., idempotent=..., offload=...)`.

    timeout (seconds) overrides --call-timeout for this method; idempotent calls are retried on
    another worker when theirs dies, instead of failing with -32002. offload (a plain `def` only)
    runs the method in a thread of the worker, so its event loop keeps serving other calls
    meanwhile (useful when the method waits on I/O or releases the GIL; pure-Python CPU work
    still takes turns with the loop).
    """
    if timeout is not None and timeout <= 0:
        raise ValueError("rpc timeout must be positive")

    def mark(f: Callable) -> Callable:
        if offload and inspect.iscoroutinefunction(f):
            raise ValueError(f"@rpc(offload=True) is for plain def methods; {f.__name__} is async")
        setattr(f, _MARK, RPCOptions(name, timeout, bool(idempotent), bool(offload)))
        return f

    return mark(func) if func is not None else mark


class _Arity:
    """A precomputed check of params against a signature: cheaper than Signature.bind per call."""

    __slots__ = ("min_pos", "max_pos", "names", "required", "any_kw")

    def __init__(self, func: Callable) -> None:
        sig = inspect.signature(func)
        params = list(sig.parameters.values())[1:]  # drop self
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        self.min_pos = sum(1 for p in positional if p.default is p.empty)
        self.max_pos: int | None = None if any(p.kind is p.VAR_POSITIONAL for p in params) else len(positional)
        self.names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        self.required = {p.name for p in params
                         if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is p.empty}
        self.required |= {p.name for p in params if p.kind is p.POSITIONAL_ONLY and p.default is p.empty}
        self.any_kw = any(p.kind is p.VAR_KEYWORD for p in params)

    def check(self, params: list | dict) -> str | None:
        """Return why params do not fit, or None."""
        if isinstance(params, list):
            n = len(params)
            if n < self.min_pos:
                return f"expected at least {self.min_pos} params, got {n}"
            if self.max_pos is not None and n > self.max_pos:
                return f"expected at most {self.max_pos} params, got {n}"
            return None
        missing = self.required - params.keys()
        if missing:
            return "missing params: " + ", ".join(sorted(missing))
        if not self.any_kw:
            unknown = params.keys() - self.names
            if unknown:
                return "unknown params: " + ", ".join(sorted(unknown))
        return None


@dataclass(frozen=True, slots=True)
class Method:
    """One reachable method of an endpoint class."""

    name: str
    attr: str
    is_async: bool
    timeout: float | None
    idempotent: bool
    arity: _Arity
    offload: bool = False

    def describe(self) -> dict:
        return {"timeout": self.timeout, "idempotent": self.idempotent}


def method_table(cls: type) -> dict[str, Method]:
    """Every @rpc method of cls (and its bases), by its public name."""
    table: dict[str, Method] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            func = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            opts = getattr(func, _MARK, None)
            if not isinstance(opts, RPCOptions) or not callable(func):
                continue
            name = opts.name or attr
            table = {k: v for k, v in table.items() if v.attr != attr}
            table[name] = Method(name, attr, inspect.iscoroutinefunction(func), opts.timeout,
                                 opts.idempotent, _Arity(func), opts.offload)
    return table


def error_for_exception(exc: BaseException, debug: bool) -> dict:
    """The JSON-RPC error object an exception raised by user code becomes."""
    if isinstance(exc, RPCError):
        return exc.to_dict()
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ fails still becomes an answer
        text = f"<{type(exc).__name__} that cannot be shown>"
    data: dict = {"type": type(exc).__name__, "message": text}
    if debug:
        try:
            data["traceback"] = "".join(traceback.format_exception(exc))
        except Exception:
            pass
    return {"code": protocol.APPLICATION_ERROR,
            "message": f"{type(exc).__name__}: {text}" if text else type(exc).__name__, "data": data}


class Dispatcher:
    """Runs requests against one endpoint object: synchronous methods inline, async ones as coroutines."""

    def __init__(self, target: Any, debug: bool = False) -> None:
        self.target = target
        self.debug = debug
        self.report: Callable[[str, BaseException], None] | None = None  # logs what user code raised
        self.methods = method_table(type(target))
        # bind through the class, so an instance attribute of the same name (self.pid) cannot hide a method
        self._bound = {name: inspect.getattr_static(type(target), m.attr).__get__(target, type(target))
                       for name, m in self.methods.items()}

    def prepare(self, req: protocol.Request) -> tuple[Callable, Method] | dict:
        """The bound function for a request, or the error response to send instead."""
        method = self.methods.get(req.method)
        if method is None:
            return protocol.method_not_found(req.id, req.method)
        why = method.arity.check(req.params)
        if why is not None:
            return protocol.error_response(req.id, protocol.INVALID_PARAMS, data=why)
        return self._bound[req.method], method

    def run_sync(self, func: Callable, params: list | dict, rid: Any, name: str | None = None) -> dict:
        try:
            result = func(*params) if isinstance(params, list) else func(**params)
        except Exception as exc:  # user code: any failure becomes an error response
            return self._failed(exc, rid, name or func.__name__)
        return {"jsonrpc": "2.0", "result": result, "id": rid}

    async def run_async(self, func: Callable, params: list | dict, rid: Any, name: str | None = None) -> dict:
        try:
            result = await (func(*params) if isinstance(params, list) else func(**params))
        except Exception as exc:
            return self._failed(exc, rid, name or func.__name__)
        return {"jsonrpc": "2.0", "result": result, "id": rid}

    async def run_offloaded(self, func: Callable, params: list | dict, rid: Any, name: str | None = None) -> dict:
        """A sync method marked offload: run in the default thread pool, the loop serving on meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(None, self.run_sync, func, params, rid, name)

    def error_of(self, exc: Exception, rid: Any, name: str) -> dict:
        """The error response for an exception from user code, reported as run_sync's and run_async's are."""
        return self._failed(exc, rid, name)

    def _failed(self, exc: Exception, rid: Any, name: str) -> dict:
        if self.report is not None and not isinstance(exc, RPCError):  # an RPCError is a deliberate answer
            try:
                self.report(name, exc)
            except Exception:
                pass  # reporting must never cost the caller the answer
        return {"jsonrpc": "2.0", "error": error_for_exception(exc, self.debug), "id": rid}

    async def run(self, req: protocol.Request) -> dict:
        """Run one request to its response dict, whatever kind of method it names."""
        prepared = self.prepare(req)
        if isinstance(prepared, dict):
            return prepared
        func, method = prepared
        if method.is_async:
            return await self.run_async(func, req.params, req.id, method.name)
        if method.offload:
            return await self.run_offloaded(func, req.params, req.id, method.name)
        return self.run_sync(func, req.params, req.id, method.name)


if sys.version_info >= (3, 12):
    def start_task(loop: asyncio.AbstractEventLoop, coro: Any) -> asyncio.Task:
        """Run a coroutine as a task that starts at once: one that never awaits is done on return."""
        return asyncio.Task(coro, loop=loop, eager_start=True)
else:
    def start_task(loop: asyncio.AbstractEventLoop, coro: Any) -> asyncio.Task:
        """Run a coroutine as a task (eager start needs Python 3.12: before it, a task runs from
        the next loop turn; plain-def methods are run inline by the callers instead)."""
        return loop.create_task(coro)


def encode_response(response: dict, debug: bool = False) -> bytes:
    """Encode a response; a result JSON cannot carry becomes an error instead of a lost answer."""
    try:
        return protocol.dumps(response)
    except (TypeError, ValueError) as exc:
        what = "Result" if "result" in response else "Error data"
        return protocol.encode_error(response.get("id"), protocol.INTERNAL_ERROR,
                                     f"{what} is not JSON serialisable", data=str(exc))
