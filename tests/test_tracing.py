"""OpenTelemetry (the optional extra clusterd[otel]): each call a span, one trace across the master and
its workers, the W3C trace context taken from the request and carried on. Skipped when the SDK is not
installed; without it (or without a provider or OTEL_* variables) tracing is off."""

from __future__ import annotations

import pytest

from clusterd.ops import tracing

pytest.importorskip("opentelemetry.sdk", reason="opentelemetry-sdk is not installed (pip install clusterd[otel])")
pytestmark = pytest.mark.timeout(90)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


def test_a_call_is_one_trace_across_master_and_worker(cluster):
    inst = cluster("tests.apps.traced:Master", "tests.apps.traced:Worker", "--workers", "1", "--isolation", "thread")
    c = inst.client()
    answer = c.request({"jsonrpc": "2.0", "method": "relay", "params": [41], "id": 1,
                        "traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"})
    assert answer["result"] == 42
    assert c.call("fail")["error"]["code"] == -32000
    spans = c.result("spans")
    ours = [s for s in spans if s["trace_id"] == TRACE_ID]
    by_name = {s["name"]: s for s in ours}
    assert set(by_name) == {"relay", "work", "master_add"}, spans
    # client -> master (relay) -> worker (work) -> master (master_add): each the child of the one before
    assert by_name["relay"]["parent_id"] == CLIENT_SPAN
    assert by_name["work"]["parent_id"] == by_name["relay"]["span_id"]
    assert by_name["master_add"]["parent_id"] == by_name["work"]["span_id"]
    for s in ours:
        assert s["kind"] == "SERVER" and s["attributes"]["rpc.system"] == "jsonrpc"
        assert s["attributes"]["rpc.method"] == s["name"]
    assert by_name["work"]["attributes"]["clusterd.slot"] == 0
    assert by_name["relay"]["attributes"]["clusterd.door"] == "zmq"
    failed = [s for s in spans if s["name"] == "fail"]
    # the master's span of the forwarded call and the worker's span of its run, both errors, one trace
    assert len(failed) == 2 and {s["status"] for s in failed} == {"ERROR"}
    assert failed[0]["trace_id"] == failed[1]["trace_id"]
    assert all(s["attributes"]["rpc.jsonrpc.error_code"] == -32000 for s in failed)


def test_tracing_is_off_without_a_provider_or_otel_variables(monkeypatch):
    from opentelemetry import trace
    if type(trace.get_tracer_provider()).__module__.startswith("opentelemetry.sdk"):
        pytest.skip("an SDK provider is installed in this test process")
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert tracing.load() is None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert tracing.load() is None


def test_trace_context_is_read_from_the_request_or_its_params():
    parent = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
    assert tracing.carrier_of({"traceparent": parent, "params": [1]}) == {"traceparent": parent}
    assert tracing.carrier_of({"params": {"traceparent": parent, "n": 1}}) == {"traceparent": parent}
    assert tracing.carrier_of({"params": {"traceparent": 7}}) == {}
    assert tracing.carrier_of([1, 2]) == {}
