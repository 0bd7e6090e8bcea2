"""JSON-RPC batches: one array of answers, sent once the last call of the batch is answered.

Items answered at once (invalid, unknown method) cost no task; worker calls wait on their future.
"""

from __future__ import annotations

import asyncio
from typing import Any

import zmq

from .. import protocol
from ..protocol import NO_ID
from .states import ClusterState
from .view import MasterView


class Batches:
    def __init__(self, router: MasterView) -> None:
        self.router = router

    def answer(self, items: list, sock: zmq.Socket, envelope: list[bytes], source: str) -> None:
        router = self.router
        if not items:
            router.telemetry.count("rejected", "malformed")
            return router.send(sock, envelope, protocol.encode_error(None, protocol.INVALID_REQUEST))
        if len(items) > router.config.max_batch:
            # (a message over --max-message-size never arrives: ZeroMQ drops it and the connection)
            router.telemetry.count("rejected", "too-large")
            return router.send(sock, envelope, protocol.encode_error(
                None, protocol.INVALID_REQUEST, f"Batch too large (at most {router.config.max_batch} requests)"))
        counts = router.client_calls[sock]
        ident = envelope[0]
        stalled = bool(router.backlogs.by_client) and router.stalled(sock, ident)  # may release kept answers
        held = counts.get(ident, 0)
        if stalled or held + len(items) > router.inflight_limit:
            router.refused_busy += len(items)
            return self._send(sock, envelope, [self._busy_item(item) for item in items])
        answers: list[bytes | None] = []
        waiting: list = []
        for item in items:
            answer = self._item(item, source)
            if answer is None or type(answer) is bytes:
                answers.append(answer)
            else:
                waiting.append(answer)
        if not waiting:
            return self._send(sock, envelope, answers)
        counts[ident] = held + len(items)
        router.spawn_task(self._finish(answers, waiting, sock, envelope, counts, ident, len(items)))

    async def _finish(self, answers: list, waiting: list, sock: zmq.Socket, envelope: list[bytes],
                      counts: dict[bytes, int], ident: bytes, n: int) -> None:
        try:
            answers += await asyncio.gather(*waiting)
        finally:
            self.router.release_calls(counts, ident, n)
        self._send(sock, envelope, answers)

    def _send(self, sock: zmq.Socket, envelope: list[bytes], answers: list[bytes | None]) -> None:
        parts = [a for a in answers if a is not None]
        if parts:  # a batch of notifications gets no answer at all
            self.router.send(sock, envelope, b"[" + b",".join(parts) + b"]")

    def _busy_item(self, item: Any) -> bytes | None:
        req = protocol.parse_request(item)
        if type(req) is dict:
            return protocol.dumps(req)
        return None if req.id is NO_ID else protocol.encode_error(req.id, protocol.TOO_BUSY,
                                                                  self.router.busy_message())

    def _item(self, item: Any, source: str) -> Any:
        """One item of a batch: its answer (bytes, or None for none), or an awaitable of it."""
        router = self.router
        req = protocol.parse_request(item)
        if type(req) is dict:
            return protocol.dumps(req)
        if req.method in router.local:
            return router.local.run(req, source)
        meta = router.worker_methods.get(req.method)
        if meta is None:
            return None if req.id is NO_ID else protocol.dumps(protocol.method_not_found(req.id, req.method))
        if router.state is ClusterState.STOPPING:
            return None if req.id is NO_ID else protocol.encode_error(req.id, protocol.SHUTTING_DOWN)
        try:
            payload = protocol.dumps(item if req.id is not NO_ID else {**item, "id": None})
        except TypeError:  # nested too deeply to encode again
            return None if req.id is NO_ID else protocol.encode_error(
                req.id, protocol.INVALID_REQUEST, "Request nested too deeply")
        fut = router.loop.create_future()
        call = router.new_call(payload, req.id, meta, future=fut)
        if req.id is NO_ID:
            call.rid = None  # the worker answers it as a call; the answer is not passed on
            router.dispatch(call)
            return None
        router.dispatch(call)
        return fut


__all__ = ["Batches"]
