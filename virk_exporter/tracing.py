"""OpenTelemetry: a span per decorated call, and monitoring spans linked back to those calls.

Which tracer: the application's TracerProvider when it has set one; otherwise, when the
standard ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`` variable is set, a provider of our own that
exports OTLP/HTTP and honours the other ``OTEL_*`` variables (service name, sampler,
headers); otherwise tracing is off and costs one attribute check per call.

Monitoring happens in the worker process, which cannot use the application's provider. The
worker describes its spans (:class:`SpanRecord`) and sends them back; the caller's hand-off
thread turns them into real spans of the application's provider, with explicit start and end
times and links to the request spans whose frames they processed.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags

log = logging.getLogger("virk_exporter")

INSTRUMENTATION = "virk_exporter"
_OWN_PROVIDER: Any = None  # at most one per process, shared by all Exporters


def resolve_tracer() -> trace.Tracer | None:
    """The tracer monitoring should use now, or None when tracing is off."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, trace.ProxyTracerProvider) and type(provider).__name__ != "NoOpTracerProvider":
        return provider.get_tracer(INSTRUMENTATION)
    own = _own_provider()
    return own.get_tracer(INSTRUMENTATION) if own is not None else None


def _own_provider() -> Any:
    """A provider from the OTEL_* environment, when an OTLP endpoint is configured there."""
    global _OWN_PROVIDER
    if _OWN_PROVIDER is not None:
        return _OWN_PROVIDER
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    if not (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Resource.create reads OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES; the provider reads
    # OTEL_TRACES_SAMPLER(_ARG); the exporter reads the endpoint, headers and timeout.
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "virk-exporter")})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _OWN_PROVIDER = provider
    log.info("virk-exporter: exporting traces over OTLP/HTTP (from the OTEL_* environment)")
    return provider


def force_flush(timeout_millis: int = 10000) -> None:
    """Export what the tracer provider in use holds (tests and shutdown)."""
    provider = _OWN_PROVIDER or trace.get_tracer_provider()
    flush = getattr(provider, "force_flush", None)
    if flush is not None:
        flush(timeout_millis)


def hex_ids(context: SpanContext) -> tuple[str | None, str | None]:
    if not context.is_valid:
        return None, None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


# ---------------------------------------------------------------------- worker spans
@dataclass
class SpanRecord:
    """A span described in the worker process, emitted by the caller's process."""

    name: str
    start_ns: int
    end_ns: int = 0
    attributes: dict[str, Any] = field(default_factory=dict)
    links: list[tuple[str, str]] = field(default_factory=list)  # (trace id, span id) in hex
    events: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    children: list["SpanRecord"] = field(default_factory=list)
    error: str | None = None


class SpanRecorder:
    """Worker side: collects the span of the batch being processed, when tracing is on."""

    def __init__(self) -> None:
        self.enabled = False
        self.current: SpanRecord | None = None

    def begin(self, name: str, attributes: dict[str, Any], links: list[tuple[str, str]]) -> None:
        self.current = SpanRecord(name, time.time_ns(), attributes=attributes, links=links) if self.enabled else None

    @contextmanager
    def child(self, name: str) -> Iterator[None]:
        if self.current is None:
            yield
            return
        record = SpanRecord(name, time.time_ns())
        try:
            yield
        except BaseException as problem:
            record.error = f"{type(problem).__name__}: {problem}"
            raise
        finally:
            record.end_ns = time.time_ns()
            self.current.children.append(record)

    def event(self, name: str, attributes: dict[str, Any]) -> None:
        if self.current is not None:
            self.current.events.append((name, time.time_ns(), attributes))

    def finish(self) -> SpanRecord | None:
        record, self.current = self.current, None
        if record is not None:
            record.end_ns = time.time_ns()
        return record


def emit(tracer: trace.Tracer, record: SpanRecord, parent: Any = None) -> None:
    """Turn a worker's span record into a span of ``tracer`` (a new trace, linked to requests)."""
    links = [
        Link(SpanContext(int(t, 16), int(s, 16), is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)))
        for t, s in dict.fromkeys(record.links)
    ]
    context = trace.set_span_in_context(parent) if parent is not None else None
    span = tracer.start_span(record.name, context=context, kind=SpanKind.INTERNAL, attributes=record.attributes, links=links, start_time=record.start_ns)
    for name, timestamp, attributes in record.events:
        span.add_event(name, attributes, timestamp)
    for child in record.children:
        emit(tracer, child, span)
    if record.error:
        span.set_status(trace.Status(trace.StatusCode.ERROR, record.error))
    span.end(end_time=record.end_ns)
