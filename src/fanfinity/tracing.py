"""OpenTelemetry tracing, off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

When on: a server span per request (Litestar's OpenTelemetry plugin), one span per group-commit
flush linked to the request spans it answered, one span per aggregator batch commit, and a client
span per MongoDB command. When off, `start_tracing` returns None, no middleware or listener is
installed, and the batcher, aggregator and request middleware hold None in place of a tracer: one
``is None`` check on their paths. Only the endpoint goes through `Settings`; the OTLP exporter,
sampler and batch processor read their other standard ``OTEL_*`` variables themselves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from litestar.types import Scope
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.semconv.attributes.http_attributes import HTTP_ROUTE
from opentelemetry.trace import Link, Span, SpanContext, Tracer, format_trace_id
from pymongo import monitoring

from fanfinity import __version__
from fanfinity.config import Settings

if TYPE_CHECKING:  # the SDK, the plugin and the instrumentation load only when tracing is on
    from litestar.plugins.opentelemetry import OpenTelemetryPlugin
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

DEFAULT_SERVICE_NAME = "fanfinity"
# Probes and scrapes arrive every few seconds per replica and say nothing about a match.
UNTRACED_PATHS = ["^/health/", "^/metrics$"]

_capture_to: SpanExporter | None = None


@dataclass(frozen=True, slots=True)
class Tracing:
    """The tracer provider of one app, and what the app wires to it."""

    provider: TracerProvider
    tracer: Tracer
    plugin: OpenTelemetryPlugin
    mongo_listeners: list[monitoring.CommandListener] = field(default_factory=list)

    def shutdown(self) -> None:
        """Export what is still buffered, then stop; it blocks, so call it off the event loop."""
        self.provider.shutdown()


def start_tracing(settings: Settings) -> Tracing | None:
    """A dedicated tracer provider (never the global one) when tracing is on, else None."""
    if _capture_to is None and not settings.otlp_endpoint:
        return None
    from litestar.enums import ScopeType
    from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
    from opentelemetry.instrumentation.pymongo import CommandTracer
    from opentelemetry.instrumentation.pymongo.version import __version__ as instrumentation
    from opentelemetry.sdk.resources import (
        SERVICE_NAME,
        SERVICE_VERSION,
        OTELResourceDetector,
        Resource,
    )
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    processor: SpanProcessor
    if _capture_to is not None:
        processor = SimpleSpanProcessor(_capture_to)
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.otlp_endpoint))
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over these (compose names each role).
    resource = Resource.create(
        {SERVICE_NAME: DEFAULT_SERVICE_NAME, SERVICE_VERSION: __version__}
    ).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(processor)
    plugin = OpenTelemetryPlugin(
        OpenTelemetryConfig(
            tracer_provider=provider,
            scope_span_details_extractor=_span_name_before_routing,
            exclude=UNTRACED_PATHS,
            exclude_spans=["receive", "send"],
            scopes={ScopeType.HTTP},
        )
    )
    # Registered on our client (db.py), not globally through PymongoInstrumentor: the global
    # listener cannot be unregistered and stays bound to the first provider it was given.
    mongo_tracer = provider.get_tracer("opentelemetry.instrumentation.pymongo", instrumentation)
    return Tracing(
        provider=provider,
        tracer=provider.get_tracer("fanfinity", __version__),
        plugin=plugin,
        mongo_listeners=[CommandTracer(mongo_tracer)],
    )


@contextlib.contextmanager
def capture_spans(exporter: SpanExporter) -> Iterator[None]:
    """Test hook: apps created inside the block trace synchronously to `exporter`."""
    global _capture_to
    previous, _capture_to = _capture_to, exporter
    try:
        yield
    finally:
        _capture_to = previous


def _span_name_before_routing(scope: Scope) -> tuple[str, dict[str, Any]]:
    """The method alone: the route template is not known yet, and a raw path (with its match
    id) would make span names unbounded. `request_trace_id` renames the span once routed."""
    return str(scope.get("method", "HTTP")), {}


def request_trace_id(scope: Scope) -> str | None:
    """Name the request's server span after its route template; its trace id, for the log line."""
    span = trace.get_current_span()
    span_context = span.get_span_context()
    if not span_context.is_valid:
        return None
    route = scope.get("path_template")
    if route and span.is_recording():
        span.update_name(f"{scope.get('method', 'HTTP')} {route}")
        span.set_attribute(HTTP_ROUTE, route)
    return format_trace_id(span_context.trace_id)


def current_span_context() -> SpanContext:
    """The span context of the request submitting an event, carried to the flush that writes it."""
    return trace.get_current_span().get_span_context()


def flush_span(
    tracer: Tracer, request_contexts: Iterable[SpanContext | None], events: int
) -> contextlib.AbstractContextManager[Span]:
    """A new trace for one group commit, linked to each request it serves (once per request: a
    batch POST queues many events from one span). The SDK keeps 128 links per span unless
    OTEL_SPAN_LINK_COUNT_LIMIT says otherwise."""
    unique = {
        (ctx.trace_id, ctx.span_id): ctx
        for ctx in request_contexts
        if ctx is not None and ctx.is_valid
    }
    return tracer.start_as_current_span(
        "ingest.flush",
        context=Context(),
        links=[Link(ctx) for ctx in unique.values()],
        attributes={
            "fanfinity.ingest.events": events,
            "fanfinity.ingest.requests": len(unique),
        },
    )


def commit_span(
    tracer: Tracer, events: int, matches: int, generation: int
) -> contextlib.AbstractContextManager[Span]:
    """One aggregator batch: summaries and checkpoint in one unit of work."""
    return tracer.start_as_current_span(
        "aggregator.commit",
        attributes={
            "fanfinity.aggregator.events": events,
            "fanfinity.aggregator.matches": matches,
            "fanfinity.aggregator.generation": generation,
        },
    )


def record_failure(error: BaseException) -> None:
    """Mark the current span failed for an error the code handles (and so never re-raises)."""
    span = trace.get_current_span()
    span.record_exception(error)
    span.set_status(trace.Status(trace.StatusCode.ERROR, type(error).__name__))
