"""HTTP handlers: decode, hand over to the batcher or the reader, answer. Errors are raised."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, MediaType, Request, Response, get, post
from litestar.exceptions import InternalServerException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, Parameter
from litestar.response import Stream

from fanfinity import metrics
from fanfinity.api.access import require_producer_key, require_read_key
from fanfinity.api.openapi import operation_with_json_body
from fanfinity.api.problems import Problem
from fanfinity.api.ratelimit import TokenBucketLimiter
from fanfinity.config import Settings
from fanfinity.errors import (
    ClientDisconnected,
    DuplicateEventConflict,
    EventNotFound,
    MatchNotFound,
    RateLimited,
    StoreUnavailable,
    UnsupportedMediaType,
)
from fanfinity.pipeline.aggregator import Aggregator
from fanfinity.pipeline.fold import (
    STATUS_NAMES,
    as_utc,
    name_from_field_key,
    optional_utc,
    status_name,
)
from fanfinity.pipeline.ingest import IngestBatcher, WriteOutcome, event_document
from fanfinity.pipeline.reads import MatchMetricsReader
from fanfinity.pipeline.streams import StreamHub
from fanfinity.schemas import (
    MAX_BATCH_BYTES,
    MAX_EVENT_BYTES,
    BatchItemResult,
    BatchResult,
    EventAccepted,
    FieldError,
    HealthStatus,
    InvalidFields,
    ItemOutcome,
    MatchEventIn,
    MatchList,
    MatchListItem,
    MatchMetrics,
    StoredEvent,
    ValidEvent,
    convert_event,
    decode_batch,
    decode_event,
    is_identifier,
)
from fanfinity.storage.engine import Engine

JSON = MediaType.JSON
PRODUCER_SECURITY: list[dict[str, list[str]]] = [{"apiKey": []}]
# Reads are open unless FANFINITY_READ_API_KEYS is set: the key is optional in the document.
READER_SECURITY: list[dict[str, list[str]]] = [{}, {"apiKey": []}]
EXAMPLE_EVENT = {
    "eventId": "3f0b8a52-6c1e-4d7e-9d0a-2b51f1f0c001",
    "matchId": "alhilal-vs-alnassr-2026-11-25",
    "eventType": "goal",
    "timestamp": "2026-11-25T19:42:07Z",
    "teamId": "al-hilal",
    "playerId": "player-9",
    "metadata": {"minute": 42, "assist": "player-7"},
}


@dataclass(slots=True)
class Services:
    """What the handlers need, built by the lifespan and kept in `app.state.services`."""

    settings: Settings
    engine: Engine
    batcher: IngestBatcher
    reader: MatchMetricsReader
    aggregator: Aggregator | None
    streams: StreamHub
    limiter: TokenBucketLimiter | None = None
    accepting: bool = True


def services_of(request: Request[Any, Any, Any]) -> Services:
    services: Services = request.app.state.services
    return services


def readable_match(request: Request[Any, Any, Any], match_id: str) -> Services:
    """The read-key check and match-id check every per-match read starts with."""
    services = services_of(request)
    require_read_key(request, services.settings)
    if not is_identifier(match_id):
        raise MatchNotFound(f"{match_id!r} is not a valid match id")
    return services


def check_rate(request: Request[Any, Any, Any], services: Services, cost: int) -> dict[str, str]:
    """Charge `cost` events to the caller's bucket; raises `RateLimited`, else returns headers."""
    if services.limiter is None:
        return {}
    # Producers are keyed by their (already verified) API key; with auth off, by address.
    key = request.headers.get("x-api-key") if services.settings.api_keys else None
    key = key or (request.client.host if request.client else "-")
    decision = services.limiter.take(key, cost)
    if not decision.allowed:
        metrics.INGEST_REJECTED.labels("rate_limited").inc(cost)
        raise RateLimited(
            f"this API key may send {decision.limit} events at once and is refilled continuously; "
            f"retry in {decision.retry_after_s}s",
            decision.headers(),
            decision.retry_after_s,
        )
    return decision.headers()


def require_json(request: Request[Any, Any, Any]) -> None:
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType(
            f"send the body as application/json, not {media_type or 'no content type'}"
        )


async def read_body(request: Request[Any, Any, Any]) -> bytes:
    """The raw body; a client that hangs up mid-body is its own (4xx) outcome, not a 500."""
    try:
        return await request.body()
    except InternalServerException as exc:
        raise ClientDisconnected(str(exc.detail)) from None


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
        security=PRODUCER_SECURITY,
        operation_class=operation_with_json_body(
            MatchEventIn, EXAMPLE_EVENT, "One match event (at most 32 KiB)."
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
    async def create_event(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        received = time.perf_counter()
        services = services_of(request)
        require_producer_key(request, services.settings)
        rate_headers = check_rate(request, services, 1)
        require_json(request)
        now = datetime.now(UTC)
        event = decode_event(await read_body(request), now)
        outcome = await services.batcher.submit(event_document(event, now), received)
        if outcome is WriteOutcome.CONFLICT:
            raise DuplicateEventConflict(event.event_id)
        if outcome is WriteOutcome.FAILED:
            raise StoreUnavailable("the event store rejected the write", 1, event.event_id)
        headers = {"Location": f"/api/events/{event.event_id}", **rate_headers}
        if outcome is WriteOutcome.DUPLICATE:
            headers["Idempotent-Replayed"] = "true"
        return Response(
            content=msgspec.json.encode(EventAccepted(event.event_id)),
            status_code=202,
            media_type=JSON,
            headers=headers,
        )

    @post(
        "/batch",
        status_code=200,
        request_max_body_size=MAX_BATCH_BYTES,
        security=PRODUCER_SECURITY,
        operation_class=operation_with_json_body(
            list[MatchEventIn], [EXAMPLE_EVENT], "1 to 500 events (at most 512 KiB)."
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
        require_producer_key(request, services.settings)
        require_json(request)
        now = datetime.now(UTC)
        items = decode_batch(await read_body(request))
        rate_headers = check_rate(request, services, len(items))
        results: list[BatchItemResult | None] = [None] * len(items)
        waiting: list[tuple[int, ValidEvent, asyncio.Future[WriteOutcome]]] = []
        unavailable: StoreUnavailable | None = None
        for index, item in enumerate(items):
            try:
                event = convert_event(item, now, f"$[{index}]")
            except InvalidFields as exc:
                results[index] = BatchItemResult(index, ItemOutcome.INVALID, errors=exc.errors)
                continue
            try:
                future = services.batcher.submit_nowait(event_document(event, now), received)
            except StoreUnavailable as exc:
                unavailable = exc
                results[index] = BatchItemResult(index, ItemOutcome.UNAVAILABLE, event.event_id)
                continue
            waiting.append((index, event, future))
        outcomes = await asyncio.gather(
            *(future for _, _, future in waiting), return_exceptions=True
        )
        for (index, event, _), outcome in zip(waiting, outcomes, strict=True):
            if isinstance(outcome, StoreUnavailable):
                unavailable = outcome
            results[index] = BatchItemResult(index, _item_outcome(outcome), event.event_id)
        final = [result for result in results if result is not None]
        stored = [r for r in final if r.status in (ItemOutcome.ACCEPTED, ItemOutcome.DUPLICATE)]
        if unavailable is not None and not stored:
            raise StoreUnavailable("no event of the batch could be stored; retry the batch", 1)
        body = BatchResult(
            accepted=sum(1 for r in final if r.status is ItemOutcome.ACCEPTED),
            duplicates=sum(1 for r in final if r.status is ItemOutcome.DUPLICATE),
            rejected=len(final) - len(stored),
            items=final,
        )
        headers = {**rate_headers, "Retry-After": "1"} if unavailable is not None else rate_headers
        return Response(
            content=msgspec.json.encode(body), status_code=200, media_type=JSON, headers=headers
        )

    @get(
        "/{event_id:str}",
        summary="Read one stored event",
        security=READER_SECURITY,
        responses={400: _problem("Invalid path"), 404: _problem("No such event")},
    )
    async def get_event(
        self, request: Request[Any, Any, Any], event_id: FromPath[str]
    ) -> StoredEvent:
        services = services_of(request)
        require_read_key(request, services.settings)
        if not _is_uuid(event_id):
            raise EventNotFound(f"no event with id {event_id!r} (event ids are UUIDs)")
        document = await services.engine.events.get(str(uuid.UUID(event_id)))
        if document is None:
            raise EventNotFound(f"no event with id {event_id!r}")
        return StoredEvent(
            event_id=document["_id"],
            match_id=document["matchId"],
            event_type=document["eventType"],
            timestamp=as_utc(document["timestamp"]),
            team_id=document["teamId"],
            received_at=as_utc(document["receivedAt"]),
            player_id=document.get("playerId"),
            metadata=document.get("metadata"),
        )


def _item_outcome(outcome: WriteOutcome | BaseException) -> ItemOutcome:
    if isinstance(outcome, BaseException):
        return ItemOutcome.UNAVAILABLE
    return {
        WriteOutcome.ACCEPTED: ItemOutcome.ACCEPTED,
        WriteOutcome.DUPLICATE: ItemOutcome.DUPLICATE,
        WriteOutcome.CONFLICT: ItemOutcome.CONFLICT,
        WriteOutcome.FAILED: ItemOutcome.UNAVAILABLE,
    }[outcome]


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class MatchController(Controller):
    path = "/api/matches"
    tags = ["matches"]

    @get(
        "/{match_id:str}/metrics",
        summary="Engagement metrics of one match",
        security=READER_SECURITY,
        description=(
            "Served from the match's summary document through a per-replica cache of "
            "FANFINITY_METRICS_CACHE_MS; `asOf` says when the summary last changed, `generatedAt` "
            "when this body was computed. Percentiles come from log-scale buckets and are within "
            "9.1% of the exact value."
        ),
        responses={
            200: ResponseSpec(data_container=MatchMetrics),
            400: _problem("Invalid path"),
            404: _problem("No events counted for this match"),
        },
    )
    async def get_metrics(
        self, request: Request[Any, Any, Any], match_id: FromPath[str]
    ) -> Response[bytes]:
        services = readable_match(request, match_id)
        body = await services.reader.encoded(match_id)
        return Response(content=body, media_type=JSON, headers={"Cache-Control": "no-cache"})

    @get(
        "/{match_id:str}/metrics/stream",
        summary="Live metrics of one match as Server-Sent Events",
        security=READER_SECURITY,
        description=(
            "Sends the current metrics at once (event `metrics`, same body as the metrics "
            "endpoint), then a new `metrics` event whenever they change, at most every "
            "FANFINITY_STREAM_INTERVAL_MS, with keep-alive comments when idle. After full time it "
            "sends the final metrics and an `end` event and closes. Clients that do not read are "
            "dropped. The cost is one summary read per match per interval, whatever the number of "
            "subscribers."
        ),
        responses={
            200: ResponseSpec(
                data_container=str, media_type="text/event-stream", description="SSE stream"
            ),
            404: _problem("No events counted for this match"),
            503: _problem("This replica serves its maximum number of streams"),
        },
    )
    async def stream_metrics(
        self, request: Request[Any, Any, Any], match_id: FromPath[str]
    ) -> Stream:
        services = readable_match(request, match_id)
        frames = await services.streams.open(match_id)
        return Stream(
            frames,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @get(
        "/",
        summary="List matches, most recently updated first",
        security=READER_SECURITY,
        responses={400: _problem("Invalid query parameter (status, limit, offset)")},
    )
    async def list_matches(
        self,
        request: Request[Any, Any, Any],
        status: Annotated[
            str | None,
            Parameter(description="scheduled, live or ended", pattern="^(scheduled|live|ended)$"),
        ] = None,
        limit: Annotated[int, Parameter(ge=1, le=100)] = 20,
        offset: Annotated[int, Parameter(ge=0, le=100_000)] = 0,
    ) -> MatchList:
        services = services_of(request)
        require_read_key(request, services.settings)
        rank = STATUS_NAMES.index(status) if status else None
        summaries, total = await services.engine.summaries.list(rank, limit, offset)
        items = [
            MatchListItem(
                match_id=summary["_id"],
                status=status_name(int(summary.get("statusRank", 0))),
                total_events=int(summary.get("total", 0)),
                teams=sorted(name_from_field_key(key) for key in summary.get("byTeam") or {}),
                first_event_at=optional_utc(summary.get("firstEventAt")),
                last_event_at=optional_utc(summary.get("lastEventAt")),
                as_of=optional_utc(summary.get("updatedAt")),
            )
            for summary in summaries
        ]
        return MatchList(items=items, total=total, limit=limit, offset=offset)


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


__all__ = ["EventController", "FieldError", "HealthController", "MatchController", "Services"]
