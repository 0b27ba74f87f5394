"""OpenTelemetry: the call's attributes on the caller's span, and monitoring spans linked back.

Which tracer: the ``tracer_provider`` given to the Exporter; else the application's global
TracerProvider when it has set one; else, when the ``OTEL_*`` environment asks for traces
(``OTEL_TRACES_EXPORTER``, or an ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT``), a provider of our own
built with the OpenTelemetry SDK (the ``otlp`` extra); else tracing is off and costs one check per
call. The package itself depends on the OpenTelemetry API only.

Per call: when the caller's current span is recording (a web framework's request span,
:func:`current_recording_span`), the ``virk.*`` attributes go on it in one ``set_attributes``
call after the call returned, which costs a few microseconds; otherwise, or with
``span_per_call=True``, the call gets a span of its own (:func:`own_span`), a child of the
current one.

Monitoring happens in the worker process, which cannot use the application's provider. The
worker describes its spans (:class:`SpanRecord`) and sends them back; the caller's hand-off
thread turns them into real spans of the application's provider, with explicit start and end
times and links to the request spans whose frames they processed.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ContextManager, Iterator

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags

from virk_exporter._version import __version__

log = logging.getLogger("virk_exporter")

INSTRUMENTATION = "virk_exporter"
DEFAULT_SERVICE_NAME = "virk-exporter"  # only when neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES names one
_OWN_PROVIDER: Any = None  # at most one per process, shared by all Exporters
_OWN_PROVIDER_TRIED = False  # built (or refused, with one log line) once per process
_SPAN_FAILURE_LOGGED = False
# The context key the API keeps the current span under, read through the public API once: looking
# it up directly skips trace.get_current_span()'s call layers and ABC isinstance check, which cost
# ~20 µs per call on a cold CPU right after predict returns (benchmarks/overhead.py).
_CURRENT_SPAN_KEY = next(iter(trace.set_span_in_context(trace.INVALID_SPAN, otel_context.Context())))


def resolve_tracer(provider: Any = None) -> trace.Tracer | None:
    """The tracer monitoring should use now, or None when tracing is off. Never raises."""
    try:
        if provider is None:
            provider = trace.get_tracer_provider()
            if isinstance(provider, trace.ProxyTracerProvider) or type(provider).__name__ == "NoOpTracerProvider":
                provider = _own_provider()
        return None if provider is None else provider.get_tracer(INSTRUMENTATION, __version__)
    except Exception as problem:  # noqa: BLE001 - tracing must never break predict
        log.warning("virk-exporter: tracing is off: %s: %s", type(problem).__name__, problem)
        return None


def current_recording_span() -> Any:
    """The caller's current span when it is recording (a web framework's request span), else None."""
    try:
        span = otel_context.get_current().get(_CURRENT_SPAN_KEY)
        return span if span is not None and span.is_recording() else None
    except Exception as problem:  # noqa: BLE001 - never raised to the caller
        _log_span_failure(problem)
        return None


def own_span(tracer: trace.Tracer, name: str, attributes: dict[str, Any]) -> ContextManager[Any]:
    """A span of our own for one call, a child of the current one (the context manager yields
    it; None when the tracing SDK fails here: the call itself must run all the same)."""
    try:
        return tracer.start_as_current_span(name, kind=SpanKind.INTERNAL, attributes=attributes)
    except Exception as problem:  # noqa: BLE001 - never raised to the caller
        _log_span_failure(problem)
        return nullcontext(None)


def _log_span_failure(problem: Exception) -> None:
    global _SPAN_FAILURE_LOGGED
    if not _SPAN_FAILURE_LOGGED:
        _SPAN_FAILURE_LOGGED = True
        log.warning("virk-exporter: a span could not be started (logged once): %s: %s", type(problem).__name__, problem)


def _own_provider() -> Any:
    """A provider from the OTEL_* environment, when it asks for traces and the SDK is installed."""
    global _OWN_PROVIDER, _OWN_PROVIDER_TRIED
    if _OWN_PROVIDER_TRIED:
        return _OWN_PROVIDER
    _OWN_PROVIDER_TRIED = True
    env = os.environ
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true" or "none" in names or not (names or endpoint):
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ModuleNotFoundError:
        log.warning("virk-exporter: the OTEL_* environment asks for traces, but the OpenTelemetry SDK is not installed "
                    "(pip install 'virk-exporter[otlp]'): tracing is off")
        return None
    exporters = [e for e in (_span_exporter(name) for name in names or ["otlp"]) if e is not None]
    if not exporters:
        return None
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME; the provider reads
    # OTEL_TRACES_SAMPLER(_ARG); the OTLP exporter reads the endpoint, headers and timeout.
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    _OWN_PROVIDER = provider
    log.info("virk-exporter: exporting traces (%s) from the OTEL_* environment", ", ".join(names or ["otlp"]))
    return provider


def _span_exporter(name: str) -> Any:
    """The span exporter OTEL_TRACES_EXPORTER names (otlp over HTTP or gRPC, console), or None."""
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        log.warning("virk-exporter: OTEL_TRACES_EXPORTER=%s is not supported here (otlp, console, none): ignored", name)
        return None
    env = os.environ
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ModuleNotFoundError:
        package = "opentelemetry-exporter-otlp-proto-grpc" if protocol == "grpc" else "virk-exporter[otlp]"
        log.warning("virk-exporter: OTLP (%s) traces need %s installed: tracing is off", protocol, package)
        return None
    return OTLPSpanExporter()


def force_flush(provider: Any = None, timeout_millis: int = 10000) -> None:
    """Export what the tracer provider in use holds (tests and shutdown)."""
    provider = provider or _OWN_PROVIDER or trace.get_tracer_provider()
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
