"""Event builders shared by every test tier: a body as a producer posts it, an event as stored.

`stored_event` goes through the service's own `event_document`, so a test's stored events have
exactly the form ingest writes (the form the fold, the repositories and the aggregator read).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fanfinity.schemas import EventType, ValidEvent
from fanfinity.storage.models import event_document

KICK_OFF = datetime(2025, 5, 10, 19, 0, tzinfo=UTC)
MATCH_ID = "alhilal-vs-alnassr"
TEAM_ID = "al-hilal"


def event_body(**fields: Any) -> dict[str, Any]:
    """A valid event body (a goal with a fresh eventId); `fields` replace or add members by
    their wire names (`matchId=...`, `timestamp=...`)."""
    body: dict[str, Any] = {
        "eventId": str(uuid.uuid4()),
        "matchId": MATCH_ID,
        "eventType": "goal",
        "timestamp": "2025-05-10T19:42:07+03:00",
        "teamId": TEAM_ID,
        "playerId": "player-9",
        "metadata": {"minute": 42},
    }
    body.update(fields)
    return body


def stored_event(
    event_id: str,
    minute: int = 0,
    event_type: str = "goal",
    *,
    match_id: str = MATCH_ID,
    team_id: str = TEAM_ID,
    timestamp: datetime | None = None,
    received_at: datetime | None = None,
    player_id: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An event as the `events` collection holds it: at `minute` after kick-off unless a
    `timestamp` is given, received at its own time unless `received_at` says otherwise."""
    at = timestamp if timestamp is not None else KICK_OFF + timedelta(minutes=minute)
    event = ValidEvent(
        event_id=event_id,
        match_id=match_id,
        event_type=EventType(event_type),
        timestamp=at,
        team_id=team_id,
        player_id=player_id,
        metadata=metadata,
        fingerprint=f"fp-{event_id}",
    )
    return event_document(event, received_at or at)
