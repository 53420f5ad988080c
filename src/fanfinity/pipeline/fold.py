"""Pure functions of the read model: events -> per-match updates, buckets -> percentiles, peaks.

No I/O here. The fold turns a batch of stored events into one MongoDB update per match made only of
``$inc``, ``$min`` and ``$max``, so applying batches in any grouping gives the same summary and no
update ever reads what it writes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

# Latency histograms: bucket i holds values in (FLOOR_MS * GROWTH**(i-1), FLOOR_MS * GROWTH**i].
# Reporting the geometric middle of a bucket is within sqrt(GROWTH) - 1 (about 9.05%) of any value
# in it, which is the error bound of every percentile the service reports.
LATENCY_FLOOR_MS = 0.1
LATENCY_GROWTH = 2**0.25
LATENCY_MAX_BUCKET = 100
LATENCY_RELATIVE_ERROR = math.sqrt(LATENCY_GROWTH) - 1

STATUS_SCHEDULED, STATUS_LIVE, STATUS_ENDED = 0, 1, 2
STATUS_NAMES = ("scheduled", "live", "ended")
STATUS_BY_EVENT_TYPE = {"match_start": STATUS_LIVE, "match_end": STATUS_ENDED}
PEAK_MINUTES = 5
PEAK_WINDOW_MINUTES = 5


def latency_bucket(milliseconds: float) -> int:
    """Index of the log-scale bucket holding a latency (clamped to the histogram's range)."""
    if milliseconds <= LATENCY_FLOOR_MS:
        return 0
    index = math.ceil(math.log(milliseconds / LATENCY_FLOOR_MS, LATENCY_GROWTH) - 1e-9)
    return min(index, LATENCY_MAX_BUCKET)


def bucket_key(index: int) -> str:
    """Field name of a bucket inside a summary's histogram object."""
    return f"b{index}"


def bucket_value_ms(index: int) -> float:
    """The value reported for a bucket: the geometric middle of its bounds."""
    if index == 0:
        return LATENCY_FLOOR_MS
    return float(LATENCY_FLOOR_MS * LATENCY_GROWTH ** (index - 0.5))


def field_key(name: str) -> str:
    """A map key safe inside a MongoDB update path: identifiers may hold '.', paths may not.

    Identifiers never contain '%', so the escape cannot collide with a real name.
    """
    return name.replace(".", "%2E")


def name_from_field_key(key: str) -> str:
    return key.replace("%2E", ".")


def minute_key(moment: datetime) -> str:
    """The per-minute series key of a moment: its UTC minute, as ``YYYY-MM-DDTHH:MM``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")


def minute_from_key(key: str) -> datetime:
    return datetime.strptime(key, "%Y-%m-%dT%H:%M").replace(tzinfo=UTC)


@dataclass(slots=True)
class SummaryIncrement:
    """What one batch adds to one match's summary."""

    match_id: str
    total: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    by_team: Counter[str] = field(default_factory=Counter)
    per_minute: Counter[str] = field(default_factory=Counter)
    processing_lag: Counter[str] = field(default_factory=Counter)
    first_event_at: datetime | None = None
    last_event_at: datetime | None = None
    status_rank: int = STATUS_SCHEDULED

    def add(self, event: Mapping[str, Any], applied_at: datetime) -> None:
        timestamp = as_utc(event["timestamp"])
        event_type = str(event["eventType"])
        self.total += 1
        self.by_type[event_type] += 1
        self.by_team[field_key(str(event["teamId"]))] += 1
        self.per_minute[minute_key(timestamp)] += 1
        lag_ms = (applied_at - as_utc(event["receivedAt"])).total_seconds() * 1000
        self.processing_lag[bucket_key(latency_bucket(max(lag_ms, 0.0)))] += 1
        if self.first_event_at is None or timestamp < self.first_event_at:
            self.first_event_at = timestamp
        if self.last_event_at is None or timestamp > self.last_event_at:
            self.last_event_at = timestamp
        self.status_rank = max(self.status_rank, STATUS_BY_EVENT_TYPE.get(event_type, 0))

    def as_update(self, applied_at: datetime) -> dict[str, Any]:
        """The MongoDB update document: commutative operators only, safe to apply in any order."""
        increments: dict[str, int] = {"total": self.total}
        for prefix, counter in (
            ("byType", self.by_type),
            ("byTeam", self.by_team),
            ("perMinute", self.per_minute),
            ("processingLag", self.processing_lag),
        ):
            increments.update({f"{prefix}.{key}": count for key, count in counter.items()})
        return {
            "$inc": increments,
            "$min": {"firstEventAt": self.first_event_at},
            "$max": {
                "lastEventAt": self.last_event_at,
                "statusRank": self.status_rank,
                "updatedAt": applied_at,
            },
        }


def fold_events(
    events: Iterable[Mapping[str, Any]], applied_at: datetime
) -> dict[str, SummaryIncrement]:
    """Fold a batch of stored events into one increment per match."""
    increments: dict[str, SummaryIncrement] = {}
    for event in events:
        match_id = str(event["matchId"])
        increment = increments.get(match_id)
        if increment is None:
            increment = increments[match_id] = SummaryIncrement(match_id)
        increment.add(event, applied_at)
    return increments


def ingest_latency_update(buckets: Mapping[int, int]) -> dict[str, Any]:
    """The ``$inc`` that adds ingest response times (already bucketed) to a summary."""
    return {"$inc": {f"ingestLatency.{bucket_key(index)}": n for index, n in buckets.items()}}


def percentiles(histogram: Mapping[str, int], ranks: Iterable[float]) -> dict[float, float | None]:
    """Nearest-rank percentiles from a bucketed histogram, each within `LATENCY_RELATIVE_ERROR`."""
    counts = sorted((int(key[1:]), count) for key, count in histogram.items() if count > 0)
    total = sum(count for _, count in counts)
    result: dict[float, float | None] = {}
    for rank in ranks:
        if total == 0:
            result[rank] = None
            continue
        wanted = max(1, math.ceil(rank / 100 * total))
        seen = 0
        for index, count in counts:
            seen += count
            if seen >= wanted:
                result[rank] = round(bucket_value_ms(index), 3)
                break
    return result


@dataclass(frozen=True, slots=True)
class MinuteCount:
    minute: datetime
    events: int


@dataclass(frozen=True, slots=True)
class PeakWindow:
    start: datetime
    end: datetime
    events: int


def per_minute_series(per_minute: Mapping[str, int]) -> list[MinuteCount]:
    """The per-minute counts, oldest first (minutes with no events are left out)."""
    return [
        MinuteCount(minute_from_key(key), count)
        for key, count in sorted(per_minute.items())
        if count > 0
    ]


def peak_minutes(series: list[MinuteCount], limit: int = PEAK_MINUTES) -> list[MinuteCount]:
    """The busiest minutes, busiest first; ties go to the earlier minute."""
    return sorted(series, key=lambda item: (-item.events, item.minute))[:limit]


def busiest_window(
    series: list[MinuteCount], width_minutes: int = PEAK_WINDOW_MINUTES
) -> PeakWindow | None:
    """The contiguous window of `width_minutes` with the most events (earliest on ties).

    Windows start at each minute that has events, so an empty stretch never wins over a busy one.
    """
    if not series:
        return None
    width = timedelta(minutes=width_minutes)
    best: PeakWindow | None = None
    end_index = 0
    running = 0
    for item in series:
        while end_index < len(series) and series[end_index].minute < item.minute + width:
            running += series[end_index].events
            end_index += 1
        if best is None or running > best.events:
            best = PeakWindow(item.minute, item.minute + width, running)
        running -= item.events
    return best


def status_name(rank: int) -> str:
    return STATUS_NAMES[max(0, min(rank, STATUS_ENDED))]


def as_utc(moment: datetime) -> datetime:
    """MongoDB hands back naive UTC datetimes unless the client is tz-aware: normalise both."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def optional_utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else as_utc(moment)


def rebuild_pipeline(match_id: str | None) -> list[dict[str, Any]]:
    """The aggregation that recounts summaries from `events` at the finest grain the fold keeps."""
    match_stage: dict[str, Any] = {"$match": {"matchId": match_id} if match_id else {}}
    return [
        match_stage,
        {
            "$group": {
                "_id": {
                    "matchId": "$matchId",
                    "eventType": "$eventType",
                    "teamId": "$teamId",
                    "minute": {"$dateToString": {"format": "%Y-%m-%dT%H:%M", "date": "$timestamp"}},
                },
                "events": {"$sum": 1},
                "firstEventAt": {"$min": "$timestamp"},
                "lastEventAt": {"$max": "$timestamp"},
            }
        },
    ]


def summaries_from_rebuild_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Turn the rebuild aggregation's rows into the counted fields of each match's summary."""
    summaries: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = row["_id"]
        match_id = str(key["matchId"])
        summary = summaries.setdefault(
            match_id,
            {
                "total": 0,
                "byType": Counter(),
                "byTeam": Counter(),
                "perMinute": Counter(),
                "firstEventAt": None,
                "lastEventAt": None,
                "statusRank": STATUS_SCHEDULED,
            },
        )
        count = int(row["events"])
        summary["total"] += count
        summary["byType"][key["eventType"]] += count
        summary["byTeam"][field_key(key["teamId"])] += count
        summary["perMinute"][key["minute"]] += count
        first, last = as_utc(row["firstEventAt"]), as_utc(row["lastEventAt"])
        if summary["firstEventAt"] is None or first < summary["firstEventAt"]:
            summary["firstEventAt"] = first
        if summary["lastEventAt"] is None or last > summary["lastEventAt"]:
            summary["lastEventAt"] = last
        summary["statusRank"] = max(
            summary["statusRank"], STATUS_BY_EVENT_TYPE.get(key["eventType"], STATUS_SCHEDULED)
        )
    for summary in summaries.values():
        for name in ("byType", "byTeam", "perMinute"):
            summary[name] = dict(summary[name])
    return summaries
