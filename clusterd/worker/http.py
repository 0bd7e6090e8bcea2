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
from collections.abc import Callable
from time import perf_counter
from typing import Any, Protocol

from .. import protocol, worker_log
from ..endpoint import Dispatcher, Method, encode_response
from ..httpdoor import HttpDoor, Page, Probes, Takeover, adopt
from ..httpdoor.tokens import read_token
from ..ops.method_stats import OK, UNKNOWN, MethodStats
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
_ID_TYPES = frozenset((str, int, float, type(None)))  # a request's id, as JSON decoding gives it (not bool)
_NO_PARAMS: list = []  # only ever unpacked into a call
_NOT_FOUND = str(protocol.METHOD_NOT_FOUND)
# The graceful timeout is cut in three: calls finish; then the rest are answered -32002 or retried
# on another worker (idempotent) within RETRY_SHARE of it (at most RETRY_LIMIT_S); MARGIN_SHARE is
# left for stop_services and the exit before the master's deadline.
RETRY_SHARE = 0.4
RETRY_LIMIT_S = 5.0
MARGIN_SHARE = 0.1


class DoorCalls:
    """``dispatch(payload)`` for HttpDoor: the answer bytes, None (notifications), or an awaitable."""

    def __init__(self, link: Link, dispatcher: Dispatcher, debug: bool, call_timeout: float | None,
                 max_batch: int = 1000, log_calls: bool = False, door: str = "http") -> None:
        self.link = link
        self.door = door            # the metrics label of the calls: "http" or "ws"
        self.record = link.stats.record  # MethodStats: the heartbeats carry it to the master's metrics
        self.dispatcher = dispatcher
        self.methods: dict[str, Method] = dispatcher.methods
        # --log-calls times every call on the general path; the short one is for the unlogged case
        self.plain_methods = {} if log_calls else {name: m for name, m in self.methods.items()
                                                   if not (m.is_async or m.offload)}
        self.log_calls = log_calls
        self.bound: dict[str, Callable] = dispatcher._bound
        self.debug = debug
        self.call_timeout = call_timeout
        self.max_batch = max_batch
        self.running: set[asyncio.Task] = set()   # tasks of async calls, to answer at the stop deadline
        self.dying = False

    def __call__(self, payload: bytes) -> Any:
        try:
            obj = protocol.loads(payload)
        except ValueError as exc:
            return protocol.dumps(protocol.parse_error(exc))
        if type(obj) is dict:
            # The common case, checked as parse_request and Dispatcher.prepare would, without their
            # objects: a call (with an id) of this worker's plain `def`. Anything else takes _one.
            name = obj.get("method")
            method = self.plain_methods.get(name) if type(name) is str else None
            if method is not None and obj.get("jsonrpc") == "2.0":
                params = obj.get("params", _NO_PARAMS)
                rid = obj.get("id", NO_ID)
                if ((type(params) is list or type(params) is dict) and type(rid) in _ID_TYPES
                        and method.arity.check(params) is None):
                    started = perf_counter()
                    response = self.dispatcher.run_sync(self.bound[name], params, rid, name)
                    self.record(name, self.door, _outcome(response), perf_counter() - started)
                    return encode_response(response, self.debug)
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
        self.door = HttpDoor(self.calls, probes=probes, max_message_size=spec.max_message_size, token=token,
                             cors_origin=spec.http_cors, ws_dispatch=self.ws_calls)
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
