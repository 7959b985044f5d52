"""An in-memory OpenTelemetry SDK for tests: finished spans and collected metric points."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@dataclass
class Point:
    """One metric data point, flattened: name, attributes and its value (sum, count, ...)."""

    name: str
    attributes: dict[str, Any]
    value: float
    count: int | None  # histograms: number of recordings


class InMemoryOtel:
    """Providers to hand to MemoryClient, and what they recorded."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def providers(self) -> dict[str, Any]:
        """MemoryClient keyword arguments."""
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        """Finished spans, oldest first, optionally only those called `name`."""
        spans = list(self.exporter.get_finished_spans())
        return [s for s in spans if name is None or s.name == name]

    def points(self, name: str | None = None) -> list[Point]:
        """Metric points collected now (cumulative), optionally only metric `name`."""
        return [p for p in self._collect() if name is None or p.name == name]

    def total(self, name: str, **attributes: Any) -> float:
        """The sum of a counter's points whose attributes include `attributes`."""
        return sum(
            p.value
            for p in self.points(name)
            if all(p.attributes.get(k) == v for k, v in attributes.items())
        )

    def _collect(self) -> Iterator[Point]:
        data = self.reader.get_metrics_data()
        if data is None:
            return
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    for dp in metric.data.data_points:
                        attrs = dict(dp.attributes or {})
                        count = getattr(dp, "count", None)
                        value = getattr(dp, "value", None)
                        if value is None:
                            value = getattr(dp, "sum", 0.0)
                        yield Point(metric.name, attrs, float(value), count)

    def shutdown(self) -> None:
        """Release the providers."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    """The spans whose parent is `parent`."""
    ctx = parent.get_span_context()
    assert ctx is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == ctx.span_id]


def everything_exported(otel: InMemoryOtel) -> str:
    """Every name, attribute, event, status and metric exported, as one searchable text."""
    parts: list[str] = []
    for span in otel.spans():
        parts.append(span.to_json())
    data = otel.reader.get_metrics_data()
    if data is not None:
        parts.append(data.to_json())
    return "\n".join(parts)
