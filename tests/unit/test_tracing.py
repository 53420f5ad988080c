"""Tracing: request spans, the flush span linked to the requests it served, the aggregator's batch
span, trace ids in the request log line, and nothing at all while tracing is off.

Each app traces to its own provider through `capture_spans`; no test sets the global provider
except the one proving that, when off, nothing would reach it (monkeypatch undoes it).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from litestar import Litestar
from litestar.middleware import DefineMiddleware
from litestar.plugins.opentelemetry import (
    OpenTelemetryInstrumentationMiddleware,
    OpenTelemetryPlugin,
)
from litestar.testing import AsyncTestClient
from loguru import logger
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, format_trace_id
from pymongo import monitoring
from pymongo.errors import AutoReconnect

from fanfinity.api.app import create_app
from fanfinity.config import Settings, SettingsError
from fanfinity.pipeline.ingest import IngestBatcher, IngestLatencyRecorder
from fanfinity.storage.engine import Engine
from fanfinity.storage.repositories import EventRepository, InsertReport
from fanfinity.tracing import capture_spans, start_tracing
from tests.conftest import PRODUCER_KEY, post_concurrently, with_settings
from tests.unit.test_ingest import event_id, goal

MATCH = "alhilal-vs-alnassr"


def match_event(minute: int) -> dict[str, Any]:
    return {
        "eventId": str(uuid.uuid4()),
        "matchId": MATCH,
        "eventType": "goal",
        "timestamp": f"2025-05-10T19:{minute:02d}:00Z",
        "teamId": "al-hilal",
    }


@pytest.fixture
def log_records() -> Iterator[list[dict[str, Any]]]:
    """The `extra` of every request log line written while the test runs."""
    records: list[dict[str, Any]] = []
    sink = logger.add(
        lambda message: records.append(dict(message.record["extra"])),
        level="DEBUG",
        filter=lambda record: "request_id" in record["extra"],
    )
    yield records
    logger.remove(sink)


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def attribute(span: ReadableSpan, key: str) -> Any:
    assert span.attributes is not None
    return span.attributes[key]


def traced_by_otel(app: Litestar) -> bool:
    handler = getattr(app.asgi_handler, "wrapped", app.asgi_handler)  # inside the request context
    return isinstance(handler, OpenTelemetryInstrumentationMiddleware)


async def wait_until_counted(app: Litestar, events: int) -> None:
    deadline = time.monotonic() + 5.0
    while app.state.services.aggregator.events_processed < events:
        assert time.monotonic() < deadline, "the aggregator never counted the events"
        await asyncio.sleep(0.02)


# on


async def test_request_flush_and_aggregator_spans_are_linked(
    settings: Settings, log_records: list[dict[str, Any]]
) -> None:
    exporter = InMemorySpanExporter()
    with capture_spans(exporter):  # a long linger: the five posts share one group commit
        app = create_app(with_settings(settings, batch_linger_ms=200.0, log_level="DEBUG"))
    assert traced_by_otel(app)

    async with AsyncTestClient(app=app) as client:
        responses = await post_concurrently(
            client, "/api/events", [match_event(minute) for minute in range(5)]
        )
        assert [response.status_code for response in responses] == [202] * 5
        await wait_until_counted(app, 5)
        assert (await client.get("/health/live")).status_code == 200
    spans = exporter.get_finished_spans()  # the lifespan has shut the provider down: all exported

    requests = named(spans, "POST /api/events")
    assert len(requests) == 5
    assert all(span.kind is SpanKind.SERVER for span in requests)
    assert all(
        span.attributes and span.attributes["http.route"] == "/api/events" for span in requests
    )
    assert not [span for span in spans if "/health" in span.name], "probes are not traced"

    [flush] = named(spans, "ingest.flush")
    assert flush.parent is None  # its own trace, linked to the five it served
    assert flush.attributes == {
        "fanfinity.ingest.events": 5,
        "fanfinity.ingest.requests": 5,
    }
    linked = {(link.context.trace_id, link.context.span_id) for link in flush.links}
    assert linked == {(span.context.trace_id, span.context.span_id) for span in requests}
    assert flush.context.trace_id not in {span.context.trace_id for span in requests}

    batches = [
        span
        for span in named(spans, "aggregator.commit")
        if attribute(span, "fanfinity.aggregator.events")
    ]
    assert sum(attribute(span, "fanfinity.aggregator.events") for span in batches) == 5
    for batch in batches:
        assert attribute(batch, "fanfinity.aggregator.matches") == 1
        assert attribute(batch, "fanfinity.aggregator.generation") >= 1

    logged = {record["trace_id"] for record in log_records if record["route"] == "/api/events"}
    assert logged == {format_trace_id(span.context.trace_id) for span in requests}


async def test_batch_post_is_linked_once_and_continues_the_callers_trace(
    settings: Settings,
) -> None:
    exporter = InMemorySpanExporter()
    caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    with capture_spans(exporter):
        app = create_app(settings)
    async with AsyncTestClient(app=app) as client:
        response = await client.post(
            "/api/events/batch",
            json=[match_event(minute) for minute in range(3)],
            headers={
                "X-API-Key": PRODUCER_KEY,
                "traceparent": f"00-{caller_trace}-00f067aa0ba902b7-01",
            },
        )
        assert response.status_code == 200, response.text
    spans = exporter.get_finished_spans()

    [request] = named(spans, "POST /api/events/batch")
    assert format_trace_id(request.context.trace_id) == caller_trace
    flushes = named(spans, "ingest.flush")
    assert sum(attribute(span, "fanfinity.ingest.events") for span in flushes) == 3
    for flush in flushes:
        assert [link.context.span_id for link in flush.links] == [request.context.span_id]


async def test_failed_group_commit_marks_the_flush_span_failed(engine: Engine) -> None:
    class PrimaryGone(EventRepository):
        async def insert_many(self, documents: Any) -> InsertReport:
            raise AutoReconnect("connection to mongo-0:27017 closed")

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    batcher = IngestBatcher(
        PrimaryGone(engine.database.get_collection("events")),
        IngestLatencyRecorder(engine.summaries),
        max_batch=10,
        linger_s=0.0,
        queue_max=10,
        store_timeout_s=1.0,
        tracer=provider.get_tracer("test"),
    )
    batcher.start()
    outcome = await asyncio.gather(
        batcher.submit(goal(event_id(1)), time.perf_counter()), return_exceptions=True
    )
    await batcher.close(timeout_s=1.0)

    assert isinstance(outcome[0], Exception)
    [flush] = named(exporter.get_finished_spans(), "ingest.flush")
    assert flush.status.status_code is StatusCode.ERROR
    assert flush.links == ()  # submitted outside any request span: nothing to link
    assert [event.name for event in flush.events] == ["exception"]


async def test_mongodb_commands_become_client_spans(settings: Settings) -> None:
    exporter = InMemorySpanExporter()
    with capture_spans(exporter):
        tracing = start_tracing(settings)
    assert tracing is not None
    [listener] = tracing.mongo_listeners
    connection = ("mongo-0", 27017)
    command = {"insert": "events", "ordered": False, "documents": [{"_id": "secret"}]}
    listener.started(monitoring.CommandStartedEvent(command, "fanfinity", 7, connection, 7))
    listener.succeeded(
        monitoring.CommandSucceededEvent(
            timedelta(milliseconds=1), {"ok": 1}, "insert", 7, connection, 7
        )
    )
    tracing.shutdown()

    [span] = exporter.get_finished_spans()
    assert span.name == "fanfinity.insert"
    assert span.kind is SpanKind.CLIENT
    assert span.attributes is not None
    assert span.attributes["db.system"] == "mongodb"
    assert "secret" not in str(span.attributes), "documents never reach a span"


# configuration


def test_endpoint_comes_from_the_standard_otel_variable() -> None:
    endpoint = "http://jaeger:4317"
    assert Settings.from_env({}).otlp_endpoint is None
    assert Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}).otlp_endpoint == endpoint
    with pytest.raises(SettingsError, match="OTEL_EXPORTER_OTLP_ENDPOINT"):
        Settings.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "jaeger:4317"})


def test_endpoint_turns_on_otlp_export_named_fanfinity_unless_otel_names_it(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    traced = with_settings(settings, otlp_endpoint="http://127.0.0.1:4317")
    tracing = start_tracing(traced)
    assert tracing is not None
    assert tracing.provider.resource.attributes["service.name"] == "fanfinity"
    processors = tracing.provider._active_span_processor._span_processors
    assert [type(processor) for processor in processors] == [BatchSpanProcessor]
    tracing.shutdown()  # nothing was recorded: no export is attempted

    monkeypatch.setenv("OTEL_SERVICE_NAME", "fanfinity-api")
    renamed = start_tracing(traced)
    assert renamed is not None
    assert renamed.provider.resource.attributes["service.name"] == "fanfinity-api"
    renamed.shutdown()


# off


async def test_tracing_off_installs_nothing_and_records_nothing(
    settings: Settings,
    log_records: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = create_app(with_settings(settings, log_level="DEBUG"))  # so 202 lines are logged
    assert settings.otlp_endpoint is None
    assert start_tracing(settings) is None
    assert not traced_by_otel(app)
    assert not any(isinstance(plugin, OpenTelemetryPlugin) for plugin in app.plugins)
    assert not [
        middleware
        for middleware in app.middleware
        if isinstance(middleware, DefineMiddleware)
        and middleware.middleware is OpenTelemetryInstrumentationMiddleware
    ]
    # Even a global provider (which the service never sets) would receive nothing.
    exporter = InMemorySpanExporter()
    global_provider = TracerProvider()
    global_provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", global_provider)

    async with AsyncTestClient(app=app) as client:
        responses = await post_concurrently(
            client, "/api/events", [match_event(minute) for minute in range(3)]
        )
        assert [response.status_code for response in responses] == [202] * 3
        await wait_until_counted(app, 3)

    assert exporter.get_finished_spans() == ()
    request_lines = [record for record in log_records if record["route"] == "/api/events"]
    assert len(request_lines) == 3
    assert not [record for record in request_lines if "trace_id" in record]


def test_capture_spans_is_undone_after_its_block(settings: Settings) -> None:
    with capture_spans(InMemorySpanExporter()):
        tracing = start_tracing(settings)
    assert tracing is not None
    tracing.shutdown()
    assert start_tracing(settings) is None
