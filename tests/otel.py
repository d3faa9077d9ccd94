"""The trace-capturing fixture of the tracing tests: an SDK provider with an in-memory exporter.

The provider is handed to ``redis_broker.tracing`` for the test only, not set as the
global one: OpenTelemetry lets a process set its global provider once, and a global SDK
would make every later test in the run trace too (their outputs would carry headers).
The global propagator (W3C Trace Context by default) is used as in production.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

from redis_broker import tracing


class Captured:
    """The spans finished during a test, and a tracer for the test's own spans (a view's)."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer: Tracer = self.provider.get_tracer("tests")

    def spans(self) -> list[ReadableSpan]:
        """Return every finished span, in the order they ended."""
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        """Return the finished spans called ``name``."""
        return [span for span in self.spans() if span.name == name]


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[Captured]:
    """Trace with an SDK provider for this test; yield what it records."""
    capture = Captured()
    monkeypatch.setattr(tracing, "_tracer", capture.provider.get_tracer("redis_broker"))
    yield capture
    capture.provider.shutdown()


def traceparent(headers: dict[str, Any]) -> tuple[int, int]:
    """Return (trace id, span id) of a sampled ``traceparent`` header, checking its W3C form.

    The flags are ``01`` (sampled), or ``03`` where the SDK also sets Trace Context
    level 2's "random trace id" bit.
    """
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert (version, len(trace_id), len(span_id)) == ("00", 32, 16)
    assert int(flags, 16) & 1 == 1, flags
    return int(trace_id, 16), int(span_id, 16)


def ids(span: ReadableSpan) -> tuple[int, int]:
    """Return (trace id, span id) of a span."""
    context = span.get_span_context()
    assert context is not None
    return context.trace_id, context.span_id


def parent_id(span: ReadableSpan) -> int:
    """Return the span id of a span's parent (0 for a root span)."""
    return span.parent.span_id if span.parent is not None else 0
