"""The local worker link (clusterd/streamlink.py): messages cross a socket pair whole, whatever the
reads cut them into; a handler's failure does not stop the reading; a gone peer is reported."""

from __future__ import annotations

import asyncio
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterd.streamlink import StreamConnection, StreamOutbox, encode

frames = st.lists(st.binary(max_size=300), min_size=1, max_size=5)
messages = st.lists(frames, min_size=1, max_size=8)


def _connection(handler, prefix=None):
    loop = asyncio.new_event_loop()
    ours, theirs = socket.socketpair()
    return loop, StreamConnection(loop, ours, handler, prefix=prefix), theirs


@settings(max_examples=200, deadline=None)
@given(messages, st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=40))
def test_messages_are_rebuilt_whole_from_any_cut(sent, cuts):
    got: list[list[bytes]] = []
    loop, conn, theirs = _connection(got.append, prefix=b"id")
    try:
        data = b"".join(encode(m) for m in sent)
        pos = 0
        for cut in cuts * (len(data) // max(sum(cuts), 1) + 1):
            if pos >= len(data):
                break
            conn._received(data[pos:pos + cut])
            pos += cut
        if pos < len(data):
            conn._received(data[pos:])
        assert got == [[b"id", *m] for m in sent]
    finally:
        conn.close(linger=False)
        theirs.close()
        loop.close()


def test_a_failing_handler_does_not_stop_the_next_messages():
    got = []

    def handler(message):
        if message == [b"boom"]:
            raise RuntimeError("handler bug")
        got.append(message)

    loop, conn, theirs = _connection(handler)
    try:
        conn._received(encode([b"boom"]) + encode([b"a", b"b"]))
        assert got == [[b"a", b"b"]]
    finally:
        conn.close(linger=False)
        theirs.close()
        loop.close()


def test_big_messages_cross_a_real_socket_pair_both_ways():
    """Bigger than the socket's buffer: the sender keeps what the kernel refuses and writes it when
    it can; the reader joins the pieces once."""
    big = [bytes(range(256)) * 8000, b"x" * 3_000_000]  # ~5 MB

    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        got_a, got_b = [], []
        done = asyncio.Event()

        def on_b(message):
            got_b.append(message)
            conn_b.send_message(list(reversed(message)))

        def on_a(message):
            got_a.append(message)
            done.set()

        conn_a = StreamConnection(loop, a, on_a)
        conn_b = StreamConnection(loop, b, on_b)
        assert conn_a.send_message(big)
        await asyncio.wait_for(done.wait(), 30)
        assert got_b == [big] and got_a == [list(reversed(big))]
        conn_a.close()
        conn_b.close()

    asyncio.run(main())


def test_a_gone_peer_is_reported_and_its_messages_fail():
    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        closed = asyncio.Event()
        failed = []
        conn = StreamConnection(loop, a, lambda m: None, on_closed=lambda c: closed.set())
        outbox = StreamOutbox(loop, lambda peer: None if conn.closed else conn,
                              lambda peer, items: failed.append(items))
        b.close()
        await asyncio.wait_for(closed.wait(), 5)  # EOF seen
        outbox.add(b"w1", b"item")
        outbox.flush()
        assert failed == [[b"item"]]
        assert conn.send(b"more") is False

    asyncio.run(main())


@pytest.mark.parametrize("n", [1, 3])
def test_the_outbox_sends_one_message_per_peer(n):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        got = []
        got_all = asyncio.Event()

        def on_b(message):
            got.append(message)
            got_all.set()

        conn_a = StreamConnection(loop, a, lambda m: None)
        conn_b = StreamConnection(loop, b, on_b)
        outbox = StreamOutbox(loop, lambda peer: conn_a)
        outbox.hold()
        for i in range(n):
            outbox.add(None, b"item%d" % i)
        outbox.release()
        await asyncio.wait_for(got_all.wait(), 5)
        assert got == [[b"item%d" % i for i in range(n)]]
        conn_a.close()
        conn_b.close()

    asyncio.run(main())


def test_a_long_drain_sends_its_first_frames_before_it_ends():
    """Pipelining: once PIPELINE_FRAMES wait for a peer they leave, so the peer (another process) works on
    them while the drain goes on; every frame still arrives, in order, and after_send runs for each send."""
    from clusterd import zmqloop

    class Recording(zmqloop.Outbox):
        def send_message(self, peer, frames):
            sent.append((peer, list(frames), self.holding))
            return True

    async def main():
        outbox = Recording(asyncio.get_running_loop(), None)
        rearms = []
        outbox.after_send = lambda: rearms.append(1)
        count = 2 * zmqloop.PIPELINE_FRAMES + 3
        outbox.hold()
        for i in range(count):
            outbox.add(b"w1", b"%d" % i)
        assert [len(frames) for _, frames, holding in sent] == [zmqloop.PIPELINE_FRAMES] * 2
        assert all(holding for _, _, holding in sent)  # left while the drain was still running
        outbox.release()
        assert [len(frames) for _, frames, _ in sent] == [zmqloop.PIPELINE_FRAMES] * 2 + [3]
        assert [f for _, frames, _ in sent for f in frames] == [b"%d" % i for i in range(count)]
        assert len(rearms) == 3  # a ZeroMQ socket's reader is re-armed after every send

    sent: list = []
    asyncio.run(main())
