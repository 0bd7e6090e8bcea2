"""WorkerLink: a worker's one link to the master, and the per-call path on the worker's side.

It reads the master's frames (calls, answers to the worker's own requests, forwarded HTTP calls'
answers, state, stop), runs each call on the worker's endpoint and queues its answer; the worker
process (process.py) makes one, serves on it and drains it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import zmq

from .. import protocol, wire, worker_log
from ..endpoint import Dispatcher, encode_response, start_task
from ..ops import log
from ..ops.method_stats import MethodStats
from ..ops.tracing import Tracing
from ..protocol import RemoteError
from ..streamlink import StreamConnection, StreamOutbox
from ..wire import ANSWER, CALL, ERROR, FORWARD, FORWARDED, NOTIFY, REQUEST, RESULT, STATE, STOP, TOKEN_SIZE
from ..zmqloop import Outbox, SocketReader

_BODY = 1 + TOKEN_SIZE  # where a call frame's request starts, after its kind and token


class WorkerLink:
    """The worker's side of its socket to the master: serves calls, sends its own requests."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: zmq.Socket | socket.socket, debug: bool,
                 log_calls: bool = False) -> None:
        self.loop = loop
        # the HTTP/WS door records each call it answers here: stats.record(method, door, outcome, seconds)
        self.stats = MethodStats()
        self.tracing: Tracing | None = None   # ops/tracing.py: None unless OpenTelemetry is installed and wanted
        self.slot: int | None = None
        self.sock = sock
        self.debug = debug
        self.log_calls = log_calls
        self.dispatcher: Dispatcher | None = None
        self._next_id = 0
        self._pending: dict[int, asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()
        self._forwards: dict[bytes, tuple[asyncio.Future, Any]] = {}  # token -> (answer, request id)
        self._next_forward = 0
        self.instance_ready = False  # what the master last said: /readyz (wire.STATE)
        self.state_known = asyncio.Event()  # the first STATE: the master counts this worker ready
        self.stop_within: float | None = None  # from the STOP frame: the time left before the master kills
        self.stop_requested = asyncio.Event()
        self._faults = log.RateLimited()
        self.stream: StreamConnection | None = None
        if isinstance(sock, zmq.Socket):  # a thread worker, or one on another host
            self.outbox: Outbox = Outbox(loop, sock)  # the items of a loop turn leave as one message
            self.reader: Any = SocketReader(loop, sock, self._on_message, self.outbox)
        else:  # a local worker process: its end of a socket pair (streamlink.py)
            self.stream = StreamConnection(loop, sock, self._on_message)
            self.outbox = StreamOutbox(loop, lambda _peer: self.stream)
            self.stream.holds = (self.outbox,)
            self.reader = self.stream

    def send_message(self, frames: list[bytes]) -> None:
        """A message of its own (hello, boot failure), after the items already gathered."""
        self.outbox.flush()
        if self.stream is not None:
            self.stream.send_message(frames)
        else:
            self.sock.send_multipart(frames)
            self.reader.wake()  # a send can swallow the socket's notice of a message (zmqloop.py)

    def close(self) -> None:
        """Stop reading; what is queued still leaves (bounded in time)."""
        if self.stream is not None:
            self.stream.close()
        else:
            self.reader.close()
            self.sock.close(linger=2000)

    # -- requests from this worker to the master
    def send_request(self, msg: dict) -> None:
        self.outbox.add(None, REQUEST + protocol.dumps(msg))

    async def request(self, method: str, params: list | dict) -> Any:
        """One future and one item; the answer resolves the future with the result or RemoteError."""
        self._next_id += 1
        rid = self._next_id
        fut = self.loop.create_future()
        self._pending[rid] = fut
        msg = protocol.make_request(method, params, rid)
        if self.tracing is not None:
            self.tracing.inject(msg)
        # the only call in flight has nothing to gather it with: it leaves at once
        send = self.outbox.add_alone if len(self._pending) == 1 else self.outbox.add
        send(None, REQUEST + protocol.dumps(msg))
        try:
            return await fut
        finally:
            self._pending.pop(rid, None)  # answered ones are gone already; this is for a cancelled call

    # -- an HTTP/WebSocket caller's request for the master (worker/http.py)
    def forward(self, payload: bytes, rid: Any) -> "asyncio.Future[bytes] | None":
        """Send the request to the master, routed as a --bind client's; a future of the answer bytes
        (None for a notification, which gets no answer)."""
        self._next_forward += 1
        token = wire.token_bytes(self._next_forward)
        self.outbox.add(None, FORWARD + token + payload)
        if rid is protocol.NO_ID:
            return None
        fut = self.loop.create_future()
        self._forwards[token] = (fut, rid)
        return fut

    def report_door(self, figures: dict) -> None:
        """The HTTP/WebSocket door's figures, now (its calls reached --max-requests: the master decides)."""
        self.outbox.add(None, wire.DOOR + protocol.dumps(figures))

    def fail_forwards(self, code: int) -> None:
        """Answer every forwarded call still waiting for the master with this error."""
        forwards, self._forwards = self._forwards, {}
        for fut, rid in forwards.values():
            if not fut.done():
                fut.set_result(protocol.encode_error(rid, code))
    async def master_metrics(self, accept: str = "") -> tuple[bytes, str]:
        """The whole instance's Prometheus text and its content type, from the master (for GET /metrics
        on the HTTP door: the master holds every process's counters; the workers-only internal
        method clusterd.metrics)."""
        answer = await self.request("clusterd.metrics", [accept])
        return answer["text"].encode(), answer["content_type"]

    # -- messages from the master
    def _on_message(self, frames: list[bytes]) -> None:
        """One or more items, each a frame that names its kind in its first byte (wire.py)."""
        for item in frames:
            kind = item[:1]
            if kind == CALL:
                self._serve_safely(item[1:_BODY], item[_BODY:])  # wire.split_token, inlined: per call
            elif kind == ANSWER:
                self._on_answer(item[1:])
            elif kind == NOTIFY:
                self._serve_safely(None, item[1:])
            elif kind == FORWARDED:  # the master's answer to a call this worker's HTTP door forwarded
                entry = self._forwards.pop(item[1:_BODY], None)
                if entry is not None and not entry[0].done():
                    entry[0].set_result(item[_BODY:])
            elif kind == STATE:
                self.instance_ready = item[1:] == b"1"
                self.state_known.set()
            elif kind == STOP:
                if len(item) > 1:  # the seconds the master gives this worker to stop
                    try:
                        self.stop_within = float(item[1:])
                    except ValueError:
                        pass
                self.stop_requested.set()

    def _on_answer(self, payload: bytes) -> None:
        try:
            msg = protocol.loads(payload)
        except ValueError:
            return
        fut = self._pending.pop(msg.get("id"), None) if type(msg) is dict else None
        if fut is None or fut.done():
            return
        if msg.get("error") is None:
            fut.set_result(msg.get("result"))
        else:
            try:
                protocol.response_outcome(msg)
            except RemoteError as exc:
                fut.set_exception(exc)

    def _serve_safely(self, token: bytes | None, payload: bytes) -> None:
        try:
            self._serve(token, payload)
        except Exception:  # a fault of ours, not of user code (that is answered -32000): still answered
            self._fault(token, None)

    def _fault(self, token: bytes | None, rid: Any) -> None:
        self._faults.exception("serving a call failed")
        self._answer(token, protocol.error_response(rid, protocol.INTERNAL_ERROR))

    def _serve(self, token: bytes | None, payload: bytes) -> None:
        try:
            obj = protocol.loads(payload)
        except ValueError as exc:
            return self._answer(token, protocol.parse_error(exc))
        req = protocol.parse_request(obj)
        if isinstance(req, dict):
            return self._answer(token, req)
        if self.dispatcher is None:
            return self._answer(token, protocol.error_response(req.id, protocol.NO_WORKER))
        prepared = self.dispatcher.prepare(req)
        if isinstance(prepared, dict):
            return self._answer(token, prepared)
        func, method = prepared
        if self.tracing is not None:
            return self._serve_traced(token, func, method.is_async or method.offload, method.name, req, obj,
                                      method.offload)
        if method.is_async or method.offload:
            task = start_task(self.loop, self._serve_async(token, func, req, method.name, offload=method.offload))
            if not task.done():
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        elif self.log_calls:
            started = time.perf_counter()
            response = self.dispatcher.run_sync(func, req.params, req.id, method.name)
            worker_log.access(method.name, "error" not in response, started, time.perf_counter())
            self._answer(token, response)
        else:
            self._answer(token, self.dispatcher.run_sync(func, req.params, req.id, method.name))

    async def _serve_async(self, token: bytes | None, func, req: protocol.Request, name: str,
                           span: Any = None, offload: bool = False) -> None:
        run = self.dispatcher.run_offloaded if offload else self.dispatcher.run_async
        response = None
        try:
            started = time.perf_counter() if self.log_calls else 0.0
            response = await run(func, req.params, req.id, name)
            if self.log_calls:
                worker_log.access(name, "error" not in response, started, time.perf_counter())
            self._answer(token, response)
        except Exception:
            self._fault(token, req.id)
        finally:
            if span is not None:
                self.tracing.end(span, _error_code(response))

    def _serve_traced(self, token: bytes | None, func, is_async: bool, name: str, req: protocol.Request,
                      obj: dict, offload: bool = False) -> None:
        """_serve's end with a span around the call, its context current for the calls the method makes."""
        tracing = self.tracing
        span = tracing.start(req.method, obj, slot=self.slot)
        with tracing.use(span):
            if is_async:
                # the task copies the context, so the span stays current in it
                task = self.loop.create_task(self._serve_async(token, func, req, name, span, offload))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return
            response = self.dispatcher.run_sync(func, req.params, req.id, name)
        tracing.end(span, _error_code(response))
        self._answer(token, response)

    def _answer(self, token: bytes | None, response: dict) -> None:
        if token is None:
            return  # a notification gets no answer
        head = (ERROR if "error" in response else RESULT) + token  # wire.answer_frame, inlined: per call
        self.outbox.add(None, head + encode_response(response, self.debug))

    async def drain(self) -> None:
        """Wait for the calls this worker is running to finish."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _error_code(response: dict | None) -> int | None:
    error = response.get("error") if isinstance(response, dict) else -32603
    return None if error is None else error.get("code") if isinstance(error, dict) else -32603


__all__ = ["WorkerLink"]
