"""An app that installs OpenTelemetry's SDK with an in-memory exporter (run it with --isolation thread,
so the master's and the workers' spans land in one exporter), and shows the spans it holds."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from clusterd import MasterEndpoint, WorkerEndpoint, rpc

EXPORTER = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(_provider)


class Master(MasterEndpoint):
    @rpc
    async def relay(self, n: int) -> int:
        return await self.workers.call("work", n)

    @rpc
    def master_add(self, a: int, b: int) -> int:
        return a + b

    @rpc
    def spans(self) -> list[dict]:
        return [{"name": s.name, "trace_id": f"{s.context.trace_id:032x}", "span_id": f"{s.context.span_id:016x}",
                 "parent_id": f"{s.parent.span_id:016x}" if s.parent else None, "kind": s.kind.name,
                 "status": s.status.status_code.name, "attributes": dict(s.attributes or {})}
                for s in EXPORTER.get_finished_spans()]


class Worker(WorkerEndpoint):
    @rpc
    async def work(self, n: int) -> int:
        return await self.master.call("master_add", n, 1)

    @rpc
    def fail(self) -> None:
        raise ValueError("traced failure")
