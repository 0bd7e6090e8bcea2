"""The Python clients: `clusterd.Client` (blocking) and `clusterd.AsyncClient`, by instance name or
address, raising RemoteError with the code, message and data of the answer."""

from __future__ import annotations

import asyncio
import time

import pytest

import clusterd
from clusterd import AsyncClient, Client, RemoteError, RPCError
from tests.conftest import free_port, running_instance


@pytest.fixture(scope="module")
def port():
    return free_port()


@pytest.fixture(scope="module")
def inst(port):
    with running_instance("--workers", "2", "--bind", f"tcp://127.0.0.1:{port}", name="cli3nt") as inst:
        inst.wait_ready(2)
        yield inst


@pytest.fixture
def in_runtime(inst, monkeypatch):
    """This process looks for instances where the test instance runs."""
    monkeypatch.setenv("CLUSTERD_RUNTIME_DIR", str(inst.runtime_dir))
    return inst


def test_public_api_names():
    for name in ("MasterEndpoint", "WorkerEndpoint", "rpc", "RPCError", "RemoteError", "Client", "AsyncClient"):
        assert hasattr(clusterd, name), name
    assert issubclass(RemoteError, RPCError)


def test_client_by_name(in_runtime):
    with Client("cli3nt") as c:
        assert c.call("subtract", 42, 23) == 19
        assert c.call("subtract", subtrahend=23, minuend=42) == 19
        assert c.call("config") == {"greeting": "hello"}


def test_client_finds_the_only_instance_without_a_name(in_runtime):
    with Client() as c:
        assert c.call("add", 1, 2) == 3


def test_client_by_address(inst, port):
    with Client(address=f"tcp://127.0.0.1:{port}") as c:
        assert c.call("master_add", 1, 2) == 3
        assert c.call("add", 1, 2) == 3
        with pytest.raises(RemoteError) as info:
            c.call("clusterd.status")
        assert info.value.code == -32601


def test_client_raises_remote_error_with_code_message_data(inst):
    with Client(address=inst.control) as c:
        with pytest.raises(RemoteError) as info:
            c.call("fail_rpc")
        assert (info.value.code, info.value.message, info.value.data) == (1234, "custom failure", {"why": "because"})
        with pytest.raises(RemoteError) as info:
            c.call("fail", "boom")
        assert info.value.code == -32000 and info.value.data == {"type": "ValueError", "message": "boom"}
        with pytest.raises(RemoteError) as info:
            c.call("subtract", 1)
        assert info.value.code == -32602
        with pytest.raises(RemoteError) as info:
            c.call("nope")
        assert info.value.code == -32601
        assert c.call("add", 2, 2) == 4  # the client is still usable after errors


def test_client_refuses_positional_and_named_together(inst):
    with Client(address=inst.control) as c, pytest.raises(TypeError):
        c.call("subtract", 1, subtrahend=2)


def test_client_notify_gets_no_answer_and_does_not_confuse_later_calls(inst):
    with Client(address=inst.control) as c:
        for _ in range(5):
            c.notify("add", 1, 2)
            c.notify("nope")
        assert c.call("add", 3, 4) == 7


def test_client_timeout(inst):
    with Client(address=inst.control, timeout=0.2) as c:
        with pytest.raises(TimeoutError):
            c.call("sleep", 2)
    with Client(address=inst.control, timeout=5) as c:
        c.call("sleep", 0.1)
        # a late answer to an earlier call is never taken for a later one
        with pytest.raises(TimeoutError):
            c.call("sleep", 0.3, timeout=0.05)
        assert c.call("add", 5, 5) == 10
        assert c.call("echo", "x") == "x"


def test_client_without_instance_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERD_RUNTIME_DIR", str(tmp_path))
    with pytest.raises(Exception) as info:
        Client("ghost")
    assert "ghost" in str(info.value)


def test_async_client_many_concurrent_calls(inst, port):
    async def main():
        async with AsyncClient(address=f"tcp://127.0.0.1:{port}") as c:
            start = time.monotonic()
            results = await asyncio.gather(*(c.call("add", i, i) for i in range(300)))
            assert results == [2 * i for i in range(300)]
            # concurrent slow calls overlap: 20 x 0.3 s on 2 workers take far less than 6 s
            start = time.monotonic()
            pids = await asyncio.gather(*(c.call("sleep", 0.3) for _ in range(20)))
            assert time.monotonic() - start < 2.5
            assert len(set(pids)) == 2
            with pytest.raises(RemoteError) as info:
                await c.call("fail_rpc")
            assert (info.value.code, info.value.data) == (1234, {"why": "because"})
            named = await c.call("subtract", minuend=10, subtrahend=4)
            assert named == 6
    asyncio.run(main())


def test_async_client_by_name_with_errors_mixed_in(in_runtime):
    async def main():
        async with AsyncClient("cli3nt") as c:
            calls = [c.call("add", i, 1) if i % 3 else c.call("fail", str(i)) for i in range(60)]
            results = await asyncio.gather(*calls, return_exceptions=True)
            for i, r in enumerate(results):
                if i % 3:
                    assert r == i + 1
                else:
                    assert isinstance(r, RemoteError) and r.data["message"] == str(i)
    asyncio.run(main())


def test_async_client_timeout(inst):
    async def main():
        async with AsyncClient(address=inst.control, timeout=0.2) as c:
            with pytest.raises((TimeoutError, asyncio.TimeoutError)):
                await c.call("sleep", 2)
            assert await c.call("add", 1, 1) == 2
    asyncio.run(main())


def test_async_client_close_fails_waiting_calls(inst):
    async def main():
        c = AsyncClient(address=inst.control)
        pending = asyncio.ensure_future(c.call("sleep", 2))
        assert await c.call("add", 1, 1) == 2  # the slow call is on its way
        await c.close()
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(pending, 1)
    asyncio.run(main())
