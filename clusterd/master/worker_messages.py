"""What the workers socket brings the master: answers, workers' own calls, beats, hellos, agents.

``WorkerMessages`` is a part of the Router (a base class, so every handler is still one method call
on the router, as before): it turns each message read on a workers socket into the router's and the
supervisor's actions. The answer path (``_on_answer``) is the hot one: no future, task or timer per
forwarded call.
"""

from __future__ import annotations

import logging
from time import perf_counter
from typing import TYPE_CHECKING, Any

import zmq

from .. import protocol, wire
from ..ops import log
from ..ops.telemetry import OK, error_outcome
from ..protocol import NO_ID
from ..wire import ERROR, REQUEST, RESULT
from .states import ExitReason, WorkerState

if TYPE_CHECKING:
    from ..ops.telemetry import Telemetry
    from ..ops.tracing import Tracing
    from .supervisor import Supervisor

_BODY = 1 + wire.TOKEN_SIZE  # where an answer frame's response starts, after its kind and token
_READY = WorkerState.READY


class WorkerMessages:
    """The Router's handling of the workers sockets' messages (see Router for the attributes)."""

    supervisor: Supervisor
    telemetry: Telemetry
    tracing: Tracing | None
    client_calls: dict[zmq.Socket, dict[bytes, int]]
    rsock: zmq.Socket | None
    agents: Any
    record: Any
    _faults: log.RateLimited

    def _on_worker_message(self, frames: list[bytes], sock: zmq.Socket) -> None:
        """[ident, item, item, ...], each item a frame naming its kind in its first byte (answers,
        requests); or [ident, kind, json] (beats, hello, boot failure, agent messages)."""
        ident = frames[0]
        if len(frames) == 3 and len(frames[1]) == 1:
            return self._on_worker_notice(ident, frames[1], frames[2], sock)
        for i in range(1, len(frames)):
            item = frames[i]
            kind = item[:1]
            if kind == RESULT or kind == ERROR:
                self._on_answer(ident, item, kind)
            elif kind == REQUEST:
                if ident not in self.supervisor.by_ident:
                    return  # a worker of another master: it gets nothing from us
                self._on_worker_request(ident, item[1:], sock)
            elif kind == wire.FORWARD:
                if ident not in self.supervisor.by_ident:
                    return
                # an HTTP/WebSocket caller's request a worker does not serve itself: routed exactly as one
                # from a --bind client; the answer goes back to that worker as FORWARDED + the same token
                self.on_client_message([ident, wire.FORWARDED + item[1:_BODY], item[_BODY:]], sock, "http")
            elif kind == wire.DOOR:
                worker = self.supervisor.by_ident.get(ident)
                if worker is not None:
                    self.supervisor.on_door_figures(worker, _loads_dict(item[1:]))

    def _on_worker_notice(self, ident: bytes, kind: bytes, body: bytes, sock: zmq.Socket) -> None:
        """[ident, kind, json]: a beat, a hello, a boot failure, an agent's message."""
        if kind == wire.BEAT:
            worker_ident = ident[len(wire.HEARTBEAT_PREFIX):]
            if worker_ident in self.supervisor.by_ident:  # a worker of a master that died gets no answer: it exits
                self.to_worker([ident, wire.BEAT], sock)
            beat = _loads_dict(body)
            self.supervisor.on_beat(worker_ident, beat)
            stats = beat.get("stats")
            if stats is not None:
                self.telemetry.merge(stats)
        elif ident not in self.supervisor.by_ident and kind != wire.AGENT:
            if kind == wire.HELLO:
                log.event("foreign-worker", f"a worker this master did not start ({ident!r}) joined its workers "
                          "socket: ignored (does another instance share this runtime directory?)",
                          level=logging.WARNING)
            return  # a worker of another master: it gets nothing from us, and exits for lack of beats
        elif kind == wire.REQUEST:
            self._on_worker_request(ident, body, sock)
        elif kind == wire.HELLO:
            self.supervisor.by_ident[ident].sock = sock  # the socket its calls go out on
            self.supervisor.on_hello(ident, _loads_dict(body))
        elif kind == wire.FAILURE:
            self.supervisor.on_boot_failure(ident, _loads_dict(body))
        elif kind == wire.AGENT and sock is self.rsock:
            self.agents.on_message(ident, _loads_dict(body))

    def _on_answer(self, ident: bytes, head: bytes, kind: bytes) -> None:
        worker = self.supervisor.by_ident.get(ident)
        if worker is None:
            return
        call = worker.calls.pop(head[1:_BODY], None)
        if call is None:
            return  # timed out or the caller is gone: dropped
        worker.served += 1
        if kind == ERROR:
            worker.failed += 1
        if call.door is not None:
            if kind == RESULT:
                self.record(call.method, call.door, OK, perf_counter() - call.started)
            else:
                self.telemetry.record_error(call.method, call.door, head[_BODY:], perf_counter() - call.started)
        if self.tracing is not None:
            self.tracing.close(call, None if kind == RESULT else _code(head[_BODY:]))
        if call.future is None:
            counts = self.client_calls.get(call.sock)
            if self.send(call.sock, call.envelope, head[_BODY:], counts is not None) and counts is not None:
                self.release_calls(counts, call.envelope[0])
        elif not call.future.done():
            call.future.set_result(head[_BODY:])
        if worker.state is not _READY:
            if not worker.calls:
                if worker.retire_reason is ExitReason.HUNG and worker.state is WorkerState.DRAINING:
                    self.supervisor.kill(worker, ExitReason.HUNG)
                else:
                    self.supervisor.on_idle(worker)
        elif worker.max_requests and worker.past_max_requests():
            self.supervisor.recycle(worker, ExitReason.MAX_REQUESTS)

    def _on_worker_request(self, ident: bytes, payload: bytes, sock: zmq.Socket) -> None:
        envelope = [ident]  # send() answers it as one ANSWER item in the worker's outbox
        try:
            obj = protocol.loads(payload)
        except ValueError as exc:
            return self.send(sock, envelope, protocol.dumps(protocol.parse_error(exc)))
        req = protocol.parse_request(obj)
        if type(req) is dict:
            return self.send(sock, envelope, protocol.dumps(req))
        try:
            if not self._run_inline(req, sock, envelope, "worker"):
                self.route(req, payload, sock, envelope, "worker")
        except Exception:
            self._faults.exception("handling a worker's request failed")
            if req.id is not NO_ID:
                self.send(sock, envelope, protocol.encode_error(req.id, protocol.INTERNAL_ERROR))


def _code(response: bytes) -> int:
    outcome = error_outcome(response)
    return int(outcome) if outcome.lstrip("-").isdigit() else protocol.INTERNAL_ERROR


def _loads_dict(payload: bytes) -> dict:
    try:
        obj = protocol.loads(payload)
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}
