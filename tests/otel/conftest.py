"""An OpenTelemetry SDK with in-memory exporters, and the instrumentor installed on it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from retryqueue import hooks
from retryqueue.otel import RetryQueueInstrumentor


@dataclass
class Telemetry:
    """What the instrumented code exported: finished spans and metric points."""

    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    tracer_provider: TracerProvider

    def finished(self, kind: SpanKind | None = None) -> list[ReadableSpan]:
        """Finished spans (of one kind), in the order they ended."""
        return [s for s in self.spans.get_finished_spans() if kind is None or s.kind == kind]

    def counts(self, name: str) -> dict[tuple[tuple[str, object], ...], float]:
        """A counter's (or histogram's count) value per attribute set."""
        found: dict[tuple[tuple[str, object], ...], float] = {}
        data = self.metrics.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != name:
                        continue
                    for point in metric.data.data_points:
                        value = getattr(point, "value", None)
                        if value is None:
                            value = point.count  # type: ignore[union-attr]
                        found[tuple(sorted((point.attributes or {}).items()))] = value
        return found


@pytest.fixture
def telemetry(engine: object) -> Iterator[Telemetry]:
    """Instrumented with in-memory exporters for the test; uninstrumented afterwards."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    instrumentor = RetryQueueInstrumentor()
    instrumentor.instrument(
        tracer_provider=tracer_provider, meter_provider=meter_provider, engine=engine
    )
    try:
        yield Telemetry(spans, reader, tracer_provider)
    finally:
        instrumentor.uninstrument()
        meter_provider.shutdown()
        tracer_provider.shutdown()
    assert hooks.active is None
