"""The shapes an event takes, as msgspec Structs: the single source of truth for the OpenAPI.

Wire bodies in (`MatchEventIn`) and out (`StoredEvent`, `BatchResult`, `MatchMetrics`...), and
`ValidEvent`, the validated event handed from the API to the pipeline. They sit at the top of the
package because the API decodes and encodes them while the pipeline and storage build them; the
rules that turn bytes into a `ValidEvent` live in `fanfinity.api.validation`.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec

# \A...\Z: a full match in Python (`$` would accept a trailing newline: "m\n"); the OpenAPI
# document states it as ECMA-262's ^...$, which means the same there (see api/openapi.py).
# Not "." or "..": clients normalise those path segments away, so such a match could never be
# read back (`$` in the lookahead means the same in both dialects here: no newline can match).
IDENTIFIER_PATTERN = r"\A(?!\.{1,2}$)[A-Za-z0-9\-_.:]{1,64}\Z"
MAX_IDENTIFIER_LENGTH = 64
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
        min_length=1,
        max_length=MAX_IDENTIFIER_LENGTH,
        description='1-64 characters: letters, digits and - _ . : (not "." or "..")',
        examples=["alhilal-vs-alnassr-2026-11-25"],
    ),
]


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
