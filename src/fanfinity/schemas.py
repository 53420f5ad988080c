"""HTTP bodies as msgspec Structs: the single source of truth for validation and the OpenAPI.

Request bodies are decoded from raw bytes here (not by the framework) so that malformed JSON (400),
invalid fields (422) and per-item validation in a batch are told apart precisely and cheaply.
"""

from __future__ import annotations

import enum
import hashlib
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec

IDENTIFIER_PATTERN = r"^[A-Za-z0-9\-_.:]{1,64}$"
MAX_EVENT_BYTES = 32 * 1024
MAX_BATCH_BYTES = 512 * 1024
MAX_BATCH_EVENTS = 500
MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 8
MAX_FUTURE_SKEW = timedelta(hours=24)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
EARLIEST_TIMESTAMP = datetime(2000, 1, 1, tzinfo=UTC)

Identifier = Annotated[
    str,
    msgspec.Meta(
        pattern=IDENTIFIER_PATTERN,
        description="1-64 characters: letters, digits and - _ . :",
        examples=["alhilal-vs-alnassr-2026-11-25"],
    ),
]
_IDENTIFIER_RE = re.compile(IDENTIFIER_PATTERN)


class EventType(enum.StrEnum):
    """What happened on the pitch; unknown values are rejected with 422."""

    MATCH_START = "match_start"
    MATCH_END = "match_end"
    GOAL = "goal"
    OWN_GOAL = "own_goal"
    PENALTY_GOAL = "penalty_goal"
    PENALTY_MISSED = "penalty_missed"
    YELLOW_CARD = "yellow_card"
    RED_CARD = "red_card"
    SUBSTITUTION = "substitution"
    CORNER = "corner"
    FREE_KICK = "free_kick"
    OFFSIDE = "offside"
    FOUL = "foul"
    VAR_REVIEW = "var_review"
    INJURY = "injury"


class MatchEventIn(msgspec.Struct, forbid_unknown_fields=True, rename="camel", kw_only=True):
    """One match event as a producer posts it."""

    match_id: Identifier
    event_type: EventType
    timestamp: Annotated[
        datetime,
        msgspec.Meta(
            tz=True,
            description="ISO 8601 with a zone offset or Z; stored in UTC",
            examples=["2026-11-25T19:42:07Z"],
        ),
    ]
    team_id: Identifier
    event_id: Annotated[
        uuid.UUID | None,
        msgspec.Meta(description="Idempotency key; the server makes one when absent"),
    ] = None
    player_id: Identifier | None = None
    metadata: Annotated[
        dict[str, Any] | None,
        msgspec.Meta(description="Free-form JSON object, at most 16 KiB and 8 levels deep"),
    ] = None


class EventAccepted(msgspec.Struct, rename="camel"):
    event_id: str
    status: str = "accepted"


class StoredEvent(msgspec.Struct, rename="camel", omit_defaults=True):
    """An event as stored, with the server's receipt time."""

    event_id: str
    match_id: str
    event_type: EventType
    timestamp: datetime
    team_id: str
    received_at: datetime
    player_id: str | None = None
    metadata: dict[str, Any] | None = None


class ItemOutcome(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    INVALID = "invalid"
    UNAVAILABLE = "unavailable"


class FieldError(msgspec.Struct):
    """One reason a field was refused; `field` is a JSON path such as `$.timestamp`."""

    field: str
    message: str


class BatchItemResult(msgspec.Struct, rename="camel", omit_defaults=True):
    index: int
    status: ItemOutcome
    event_id: str | None = None
    errors: list[FieldError] | None = None


class BatchResult(msgspec.Struct, rename="camel"):
    """Per-item outcomes, in request order. Accepted and duplicate items are durably stored."""

    accepted: int
    duplicates: int
    rejected: int
    items: list[BatchItemResult]


class MalformedBody(Exception):
    """The body is not JSON at all (400), as opposed to JSON with invalid fields (422)."""


class InvalidFields(Exception):
    """JSON that does not describe a valid event (422); carries every reason found."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{error.field}: {error.message}" for error in errors))
        self.errors = errors


class ValidEvent(msgspec.Struct, frozen=True):
    """A validated event with its identity settled and its payload fingerprinted."""

    event_id: str
    match_id: str
    event_type: EventType
    timestamp: datetime
    team_id: str
    player_id: str | None
    metadata: dict[str, Any] | None
    fingerprint: str


def decode_event(body: bytes, now: datetime) -> ValidEvent:
    """Parse one event body; raises `MalformedBody` or `InvalidFields`."""
    try:
        raw = msgspec.json.decode(body, type=MatchEventIn)
    except msgspec.ValidationError as exc:
        raise InvalidFields([_field_error(exc, "$")]) from None
    except msgspec.DecodeError as exc:
        raise MalformedBody(_decode_reason(exc, body)) from None
    except RecursionError:
        raise InvalidFields([FieldError("$", "nested too deeply")]) from None
    return _check_event(raw, now, "$")


class _WrappedBatch(msgspec.Struct, forbid_unknown_fields=True):
    events: list[msgspec.Raw]


def decode_batch(body: bytes) -> list[msgspec.Raw]:
    """Split a batch body into its raw items; each is then decoded and validated on its own,
    exactly as a single event would be."""
    try:
        parsed = msgspec.json.decode(body, type=list[msgspec.Raw] | _WrappedBatch)
    except msgspec.ValidationError:
        raise InvalidFields(
            [FieldError("$", 'expected a JSON array of events or {"events": [...]}')]
        ) from None
    except msgspec.DecodeError as exc:
        raise MalformedBody(_decode_reason(exc, body)) from None
    except RecursionError:
        raise InvalidFields([FieldError("$", "nested too deeply")]) from None
    items = parsed.events if isinstance(parsed, _WrappedBatch) else parsed
    if not items:
        raise InvalidFields([FieldError("$", "the batch is empty")])
    if len(items) > MAX_BATCH_EVENTS:
        raise InvalidFields(
            [FieldError("$", f"at most {MAX_BATCH_EVENTS} events per batch, got {len(items)}")]
        )
    return items


def convert_event(item: msgspec.Raw, now: datetime, path: str) -> ValidEvent:
    """Validate one batch item with the single-event rules; raises `InvalidFields`."""
    try:
        raw = msgspec.json.decode(item, type=MatchEventIn)
    except msgspec.ValidationError as exc:
        raise InvalidFields([_field_error(exc, path)]) from None
    except RecursionError:
        raise InvalidFields([FieldError(path, "nested too deeply")]) from None
    return _check_event(raw, now, path)


def _check_event(raw: MatchEventIn, now: datetime, path: str) -> ValidEvent:
    errors: list[FieldError] = []
    timestamp = raw.timestamp.astimezone(UTC)
    if timestamp > now + MAX_FUTURE_SKEW:
        errors.append(FieldError(f"{path}.timestamp", "more than 24 hours in the future"))
    elif timestamp < EARLIEST_TIMESTAMP:
        errors.append(FieldError(f"{path}.timestamp", "before 2000-01-01T00:00:00Z"))
    if raw.metadata is not None:
        errors.extend(_check_metadata(raw.metadata, f"{path}.metadata"))
    if errors:
        raise InvalidFields(errors)
    event_id = str(raw.event_id) if raw.event_id is not None else str(uuid.uuid4())
    return ValidEvent(
        event_id=event_id,
        match_id=raw.match_id,
        event_type=raw.event_type,
        timestamp=timestamp,
        team_id=raw.team_id,
        player_id=raw.player_id,
        metadata=raw.metadata,
        fingerprint=payload_fingerprint(raw, timestamp),
    )


def _check_metadata(metadata: dict[str, Any], path: str) -> list[FieldError]:
    """Size, depth, and what MongoDB can store: keys without `$`, `.` or NUL; 64-bit integers."""
    size = len(msgspec.json.encode(metadata))
    if size > MAX_METADATA_BYTES:
        return [FieldError(path, f"at most {MAX_METADATA_BYTES} bytes serialised, got {size}")]
    stack: list[tuple[Any, int]] = [(metadata, 1)]
    while stack:  # iterative: a deeply nested body must not exhaust the interpreter's stack
        value, depth = stack.pop()
        if isinstance(value, dict | list) and depth > MAX_METADATA_DEPTH:
            return [FieldError(path, f"at most {MAX_METADATA_DEPTH} levels deep")]
        if isinstance(value, dict):
            for key, item in value.items():
                if key.startswith("$") or "." in key or "\x00" in key:
                    return [
                        FieldError(path, f"keys may not start with $ or hold '.' or NUL: {key!r}")
                    ]
                stack.append((item, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif (
            isinstance(value, int)
            and not isinstance(value, bool)
            and not (INT64_MIN <= value <= INT64_MAX)
        ):
            return [FieldError(path, "integers must fit in 64 bits (MongoDB's widest integer)")]
    return []


def payload_fingerprint(raw: MatchEventIn, timestamp: datetime) -> str:
    """Hash of everything the producer said except the eventId: equal payloads, equal hashes."""
    canonical = msgspec.json.encode(
        {
            "matchId": raw.match_id,
            "eventType": raw.event_type,
            "timestamp": timestamp.isoformat(),
            "teamId": raw.team_id,
            "playerId": raw.player_id,
            "metadata": raw.metadata,
        },
        order="sorted",
    )
    return hashlib.sha256(canonical).hexdigest()


def is_identifier(value: str) -> bool:
    """True when `value` is a valid matchId/teamId (used for path parameters)."""
    return _IDENTIFIER_RE.fullmatch(value) is not None


_NAMED_FIELD = re.compile(r"^Object (?:contains unknown|missing required) field `([^`]+)`$")


def _field_error(exc: msgspec.ValidationError, base: str) -> FieldError:
    """Map msgspec's "message - at `$.path`" to a FieldError whose path names the field itself."""
    text = str(exc)
    message, _, location = text.rpartition(" - at `")
    if not message:
        message, location = text, "$`"
    path = base + location.rstrip("`")[1:]
    named = _NAMED_FIELD.match(message)
    if named:  # msgspec reports these at the enclosing object; point at the field
        path = f"{path}.{named.group(1)}"
    return FieldError(path, message)


def _decode_reason(exc: msgspec.DecodeError, body: bytes) -> str:
    if not body.strip():
        return "the request body is empty"
    return f"the body is not valid JSON: {exc}"


MatchMinute = Annotated[
    int | None,
    msgspec.Meta(
        description=(
            "Football's minute since kick-off: an event 42:05 after kick-off is in the 43rd. A "
            "wall-clock minute is labelled with the match minute holding most of it (exact when "
            "the kick-off is on a whole minute). The clock runs on through half-time (there is no "
            "half-time event). Null before the kick-off and while no match_start is counted."
        ),
        examples=[43],
    ),
]


class MinuteEvents(msgspec.Struct, rename="camel"):
    """Events of one wall-clock minute (UTC, by the events' own timestamps)."""

    minute: Annotated[datetime, msgspec.Meta(examples=["2025-05-10T18:42:00Z"])]
    match_minute: MatchMinute
    events: int


class EngagementWindow(msgspec.Struct, rename="camel"):
    """The busiest contiguous 5-minute window; `end` is exclusive."""

    start: datetime
    end: datetime
    match_minute: MatchMinute
    last_match_minute: Annotated[
        int | None, msgspec.Meta(description="Match minute of the window's last minute")
    ]
    events: int


class SummaryOverflow(msgspec.Struct):
    """Events counted outside the bounded maps of the summary (they are in totalEvents and
    eventsByType). A match keeps at most FANFINITY_MAX_TEAMS_PER_MATCH teams (default 8) and
    FANFINITY_MAX_MINUTES_PER_MATCH minutes (default 720), admitted first come by receipt time."""

    teams: Annotated[
        int, msgspec.Meta(description="Events of teams beyond the bound (not in eventsByTeam)")
    ]
    minutes: Annotated[
        int, msgspec.Meta(description="Events of minutes beyond the bound (not in the series)")
    ]


class LatencyPercentiles(msgspec.Struct):
    """Milliseconds from log-scale buckets: each value is within 9.1% of the exact percentile."""

    p50: float | None
    p95: float | None
    p99: float | None
    samples: int


class MatchMetrics(msgspec.Struct, rename="camel"):
    """A match's engagement metrics, read from its summary document."""

    match_id: str
    status: Annotated[str, msgspec.Meta(examples=["live"], description="scheduled, live or ended")]
    kickoff_at: Annotated[
        datetime | None,
        msgspec.Meta(
            description="Timestamp of the match_start event (the earliest, if several); null "
            "until one is counted",
            examples=["2025-05-10T18:00:00Z"],
        ),
    ]
    score: Annotated[
        dict[str, int],
        msgspec.Meta(
            description=(
                "Goals per team. goal and penalty_goal count for their teamId. An own_goal's "
                "teamId names the team whose player put the ball into his own net (the team that "
                "conceded it); it counts for the other side. The sides are the two teams with "
                "the most events; an own goal by another team, or before the other side has any "
                "event, counts for no one. Both sides are listed, with 0 before they score."
            ),
            examples=[{"al-hilal": 2, "al-nassr": 1}],
        ),
    ]
    total_events: int
    events_by_type: dict[str, int]
    events_by_team: dict[str, int]
    first_event_at: datetime | None
    last_event_at: datetime | None
    as_of: datetime | None
    generated_at: datetime
    events_per_minute: list[MinuteEvents]
    peak_engagement_periods: list[MinuteEvents]
    busiest_window: EngagementWindow | None
    overflow: SummaryOverflow
    response_time_ms: LatencyPercentiles
    processing_lag_ms: LatencyPercentiles


class MatchListItem(msgspec.Struct, rename="camel"):
    match_id: str
    status: str
    total_events: int
    teams: list[str]
    first_event_at: datetime | None
    last_event_at: datetime | None
    as_of: datetime | None


class MatchList(msgspec.Struct):
    items: list[MatchListItem]
    total: int
    limit: int
    offset: int


class HealthStatus(msgspec.Struct):
    status: str
    checks: dict[str, str]
