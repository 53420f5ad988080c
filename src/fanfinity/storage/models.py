"""Beanie documents: they own collection names, indexes and the time-series settings.

`init_beanie` creates the indexes (and, on MongoDB, the time-series collection) once at start-up.
The hot paths write through the raw Motor collections instead (one unordered ``insert_many`` per
batch, one ``$inc`` per match): per-document ODM validation there would cost more than the
request itself, and Beanie's bulk writer cannot do unordered bulks. What those raw writes store
is built here, next to the model it must match (`event_document` and `Event`; a unit test checks
that their fields agree).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from beanie import Document, Granularity, TimeSeriesConfig
from pydantic import Field
from pymongo import ASCENDING, DESCENDING, IndexModel

from fanfinity.schemas import ValidEvent

EVENTS = "events"
MATCH_SUMMARIES = "match_summaries"
CHECKPOINTS = "checkpoints"
MATCH_EVENTS = "match_events"


class Event(Document):
    """A stored match event; ``_id`` is the eventId, which makes retries idempotent."""

    id: str = Field(alias="_id")  # type: ignore[assignment]
    matchId: str  # noqa: N815 - stored field names are the API's camelCase
    eventType: str  # noqa: N815
    timestamp: datetime
    teamId: str  # noqa: N815
    playerId: str | None = None  # noqa: N815
    metadata: dict[str, Any] | None = None
    receivedAt: datetime  # noqa: N815
    fingerprint: str

    class Settings:
        name = EVENTS
        indexes: ClassVar[list[IndexModel]] = [
            IndexModel([("matchId", ASCENDING), ("timestamp", ASCENDING)], name="match_time"),
            IndexModel([("matchId", ASCENDING), ("eventType", ASCENDING)], name="match_type"),
            IndexModel([("receivedAt", ASCENDING)], name="received_at"),
        ]


def event_document(event: ValidEvent, received_at: datetime) -> dict[str, Any]:
    """The stored form of an `Event`: ``_id`` is the eventId, the fingerprint settles retries;
    optional fields are left out rather than stored as null."""
    document: dict[str, Any] = {
        "_id": event.event_id,
        "matchId": event.match_id,
        "eventType": str(event.event_type),
        "timestamp": event.timestamp,
        "teamId": event.team_id,
        "receivedAt": received_at,
        "fingerprint": event.fingerprint,
    }
    if event.player_id is not None:
        document["playerId"] = event.player_id
    if event.metadata is not None:
        document["metadata"] = event.metadata
    return document


class MatchSummary(Document):
    """The per-match read model, changed only by ``$inc``/``$min``/``$max``/``$set``."""

    id: str = Field(alias="_id")  # type: ignore[assignment]
    total: int = 0
    byType: dict[str, int] = Field(default_factory=dict)  # noqa: N815
    byTeam: dict[str, int] = Field(default_factory=dict)  # noqa: N815
    perMinute: dict[str, int] = Field(default_factory=dict)  # noqa: N815
    firstEventAt: datetime | None = None  # noqa: N815
    lastEventAt: datetime | None = None  # noqa: N815
    statusRank: int = 0  # noqa: N815
    ingestLatency: dict[str, int] = Field(default_factory=dict)  # noqa: N815
    processingLag: dict[str, int] = Field(default_factory=dict)  # noqa: N815
    updatedAt: datetime | None = None  # noqa: N815

    class Settings:
        name = MATCH_SUMMARIES
        indexes: ClassVar[list[IndexModel]] = [
            IndexModel([("statusRank", ASCENDING), ("updatedAt", DESCENDING)], name="status"),
            IndexModel([("updatedAt", DESCENDING)], name="updated_at"),
            # The match list counts {total > 0} (optionally of one status) on every uncached page:
            # these let MongoDB count from the index instead of scanning every summary.
            IndexModel([("total", ASCENDING)], name="total"),
            IndexModel([("statusRank", ASCENDING), ("total", ASCENDING)], name="status_total"),
        ]


class Checkpoint(Document):
    """Where the aggregator is in the change feed; ``generation`` guards against a second copy."""

    id: str = Field(alias="_id")  # type: ignore[assignment]
    generation: int
    position: dict[str, Any]
    updatedAt: datetime  # noqa: N815

    class Settings:
        name = CHECKPOINTS


class MatchEvent(Document):
    """The data team's time-series copy of every counted event (not used by the service)."""

    timestamp: datetime
    meta: dict[str, str]
    eventId: str  # noqa: N815
    playerId: str | None = None  # noqa: N815
    metadata: dict[str, Any] | None = None
    receivedAt: datetime  # noqa: N815

    class Settings:
        name = MATCH_EVENTS
        timeseries = TimeSeriesConfig(
            time_field="timestamp",
            meta_field="meta",
            granularity=Granularity.seconds,
        )
        indexes: ClassVar[list[IndexModel]] = [
            IndexModel([("meta.matchId", ASCENDING), ("timestamp", ASCENDING)], name="match_time"),
            IndexModel([("eventId", ASCENDING)], name="event_id"),
        ]


SERVICE_DOCUMENTS: list[type[Document]] = [Event, MatchSummary, Checkpoint]
