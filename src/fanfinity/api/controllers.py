"""HTTP handlers: read the body through `api.validation`, hand over, answer. Errors are raised.

Who may call each route is declared on it (`route_access`) and checked by one app-level hook;
the rate limiter charges writes; the batch fan-out lives next to the batcher
(`pipeline.ingest.ingest_batch`); responses are mapped from documents in `pipeline.views`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from litestar import Controller, MediaType, Request, Response, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, Parameter

from fanfinity.api.access import Access, route_access
from fanfinity.api.match_list import cached_match_list
from fanfinity.api.metrics_docs import MetricsReadOperation, MetricsStreamOperation
from fanfinity.api.openapi import batch_body_schema, event_body_schema, operation_with_json_body
from fanfinity.api.problems import Problem
from fanfinity.api.ratelimit import request_cost
from fanfinity.api.raw import BytesResponse, encoded_fields, json_response, request_header_list
from fanfinity.api.sse import LiveStream
from fanfinity.api.throttle import client_address
from fanfinity.api.validation import (
    canonical_uuid,
    is_identifier,
    read_json_body,
    validate_batch,
)
from fanfinity.errors import (
    DuplicateEventConflict,
    EventNotFound,
    MatchNotFound,
    StoreUnavailable,
)
from fanfinity.pipeline.fold import STATUS_NAMES
from fanfinity.pipeline.ingest import WriteOutcome, ingest_batch
from fanfinity.pipeline.views import match_list, stored_event
from fanfinity.schemas import (
    MAX_BATCH_BYTES,
    MAX_EVENT_BYTES,
    BatchResult,
    EventAccepted,
    HealthStatus,
    MatchList,
    MatchMetrics,
    StoredEvent,
)
from fanfinity.storage.models import event_document

if TYPE_CHECKING:
    from fanfinity.api.app import Services

JSON = MediaType.JSON
# The match list's status filter: an enum in the document, and "live\n" is a 400, not a 500.
StatusFilter = Literal["scheduled", "live", "ended"]
EXAMPLE_EVENT = {
    "eventId": "3f0b8a52-6c1e-4d7e-9d0a-2b51f1f0c001",
    "matchId": "alhilal-vs-alnassr-2026-11-25",
    "eventType": "goal",
    "timestamp": "2026-11-25T19:42:07Z",
    "teamId": "al-hilal",
    "playerId": "player-9",
    "metadata": {"minute": 42, "assist": "player-7"},
}


EVENT_BODY_SCHEMA = event_body_schema()


def services_of(request: Request[Any, Any, Any]) -> Services:
    services: Services = request.app.state.services
    return services


def charge(request: Request[Any, Any, Any], services: Services, cost: int) -> dict[str, str]:
    """The RateLimit-* headers after charging `cost` tokens (none when rate limits are off)."""
    return {} if services.limiter is None else services.limiter.charge(request, cost)


def readable_match(request: Request[Any, Any, Any], match_id: str) -> Services:
    """The match-id check every per-match read starts with (the read key is checked before)."""
    if not is_identifier(match_id):
        raise MatchNotFound(f"{match_id!r} is not a valid match id")
    return services_of(request)


def _problem(title: str) -> ResponseSpec:
    return ResponseSpec(
        data_container=Problem, description=title, media_type="application/problem+json"
    )


WRITE_ERRORS = {
    429: _problem("Rate limit of this API key reached (see Retry-After, RateLimit-*)"),
    400: _problem("Malformed JSON"),
    401: _problem("Missing or invalid X-API-Key"),
    413: _problem("Body too large"),
    415: _problem("Not application/json"),
    422: _problem("Invalid fields, with the reason for each"),
    503: _problem("Not stored: retry later with the same eventId (see Retry-After)"),
}


class EventController(Controller):
    path = "/api/events"
    tags = ["events"]

    @post(
        "/",
        status_code=202,
        request_max_body_size=MAX_EVENT_BYTES,
        **route_access(Access.PRODUCER),
        operation_class=operation_with_json_body(
            EVENT_BODY_SCHEMA, EXAMPLE_EVENT, "One match event (at most 32 KiB)."
        ),
        summary="Ingest one match event",
        description=(
            "Answers 202 only once the event is durably stored. Re-sending the same eventId with "
            "the same payload answers 202 again (header Idempotent-Replayed: true); with another "
            "payload, 409."
        ),
        responses={
            202: ResponseSpec(data_container=EventAccepted, description="Stored durably"),
            409: _problem("eventId reused with a different payload"),
            **WRITE_ERRORS,
        },
    )
    async def create_event(self, request: Request[Any, Any, Any]) -> BytesResponse:
        received = time.perf_counter()
        services = services_of(request)
        body = await read_json_body(request)
        rate_headers = charge(request, services, request_cost(1, body.size))
        now = datetime.now(UTC)
        event = body.event(now)
        outcome = await services.batcher.submit(event_document(event, now), received)
        if outcome is WriteOutcome.CONFLICT:
            raise DuplicateEventConflict(event.event_id)
        if outcome is WriteOutcome.FAILED:
            raise StoreUnavailable("the event store rejected the write", 1, event.event_id)
        headers = [
            (b"location", b"/api/events/" + event.event_id.encode()),
            *encoded_fields(rate_headers),
        ]
        if outcome is WriteOutcome.DUPLICATE:
            headers.append((b"idempotent-replayed", b"true"))
        return json_response(202, headers, msgspec.json.encode(EventAccepted(event.event_id)))

    @post(
        "/batch",
        status_code=200,
        request_max_body_size=MAX_BATCH_BYTES,
        **route_access(Access.PRODUCER),
        operation_class=operation_with_json_body(
            batch_body_schema(EVENT_BODY_SCHEMA),
            [EXAMPLE_EVENT],
            "1 to 500 events (at most 512 KiB).",
        ),
        summary="Ingest up to 500 events, each validated and stored on its own",
        description=(
            "200 with one result per item, in order: accepted, duplicate (already stored, same "
            "payload), conflict (eventId used with another payload), invalid (with reasons) or "
            "unavailable (not stored: retry it). Accepted and duplicate items are durable. "
            "503 when no item could be stored."
        ),
        responses={200: ResponseSpec(data_container=BatchResult), **WRITE_ERRORS},
    )
    async def create_batch(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        received = time.perf_counter()
        services = services_of(request)
        body = await read_json_body(request)
        items = body.batch_items()
        rate_headers = charge(request, services, request_cost(len(items), body.size))
        now = datetime.now(UTC)
        batch = await ingest_batch(
            services.batcher, await validate_batch(items, now), now, received
        )
        headers = {**rate_headers, "Retry-After": "1"} if batch.retry_later else rate_headers
        return Response(
            content=msgspec.json.encode(batch.result),
            status_code=200,
            media_type=JSON,
            headers=headers,
        )

    @get(
        "/{event_id:str}",
        summary="Read one stored event",
        **route_access(Access.READ),
        responses={404: _problem("No such event (or not a UUID)")},
    )
    async def get_event(
        self, request: Request[Any, Any, Any], event_id: FromPath[str]
    ) -> StoredEvent:
        event_key = canonical_uuid(event_id)
        if event_key is None:
            raise EventNotFound(f"no event with id {event_id!r} (event ids are UUIDs)")
        document = await services_of(request).engine.events.get(event_key)
        if document is None:
            raise EventNotFound(f"no event with id {event_id!r}")
        return stored_event(document)


class MatchController(Controller):
    path = "/api/matches"
    tags = ["matches"]

    @get(
        "/{match_id:str}/metrics",
        summary="Engagement metrics of one match",
        **route_access(Access.READ),
        description=(
            "Served from the match's summary document through a per-replica cache of "
            "FANFINITY_METRICS_CACHE_MS; `asOf` says when the summary last changed, `generatedAt` "
            "when this body was computed. Percentiles come from log-scale buckets and are within "
            "9.1% of the exact value. Conditional: send the ETag back in If-None-Match for a 304 "
            "without a body; Cache-Control lets a CDN share the body for a second. Bounded: a "
            "match keeps at most FANFINITY_MAX_TEAMS_PER_MATCH teams (8) and "
            "FANFINITY_MAX_MINUTES_PER_MATCH minutes (720), admitted first come by receipt time; "
            "the events of further teams or minutes are in totalEvents, eventsByType and "
            "`overflow`, so the body stays under 64 KiB."
        ),
        operation_class=MetricsReadOperation,
        responses={
            200: ResponseSpec(data_container=MatchMetrics),
            404: _problem("No events counted for this match (or not a valid match id)"),
        },
    )
    async def get_metrics(
        self, request: Request[Any, Any, Any], match_id: FromPath[str]
    ) -> BytesResponse:
        services = readable_match(request, match_id)
        snapshot = await services.reader.snapshot(match_id)
        headers = snapshot.response_headers(shared=not services.settings.read_api_keys)
        if snapshot.not_modified(request_header_list(request.scope, b"if-none-match")):
            return BytesResponse(304, headers)
        return json_response(200, headers, snapshot.body)

    @get(
        "/{match_id:str}/metrics/stream",
        summary="Live metrics of one match as Server-Sent Events",
        **route_access(Access.READ),
        description=(
            "Sends the current metrics at once (event `metrics`, same body as the metrics "
            "endpoint), then a new `metrics` event whenever they change, at most every "
            "FANFINITY_STREAM_INTERVAL_MS, with keep-alive comments when idle. After full time it "
            "sends the final metrics and an `end` event and closes. Clients that do not read are "
            "dropped. The cost is one summary read per match per interval, whatever the number of "
            "subscribers."
        ),
        operation_class=MetricsStreamOperation,
        responses={
            200: ResponseSpec(
                data_container=str, media_type="text/event-stream", description="SSE stream"
            ),
            404: _problem("No events counted for this match"),
            429: _problem("This address holds its maximum number of streams (see Retry-After)"),
            503: _problem("This replica serves its maximum number of streams"),
        },
    )
    async def stream_metrics(
        self, request: Request[Any, Any, Any], match_id: FromPath[str]
    ) -> LiveStream:
        services = readable_match(request, match_id)
        subscriber = await services.streams.open(match_id, client_address(request))
        return LiveStream(
            subscriber, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    @get(
        "/",
        summary="List matches, most recently updated first",
        **route_access(Access.READ),
        responses={
            400: _problem("Invalid query parameter (status, limit, offset)"),
            429: _problem("Too many list requests from this address (see Retry-After)"),
        },
    )
    async def list_matches(
        self,
        request: Request[Any, Any, Any],
        status: Annotated[
            StatusFilter | None, Parameter(description="Only matches in this state")
        ] = None,
        limit: Annotated[int, Parameter(ge=1, le=100)] = 20,
        offset: Annotated[int, Parameter(ge=0, le=100_000)] = 0,
    ) -> MatchList:
        rank = STATUS_NAMES.index(status) if status else None
        summaries, total = await cached_match_list(request, rank, limit, offset)
        return match_list(summaries, total, limit, offset)


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get(
        "/live",
        summary="The process is up (and its aggregator, if any, has not ended unexpectedly)",
        responses={503: ResponseSpec(data_container=HealthStatus, description="Restart me")},
    )
    async def live(self, request: Request[Any, Any, Any]) -> Response[HealthStatus]:
        aggregator = services_of(request).aggregator
        if aggregator is not None and aggregator.ended_unexpectedly:
            return Response(
                HealthStatus(status="unavailable", checks={"aggregator": "ended unexpectedly"}),
                status_code=503,
            )
        return Response(HealthStatus(status="ok", checks={}), status_code=200)

    @get(
        "/ready",
        summary="Store reachable, accepting requests, aggregator following the feed",
        responses={503: ResponseSpec(data_container=HealthStatus, description="Not ready")},
    )
    async def ready(self, request: Request[Any, Any, Any]) -> Response[HealthStatus]:
        services = services_of(request)
        checks = {
            "store": "ok" if await services.engine.ping() else "unreachable",
            "accepting": "ok" if services.accepting else "shutting down",
        }
        if services.aggregator is not None:
            aggregator = services.aggregator
            if not aggregator.running:
                checks["aggregator"] = "stopped"
            elif not aggregator.healthy():
                checks["aggregator"] = f"stalled for {aggregator.stalled_for():.0f}s"
            else:
                checks["aggregator"] = "ok"
        ready = all(value == "ok" for value in checks.values())
        return Response(
            HealthStatus(status="ok" if ready else "unavailable", checks=checks),
            status_code=200 if ready else 503,
        )


__all__ = ["EventController", "HealthController", "MatchController"]
