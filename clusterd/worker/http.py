"""The HTTP/WebSocket front door as a worker serves it (DESIGN.md 12): the worker's JSON-RPC handling
of one HTTP body or WebSocket message, its probes, and its drain.

The master made the listening sockets and keeps them; this worker inherited them (master/front.py)
and serves them in its own event loop beside its link, so the master is not on this path:

- a method of this worker runs here: a plain `def` at once (the answer goes out without a task), an
  `async def` as a coroutine under its timeout (`@rpc(timeout=...)`, else --call-timeout: -32003);
- any other method is forwarded over the link (a FORWARD frame) and the master routes it exactly as
  a call from a --bind client: master methods, worker methods of another generation, and -32601 for
  the rest, admin methods included (one set of exposure rules for both doors);
- at the end of a graceful stop, calls still running get -32002 (idempotent ones are sent to the
  master, which runs them on another worker) before the connections close.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from bisect import bisect_left
from collections.abc import Callable
from time import perf_counter
from typing import Any, Protocol

import orjson

from .. import protocol, worker_log
from ..endpoint import Dispatcher, Method, encode_response
from ..httpdoor import HttpDoor, Page, Probes, Takeover, adopt
from ..httpdoor.tokens import read_token
from ..ops.method_stats import BOUNDS, OK, UNKNOWN, MethodStats, PreparedRecord
from ..protocol import NO_ID
from ..wire import WorkerSpec
from .dashboard_relay import DashboardRelay
from .heartbeat import MasterSeen


class Link(Protocol):
    """What the door uses of the worker's link to the master (link.WorkerLink)."""

    instance_ready: bool
    stop_within: float | None
    stats: MethodStats

    def forward(self, payload: bytes, rid: Any) -> "asyncio.Future[bytes] | None": ...

    def fail_forwards(self, code: int) -> None: ...

    def report_door(self, figures: dict) -> None: ...

    async def request(self, method: str, params: list | dict) -> Any: ...

    async def master_metrics(self, accept: str = "") -> tuple[bytes, str]: ...

_INVALID_REQUEST = protocol.encode_error(None, protocol.INVALID_REQUEST)
# An id of the short path: as orjson decodes it, exactly (a float may be an integer past 64 bits).
_PLAIN_ID_TYPES = frozenset((str, int, type(None)))
# Params of these types are exactly what was sent (orjson turns only integers past 64 bits into
# floats); any other (a float, a nested list or object) makes the short path look at the bytes.
_EXACT_TYPES = frozenset((str, int, bool, type(None)))
_orjson_loads = orjson.loads
_orjson_dumps = orjson.dumps
_FIRST_BOUND = BOUNDS[0]
_NO_PARAMS: list = []  # only ever unpacked into a call
_NOT_FOUND = str(protocol.METHOD_NOT_FOUND)
# The graceful timeout is cut in three: calls finish; then the rest are answered -32002 or retried
# on another worker (idempotent) within RETRY_SHARE of it (at most RETRY_LIMIT_S); MARGIN_SHARE is
# left for stop_services and the exit before the master's deadline.
RETRY_SHARE = 0.4
RETRY_LIMIT_S = 5.0
MARGIN_SHARE = 0.1


class _Plain:
    """A plain `def` of this worker, as the short path uses it: bound function, how many positional
    params fit (no per-call signature work), and its "ok" record, made on its first call."""

    __slots__ = ("func", "arity", "min_pos", "max_pos", "ok")

    def __init__(self, func: Callable, method: Method) -> None:
        self.func = func
        self.arity = method.arity
        self.min_pos = method.arity.min_pos
        self.max_pos = method.arity.max_pos if method.arity.max_pos is not None else sys.maxsize
        self.ok: PreparedRecord | None = None


class DoorCalls:
    """``dispatch(payload)`` for HttpDoor: the answer bytes, None (notifications), or an awaitable."""

    def __init__(self, link: Link, dispatcher: Dispatcher, debug: bool, call_timeout: float | None,
                 max_batch: int = 1000, log_calls: bool = False, door: str = "http") -> None:
        self.link = link
        self.door = door            # the metrics label of the calls: "http" or "ws"
        self.record = link.stats.record  # MethodStats: the heartbeats carry it to the master's metrics
        self.dispatcher = dispatcher
        self.methods: dict[str, Method] = dispatcher.methods
        self.bound: dict[str, Callable] = dispatcher._bound
        # --log-calls times every call on the general path; the short one is for the unlogged case
        self.plain: dict[str, _Plain] = {} if log_calls else {
            name: _Plain(self.bound[name], m) for name, m in self.methods.items() if not (m.is_async or m.offload)}
        self.log_calls = log_calls
        self.debug = debug
        self.call_timeout = call_timeout
        self.max_batch = max_batch
        self.running: set[asyncio.Task] = set()   # tasks of async calls, to answer at the stop deadline
        self.dying = False

    def __call__(self, payload: bytes) -> Any:
        try:
            obj = _orjson_loads(payload)
        except ValueError:
            return self._exactly(payload)
        if type(obj) is dict:
            # The common case, checked as parse_request and Dispatcher.prepare would, without their
            # objects: a call (with an id) of this worker's plain `def` with params that fit and that
            # orjson read exactly. Anything else takes _one.
            name = obj.get("method")
            plain = self.plain.get(name) if type(name) is str else None
            if plain is not None and obj.get("jsonrpc") == "2.0":
                params = obj.get("params", _NO_PARAMS)
                rid = obj.get("id", NO_ID)
                kind = type(params)
                if kind is list:
                    fits = plain.min_pos <= len(params) <= plain.max_pos
                    values: Any = params
                elif kind is dict:
                    fits = plain.arity.check(params) is None
                    values = params.values()
                else:
                    fits = False
                if fits and type(rid) in _PLAIN_ID_TYPES:
                    for value in values:
                        if type(value) not in _EXACT_TYPES:  # a float or nested: look at the bytes, once
                            if protocol.has_long_digits(payload):
                                return self._exactly(payload)
                            break
                    func = plain.func
                    started = perf_counter()
                    try:
                        result = func(*params) if kind is list else func(**params)
                    except Exception as exc:  # user code: any failure becomes an error response
                        return self._failed(exc, name, rid, started)
                    elapsed = perf_counter() - started
                    ok = plain.ok or self._prepare(plain, name)
                    # ok(elapsed) inlined (PreparedRecord.__call__); most calls are in the first bucket
                    ok.counts[0 if elapsed <= _FIRST_BOUND else bisect_left(BOUNDS, elapsed)] += 1
                    ok.sums[ok.method] += elapsed
                    calls, key = ok.calls, ok.key
                    calls[key] = calls.get(key, 0) + 1
                    try:  # without options: orjson's fastest; a result they cannot carry takes encode_response
                        return _orjson_dumps({"jsonrpc": "2.0", "result": result, "id": rid})
                    except TypeError:  # non-string keys, an integer past 64 bits, or not JSON at all
                        return encode_response({"jsonrpc": "2.0", "result": result, "id": rid}, self.debug)
            if protocol.has_long_digits(payload):
                return self._exactly(payload)
            return self._one(obj, payload)
        if type(obj) is list and obj:
            if protocol.has_long_digits(payload):
                return self._exactly(payload)
            if len(obj) > self.max_batch:
                return protocol.encode_error(None, protocol.INVALID_REQUEST,
                                             f"Batch too large (at most {self.max_batch} requests)")
            return self._batch(obj)
        return _INVALID_REQUEST

    dispatch = __call__  # bound, for the door: a bound method is called faster than an instance

    def _prepare(self, plain: _Plain, name: str) -> PreparedRecord:
        """The "ok" record of a plain method, made on its first call (a method never called stays out
        of the metrics)."""
        plain.ok = self.link.stats.prepared(name, self.door, OK)
        return plain.ok

    def _failed(self, exc: Exception, name: str, rid: Any, started: float) -> bytes:
        response = self.dispatcher.error_of(exc, rid, name)
        self.record(name, self.door, _outcome(response), perf_counter() - started)
        return encode_response(response, self.debug)

    def _exactly(self, payload: bytes) -> Any:
        """A message orjson cannot read exactly (an integer past 64 bits, a number past a double's
        range), or not JSON at all: decoded by protocol.loads, which reads it exactly or says why not."""
        try:
            obj = protocol.loads(payload)
        except ValueError as exc:
            return protocol.dumps(protocol.parse_error(exc))
        if type(obj) is dict:
            return self._one(obj, payload)
        if type(obj) is list and obj:
            if len(obj) > self.max_batch:
                return protocol.encode_error(None, protocol.INVALID_REQUEST,
                                             f"Batch too large (at most {self.max_batch} requests)")
            return self._batch(obj)
        return _INVALID_REQUEST

    # ------------------------------------------------------------------ one request
    def _one(self, obj: dict, payload: bytes | None) -> Any:
        req = protocol.parse_request(obj)
        if type(req) is dict:
            return protocol.dumps(req)
        method = self.methods.get(req.method)
        if method is None:
            answer = self.link.forward(payload if payload is not None else protocol.dumps(obj), req.id)
            return None if answer is None else self._forwarded(req.method, answer)
        notification = req.id is NO_ID
        why = method.arity.check(req.params)
        if why is not None:
            if notification:
                return None
            self.record(req.method, self.door, str(protocol.INVALID_PARAMS), 0.0)
            return protocol.encode_error(req.id, protocol.INVALID_PARAMS, data=why)
        func = self.bound[req.method]
        if method.is_async or method.offload:
            return self._run(func, req, method, payload if payload is not None else obj)
        started = perf_counter()
        response = self.dispatcher.run_sync(func, req.params, req.id, req.method)
        if self.log_calls:
            worker_log.access(req.method, "error" not in response, started, perf_counter())
        if notification:
            return None
        self.record(req.method, self.door, _outcome(response), perf_counter() - started)
        return encode_response(response, self.debug)

    async def _forwarded(self, name: str, answer: "asyncio.Future[bytes]") -> bytes:
        """A call the master answers (or routes): counted here, since the master leaves this door's calls to it."""
        started = perf_counter()
        data = await answer
        outcome = _answer_outcome(data)
        self.record(UNKNOWN if outcome == _NOT_FOUND else name, self.door, outcome, perf_counter() - started)
        return data

    async def _run(self, func: Callable, req: protocol.Request, method: Method, original: bytes | dict) -> bytes | None:
        task = asyncio.current_task()
        assert task is not None
        self.running.add(task)
        started = perf_counter()
        try:
            response = await self._run_timed(func, req, method)
            if self.log_calls:
                worker_log.access(req.method, "error" not in response, started, perf_counter())
        except asyncio.CancelledError:
            if not self.dying:
                raise
            task.uncancel()
            response = await self._after_death(req, method, original)
        finally:
            self.running.discard(task)
        if req.id is NO_ID:
            return None
        if type(response) is bytes:  # retried on another worker: the master's answer
            self.record(req.method, self.door, _answer_outcome(response), perf_counter() - started)
            return response
        self.record(req.method, self.door, _outcome(response), perf_counter() - started)
        return encode_response(response, self.debug)

    async def _run_timed(self, func: Callable, req: protocol.Request, method: Method) -> dict:
        timeout = method.timeout or self.call_timeout
        params = req.params
        try:
            if method.offload:
                return await self.dispatcher.run_offloaded(func, params, req.id, req.method)
            call = func(*params) if isinstance(params, list) else func(**params)
            if timeout is None:
                result = await call
            else:
                deadline = asyncio.timeout(timeout)
                try:
                    async with deadline:
                        result = await call
                except TimeoutError:
                    if not deadline.expired():
                        raise  # the method's own TimeoutError: an application error
                    return protocol.error_response(req.id, protocol.CALL_TIMEOUT)
        except Exception as exc:  # user code: any failure becomes an error response
            return self.dispatcher.error_of(exc, req.id, req.method)
        return {"jsonrpc": "2.0", "result": result, "id": req.id}

    async def _after_death(self, req: protocol.Request, method: Method, original: bytes | dict) -> bytes | dict:
        """The worker stops with this call unfinished: an idempotent call runs again on another worker
        (through the master); any other gets -32002."""
        if method.idempotent and req.id is not NO_ID:
            payload = original if isinstance(original, bytes) else protocol.dumps(original)
            return await self.link.forward(payload, req.id)
        return protocol.error_response(req.id, protocol.WORKER_DIED)

    # ------------------------------------------------------------------ batches
    def _batch(self, items: list) -> Any:
        answers = [self._one(item, None) if type(item) is dict else _INVALID_REQUEST for item in items]
        if all(a is None or type(a) is bytes for a in answers):
            return _join(answers)
        return self._gather(answers)

    async def _gather(self, answers: list[Any]) -> bytes | None:
        """The batch's calls that did not answer at once run concurrently; the answer keeps their order."""
        waiting = [i for i, a in enumerate(answers) if not (a is None or type(a) is bytes)]
        for i, answer in zip(waiting, await asyncio.gather(*(answers[i] for i in waiting))):
            answers[i] = answer
        return _join(answers)

    # ------------------------------------------------------------------ the stop deadline
    def answer_unfinished(self) -> None:
        """Cancel every call still running: each answers -32002, or is retried elsewhere if idempotent."""
        self.dying = True
        for task in list(self.running):
            task.cancel()


def _outcome(response: dict) -> str:
    """The metrics label of an answer: "ok", or its error code."""
    error = response.get("error")
    if error is None:
        return OK
    code = error.get("code") if isinstance(error, dict) else None
    return str(code) if isinstance(code, int) else "error"


def _answer_outcome(data: bytes) -> str:
    """The same for an answer as bytes (from the master): decoded only when it is an error."""
    if b'"error"' not in data:
        return OK
    try:
        return _outcome(protocol.loads(data))
    except (ValueError, AttributeError):
        return "error"


def _join(answers: list[bytes | None]) -> bytes | None:
    """A batch's answer: the non-empty answers as one array, nothing at all if every one was a notification."""
    parts = [a for a in answers if a is not None]
    return b"[" + b",".join(parts) + b"]" if parts else None


class WorkerDoor:
    """The door of one worker: serving the inherited sockets, the probes, and the drain on stop."""

    def __init__(self, spec: WorkerSpec, link: Link, dispatcher: Dispatcher, seen: MasterSeen,
                 embedded: bool) -> None:
        self.spec = spec
        self.link = link
        self.calls = DoorCalls(link, dispatcher, spec.debug, spec.call_timeout, spec.max_batch, spec.log_calls)
        self.ws_calls = DoorCalls(link, dispatcher, spec.debug, spec.call_timeout, spec.max_batch, spec.log_calls,
                                  door="ws")
        # /livez: the master answered a heartbeat lately (its loop runs); half the timeout after
        # which a worker gives its master up
        live_for = max(spec.heartbeat_timeout / 2, 2 * spec.heartbeat_interval)
        probes = Probes(livez=lambda: seen.within(live_for), readyz=lambda: link.instance_ready,
                        status=self._status if spec.http_status else None, metrics=self._metrics)
        self.relay = None
        if spec.dashboard:
            self.relay = dashboard_probes(probes, link)
        token = read_token(spec.http_token_file) if spec.http_token_file else None
        self.door = HttpDoor(self.calls.dispatch, probes=probes, max_message_size=spec.max_message_size, token=token,
                             cors_origin=spec.http_cors, ws_dispatch=self.ws_calls.dispatch)
        # --max-requests counts this door's calls too: when they reach it, the master hears at once
        self.door.recycle_at = spec.max_requests
        self.door.limit_reached = lambda: link.report_door(self.figures())
        self.embedded = embedded

    def figures(self) -> dict:
        """For the status document (sent with the heartbeats): calls and connections of this door."""
        door = self.door
        return {"inflight": door.in_flight, "served": door.served, "connections": door.open_connections}

    async def _metrics(self) -> bytes:
        """GET /metrics: the whole instance's Prometheus text, as the master has it (DESIGN.md 13)."""
        text, _content_type = await self.link.master_metrics()
        return text

    async def _status(self) -> bytes:
        return protocol.dumps(await self.link.request("clusterd.status", []))

    async def serve(self) -> None:
        for fd in self.spec.http_fds:
            # a thread worker shares the master's descriptors: it serves a copy the door may close
            sock = adopt(os.dup(fd) if self.embedded else fd)
            if sock.type != socket.SOCK_STREAM:
                continue
            await self.door.serve(sock)

    async def drain(self) -> None:
        """Stop accepting; end the dashboard's streams (the pages reconnect to another worker); let calls
        finish within most of the graceful timeout; answer the rest (-32002, or a retry elsewhere for
        idempotent calls); close every connection."""
        graceful = self.link.stop_within if self.link.stop_within is not None else self.spec.graceful_timeout
        retries = min(RETRY_LIMIT_S, graceful * RETRY_SHARE)
        if self.relay is not None:
            self.relay.close()
        if await self.door.drain(graceful * (1 - MARGIN_SHARE) - retries, cut_off=False):
            return
        self.link.fail_forwards(protocol.WORKER_DIED)
        self.calls.answer_unfinished()
        self.ws_calls.answer_unfinished()
        await self.door.drain(retries)


def dashboard_probes(probes: Probes, link: Link) -> DashboardRelay:
    """Serve --dashboard on this door: the page and its files from the package, its event stream
    relayed from the master (dashboard_relay.py)."""
    from ..ops import dashboard
    relay = DashboardRelay(link)
    page_headers = _header_lines(dashboard.PAGE_HEADERS)
    probes.dashboard = lambda: Page(200, b"text/html; charset=utf-8", dashboard.page(), page_headers)
    static_headers = _header_lines(dashboard.STATIC_HEADERS)

    def file_page(name: str) -> Callable[[], Page]:
        def serve() -> Page:
            body, content_type = dashboard.static_file(name)  # type: ignore[misc]
            return Page(200, content_type.encode(), body, static_headers)
        return serve
    probes.dashboard_files = {name: file_page(name) for name in dashboard.STATIC_FILES}
    takeover = Takeover(relay.open)
    probes.dashboard_events = lambda: takeover
    return relay


def _header_lines(headers: dict[str, str]) -> bytes:
    return b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers.items())


__all__ = ["DoorCalls", "WorkerDoor", "dashboard_probes"]
