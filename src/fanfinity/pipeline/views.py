"""Responses built from stored documents (pure): a stored event, a page of the match list.

The per-match metrics, which need the fold's maths and a cache, are `reads.match_metrics`; these
two are plain mappings, kept out of the handlers so that they only read, hand over and answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fanfinity.pipeline.fold import as_utc, name_from_field_key, optional_utc, status_name
from fanfinity.schemas import MatchList, MatchListItem, StoredEvent


def stored_event(document: Mapping[str, Any]) -> StoredEvent:
    """An `events` document as the API shows it."""
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


def match_list_item(summary: Mapping[str, Any]) -> MatchListItem:
    """One `match_summaries` document as a line of the match list."""
    return MatchListItem(
        match_id=summary["_id"],
        status=status_name(int(summary.get("statusRank", 0))),
        total_events=int(summary.get("total", 0)),
        teams=sorted(name_from_field_key(key) for key in summary.get("byTeam") or {}),
        first_event_at=optional_utc(summary.get("firstEventAt")),
        last_event_at=optional_utc(summary.get("lastEventAt")),
        as_of=optional_utc(summary.get("updatedAt")),
    )


def match_list(
    summaries: Sequence[Mapping[str, Any]], total: int, limit: int, offset: int
) -> MatchList:
    """A page of the match list."""
    return MatchList(
        items=[match_list_item(summary) for summary in summaries],
        total=total,
        limit=limit,
        offset=offset,
    )
