"""OpenTelemetry spans for calls (the optional extra `clusterd[otel]`).

Off, and free of cost (not even imported), unless opentelemetry-sdk is installed AND either the app
installed an SDK TracerProvider itself or the standard variables ask for traces (OTEL_TRACES_EXPORTER other than
"none", or OTEL_EXPORTER_OTLP[_TRACES]_ENDPOINT; OTEL_SDK_DISABLED=true turns it off). `load()` then
returns a Tracing, else None, and the master and the workers hold that one value: the per-call path
pays one `is not None` test when tracing is off.

Each call is a span (`rpc.system=jsonrpc`, `rpc.method`, `clusterd.slot` on a worker, `clusterd.door`
on the master). The W3C trace context travels in a `traceparent` (and `tracestate`) member of the
JSON-RPC request object, clusterd's extension that the protocol tolerates; a client may put it there
or in the params object (which its method then receives too), and an HTTP door takes it from the
header of the same name. Master -> worker and worker -> master calls carry it on, so one call is one
trace across processes.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

log = logging.getLogger("clusterd")

CARRIER_KEYS = ("traceparent", "tracestate")


def carrier_of(request: Any) -> dict[str, str]:
    """The trace context members of a decoded request (top level first, then its params object)."""
    if not isinstance(request, dict):
        return {}
    found = {k: v for k in CARRIER_KEYS if isinstance(v := request.get(k), str)}
    params = request.get("params")
    if not found and isinstance(params, dict):
        found = {k: v for k in CARRIER_KEYS if isinstance(v := params.get(k), str)}
    return found


class Tracing:
    """Starts spans and moves their context in and out of JSON-RPC requests."""

    def __init__(self, tracer: Any) -> None:
        from opentelemetry import propagate, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode
        self.tracer = tracer
        self._trace = trace
        self._propagate = propagate
        self._kind = SpanKind
        self._error = Status(StatusCode.ERROR)
        self._open: dict[Any, Any] = {}     # key (a master's Call) -> span, for calls answered later

    def start(self, method: str, request: Any = None, **attributes: Any) -> Any:
        """A server span for one call; its parent is the request's trace context when it has one,
        else the current span (a call made inside another)."""
        carrier = carrier_of(request)
        context = self._propagate.extract(carrier) if carrier else None
        attrs = {"rpc.system": "jsonrpc", "rpc.method": method}
        attrs.update({f"clusterd.{k}": v for k, v in attributes.items() if v is not None})
        return self.tracer.start_span(method, context=context, kind=self._kind.SERVER, attributes=attrs)

    def use(self, span: Any, end: bool = False) -> Any:
        """A context manager making `span` current (calls made inside carry it on)."""
        return self._trace.use_span(span, end_on_exit=end, record_exception=False, set_status_on_exception=False)

    def end(self, span: Any, error_code: int | None = None) -> None:
        if error_code is not None:
            span.set_attribute("rpc.jsonrpc.error_code", error_code)
            span.set_status(self._error)
        span.end()

    def inject(self, request: dict, span: Any = None) -> dict:
        """`request` with the trace context of `span` (else the current one) as members."""
        carrier: dict[str, str] = {}
        if span is not None:
            self._propagate.inject(carrier, context=self._trace.set_span_in_context(span))
        else:
            self._propagate.inject(carrier)
        request.update(carrier)
        return request

    # -- the master's calls, answered in another callback than the one that sent them
    def open(self, key: Any, span: Any) -> None:
        self._open[key] = span

    def close(self, key: Any, error_code: int | None = None) -> None:
        span = self._open.pop(key, None)
        if span is not None:
            self.end(span, error_code)


def _wanted_by_environment() -> bool:
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _exporter(name: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter
        return ConsoleSpanExporter()
    if name == "otlp":
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                                  os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"))
        try:
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("OTEL_TRACES_EXPORTER=otlp: install opentelemetry-exporter-otlp; no traces are exported")
            return None
        return OTLPSpanExporter()
    log.warning("OTEL_TRACES_EXPORTER: unknown exporter %r ignored", name)
    return None


def _configure_from_environment(provider_cls: type) -> Any:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    provider = provider_cls(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "clusterd")}))
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",") if n.strip()]
    for name in names:
        exporter = _exporter(name)
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return trace.get_tracer_provider()


def load(version: str = "") -> Tracing | None:
    """Tracing when it is installed and wanted (see the module's docstring), else None.

    Nothing is imported unless the app already imported the SDK or the OTEL_* variables ask for
    traces: importing the SDK costs a worker about 170 ms of start-up."""
    if "opentelemetry.sdk.trace" not in sys.modules and not _wanted_by_environment():
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        if not _wanted_by_environment():
            return None
        try:
            provider = _configure_from_environment(TracerProvider)
        except Exception:  # a bad OTEL_* value must not stop the service
            log.exception("OpenTelemetry could not be configured from OTEL_* variables; tracing is off")
            return None
        if not isinstance(provider, TracerProvider):
            return None
    return Tracing(provider.get_tracer("clusterd", version or None))


__all__ = ["Tracing", "carrier_of", "load"]
