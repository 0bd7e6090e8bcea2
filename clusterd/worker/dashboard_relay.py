"""The dashboard's event stream on the HTTP port (--http-bind --dashboard): relayed from the master.

The page's data (history, events, workers) lives in the master's DashboardFeed. A worker serving
the page relays it with one long poll at a time over its link (the internal method
clusterd.dashboard_after), shared by every stream open on this worker: the master answers as soon
as it has messages after the relay's sequence, or empty after a keepalive time, which the relay
passes on as an SSE comment (so streams whose client left are found). The poll runs only while a
stream is open and never on a timer.

A new stream gets its own `hello` (history and the current status) from the master, then the
messages after it: those the relay got meanwhile come from a short ring here, later ones as the
relay gets them. Each stream keeps the sequence it has, so none gets a message twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Protocol

from ..httpdoor import EventStream

log = logging.getLogger("clusterd")

METHOD = "clusterd.dashboard_after"
KEEPALIVE = b": keepalive\n\n"
RECENT = 64  # messages kept for streams whose hello was older than the relay's position


class Requester(Protocol):
    async def request(self, method: str, params: list | dict) -> Any: ...


class DashboardRelay:
    """The open dashboard streams of this worker and the one long poll that feeds them."""

    def __init__(self, link: Requester) -> None:
        self.link = link
        self.streams: dict[EventStream, int] = {}   # stream -> the last sequence it has
        self.seq: int | None = None                  # the relay's position in the master's feed
        self.recent: deque[tuple[int, bytes]] = deque(maxlen=RECENT)
        self._poll: asyncio.Task | None = None
        self._greetings: set[asyncio.Task] = set()

    def open(self, stream: EventStream) -> None:
        """A stream whose head went out: greet it with a hello, then relay to it."""
        stream.on_close = self._closed
        task = asyncio.get_running_loop().create_task(self._greet(stream))
        self._greetings.add(task)
        task.add_done_callback(self._greetings.discard)

    def close(self) -> None:
        """End every stream (the worker stops); the poll ends with the last one."""
        for task in list(self._greetings):
            task.cancel()
        for stream in list(self.streams):
            stream.close()
        self._stop_polling()

    async def _greet(self, stream: EventStream) -> None:
        try:
            answer = await self.link.request(METHOD, [None])
        except Exception as exc:  # the master stopped, or has no dashboard: this stream cannot be fed
            log.debug("dashboard hello failed: %r", exc)
            stream.close()
            return
        if stream.closed:
            return
        if answer.get("closed"):
            stream.close()
            return
        seq = answer["seq"]
        stream.write(answer["hello"].encode())
        for n, data in self.recent:   # what the relay got after this hello was taken
            if n > seq:
                stream.write(data)
                seq = n
        self.streams[stream] = seq
        if self._poll is None:
            self.seq = seq
            self._poll = asyncio.get_running_loop().create_task(self._relay())

    async def _relay(self) -> None:
        try:
            while self.streams:
                answer = await self.link.request(METHOD, [self.seq])
                if answer.get("closed"):
                    break
                self._deliver(answer)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the link failed: the pages reconnect (EventSource retry)
            log.debug("dashboard relay stopped: %r", exc)
        finally:
            if self._poll is asyncio.current_task():
                self._poll = None
        for stream in list(self.streams):
            stream.close()

    def _deliver(self, answer: dict) -> None:
        self.seq = answer["seq"]
        hello = answer.get("hello")
        if hello is not None:   # the relay fell behind the master's ring: every page starts over
            data = hello.encode()
            self.recent.clear()
            for stream in list(self.streams):
                self.streams[stream] = self.seq
                stream.write(data)
            return
        messages = [(n, text.encode()) for n, text in answer.get("messages") or ()]
        if not messages:
            for stream in list(self.streams):
                stream.write(KEEPALIVE)
            return
        self.recent.extend(messages)
        for stream, has in list(self.streams.items()):
            new = [data for n, data in messages if n > has]
            if new:
                self.streams[stream] = messages[-1][0]
                stream.write(b"".join(new))

    def _closed(self, stream: EventStream) -> None:
        self.streams.pop(stream, None)
        if not self.streams:
            self._stop_polling()

    def _stop_polling(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None
        self.seq = None
        self.recent.clear()


__all__ = ["DashboardRelay"]
