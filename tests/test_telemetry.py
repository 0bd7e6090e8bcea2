"""The master's handle on metrics: what the router, the heartbeat handler and the status document use."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clusterd.ops.method_stats import OK, UNKNOWN, DeltaTracker, MethodStats
from clusterd.ops.telemetry import Telemetry, error_outcome


async def http_get(host: str, port: int, path: str) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


@pytest.mark.parametrize("response,outcome", [
    (b'{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"x"}}', "-32000"),
    (b'{"jsonrpc":"2.0","id":1,"error":{"code":"nope"}}', "error"),
    (b"not json", "error"),
    (b"[1]", "error"),
])
def test_error_outcome(response, outcome):
    assert error_outcome(response) == outcome


def test_master_side_end_to_end_on_a_real_port():
    async def main():
        telemetry: Telemetry

        def status() -> dict:
            master = {"pid": 1, "version": "3.1", "started_at": 1.0, "rss_bytes": 10}
            master.update(telemetry.master_fields())
            return {"name": "t", "state": "running", "generation": 1, "queued": 0, "master": master,
                    "workers": [], "methods": telemetry.methods(), "counters": telemetry.counters_document()}

        telemetry = Telemetry(status, "0.1.0", metrics_bind="127.0.0.1:0", dashboard=True)
        await telemetry.start()
        try:
            assert any(h is telemetry.events for h in logging.getLogger("clusterd").handlers)
            telemetry.record("fib", "zmq", OK, 0.001)
            telemetry.record_error("nosuch", "zmq", b'{"jsonrpc":"2.0","id":1,"error":{"code":-32601}}', 0.0001)
            telemetry.record_code("fib", "zmq", -32001, 5.0)
            telemetry.count("refused", -32001)
            telemetry.count("restarts", "crashed")
            telemetry.count("restarts", "crashed")
            worker = MethodStats()
            worker.record("fib", "http", OK, 0.002)
            telemetry.merge(orjson.loads(orjson.dumps(DeltaTracker(worker).delta())))
            telemetry.merge({"v": 1, "c": "garbage"})

            doc = status()
            assert doc["methods"]["fib"] == {"calls": 3, "errors": 1, "p50_ms": pytest.approx(2.0, rel=0.34),
                                             "p99_ms": pytest.approx(5000, rel=0.34)}
            assert doc["methods"][UNKNOWN]["errors"] == 1 and "nosuch" not in doc["methods"]
            assert doc["master"]["open_fds"] > 0 and doc["master"]["loop_lag_s"] >= 0

            host, port = telemetry.address
            head, body = await http_get(host, port, "/metrics")
            assert head.startswith(b"HTTP/1.1 200")
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for f in text_string_to_metric_families(body.decode()) for s in f.samples}
            assert samples[("clusterd_calls_total", (("door", "http"), ("method", "fib"), ("outcome", "ok")))] == 1
            assert samples[("clusterd_calls_total", (("door", "zmq"), ("method", "fib"), ("outcome", "-32001")))] == 1
            assert samples[("clusterd_calls_refused_total", (("code", "-32001"),))] == 1
            assert samples[("clusterd_worker_restarts_total", (("reason", "crashed"),))] == 2
            assert samples[("clusterd_build_info", (("app_version", "3.1"), ("version", "0.1.0")))] == 1
            head, body = await http_get(host, port, "/dashboard")
            assert head.startswith(b"HTTP/1.1 200") and b"<html" in body
        finally:
            await telemetry.close()
        assert not any(h is telemetry.events for h in logging.getLogger("clusterd").handlers)
        with pytest.raises(OSError):
            await asyncio.open_connection(host, port)

    asyncio.run(main())


def test_bad_metrics_bind_is_a_value_error():
    with pytest.raises(ValueError, match="HOST:PORT"):
        Telemetry(dict, "0.1.0", metrics_bind="nope")


def test_a_taken_port_is_an_os_error():
    async def main():
        blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = blocker.sockets[0].getsockname()[1]
        telemetry = Telemetry(dict, "0.1.0", metrics_bind=f"127.0.0.1:{port}")
        try:
            with pytest.raises(OSError):
                await telemetry.start()
        finally:
            await telemetry.close()
            blocker.close()

    asyncio.run(main())
