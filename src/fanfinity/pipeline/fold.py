"""Pure functions of the read model: events -> per-match updates, buckets -> percentiles, peaks.

No I/O here. The fold turns a batch of stored events into one MongoDB update per match made only of
``$inc``, ``$min`` and ``$max``, so applying batches in any grouping gives the same summary and no
update ever reads what it writes.

A summary's size is bounded (`SummaryBounds`): a match admits at most `max_teams` team keys and
`max_minutes` minute keys, first come first admitted by the time the service received the event
(ties to the smaller key). Events whose team or minute is not admitted are still counted in
``total`` and ``byType``, and in ``overflow.teams`` / ``overflow.minutes`` instead of under their
key, so every event is counted exactly once in each dimension. The aggregator, the single writer of
summaries, reads the keys a match already admitted inside its unit of work and bounds the batch's
increments with `bound_increments`; the rebuild applies the same rule to the stored events.
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
# goal and penalty_goal count for their teamId; an own_goal's teamId names the team of the player
# who put the ball into his own net, and it counts for the other side (see `score`).
GOAL_TYPES = frozenset({"goal", "penalty_goal"})
OWN_GOAL = "own_goal"
KICK_OFF = "match_start"
DEFAULT_MAX_TEAMS = 8
DEFAULT_MAX_MINUTES = 720


@dataclass(frozen=True, slots=True)
class SummaryBounds:
    """How many distinct teams and minutes one match's summary keeps (the rest is overflow).

    The defaults fit a real match with room to spare (two teams plus a few; twelve hours of
    minutes, for a long match day) and keep any match's metrics body under 64 KiB.
    """

    max_teams: int = DEFAULT_MAX_TEAMS
    max_minutes: int = DEFAULT_MAX_MINUTES


@dataclass(frozen=True, slots=True)
class AdmittedKeys:
    """The team keys (escaped, as stored) and minute keys a match's summary already holds."""

    teams: frozenset[str] = frozenset()
    minutes: frozenset[str] = frozenset()


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


# Minute keys by minute number since the epoch: events come minute after minute, so nearly every
# key is one made already, and the lookup costs a quarter of making it (~0.4 against 1.6 us).
_MINUTE_KEYS: dict[int, str] = {}
MINUTE_KEYS_KEPT = 4096
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MINUTE = timedelta(minutes=1)


def minute_key(moment: datetime) -> str:
    """The per-minute series key of a moment: its UTC minute, as ``YYYY-MM-DDTHH:MM``."""
    try:
        number = (moment - _EPOCH) // _MINUTE  # exact (integer microseconds), any UTC offset
    except TypeError:  # a naive datetime: read as local time, as `astimezone` reads it
        return _minute_text(moment)
    key = _MINUTE_KEYS.get(number)
    if key is None:
        if len(_MINUTE_KEYS) >= MINUTE_KEYS_KEPT:
            _MINUTE_KEYS.clear()
        key = _MINUTE_KEYS[number] = _minute_text(moment)
    return key


def _minute_text(moment: datetime) -> str:
    """From four-digit years on, the start of the ISO form is those very characters, at half the
    cost of `strftime` (which was 40 % of the fold's time per event)."""
    utc = moment.astimezone(UTC)
    if utc.year >= 1000:
        return utc.isoformat()[:16]
    return utc.strftime("%Y-%m-%dT%H:%M")


def minute_from_key(key: str) -> datetime:
    """Parse ``YYYY-MM-DDTHH:MM`` by position: strptime made a 720-minute read take 12 ms."""
    return datetime(
        int(key[0:4]), int(key[5:7]), int(key[8:10]), int(key[11:13]), int(key[14:16]), tzinfo=UTC
    )


@dataclass(slots=True)
class SummaryIncrement:
    """What one batch adds to one match's summary.

    `team_seen` and `minute_seen` hold the earliest receipt time of each key in the batch: the
    order in which `bounded` admits new keys.
    """

    match_id: str
    total: int = 0
    by_type: Counter[str] = field(default_factory=Counter)
    by_team: Counter[str] = field(default_factory=Counter)
    goals: Counter[str] = field(default_factory=Counter)
    own_goals: Counter[str] = field(default_factory=Counter)
    per_minute: Counter[str] = field(default_factory=Counter)
    processing_lag: Counter[str] = field(default_factory=Counter)
    first_event_at: datetime | None = None
    last_event_at: datetime | None = None
    kickoff_at: datetime | None = None
    status_rank: int = STATUS_SCHEDULED
    team_overflow: int = 0
    minute_overflow: int = 0
    team_seen: dict[str, datetime] = field(default_factory=dict)
    minute_seen: dict[str, datetime] = field(default_factory=dict)

    def add(self, event: Mapping[str, Any], applied_at: datetime) -> None:
        timestamp = as_utc(event["timestamp"])
        received_at = as_utc(event["receivedAt"])
        event_type = str(event["eventType"])
        team = field_key(str(event["teamId"]))
        minute = minute_key(timestamp)
        self.total += 1
        self.by_type[event_type] += 1
        self.by_team[team] += 1
        if event_type in GOAL_TYPES:
            self.goals[team] += 1
        elif event_type == OWN_GOAL:
            self.own_goals[team] += 1
        self.per_minute[minute] += 1
        _remember_earliest(self.team_seen, team, received_at)
        _remember_earliest(self.minute_seen, minute, received_at)
        lag_ms = (applied_at - received_at).total_seconds() * 1000
        self.processing_lag[bucket_key(latency_bucket(max(lag_ms, 0.0)))] += 1
        if self.first_event_at is None or timestamp < self.first_event_at:
            self.first_event_at = timestamp
        if self.last_event_at is None or timestamp > self.last_event_at:
            self.last_event_at = timestamp
        if event_type == KICK_OFF and (self.kickoff_at is None or timestamp < self.kickoff_at):
            self.kickoff_at = timestamp
        self.status_rank = max(self.status_rank, STATUS_BY_EVENT_TYPE.get(event_type, 0))

    def bounded(self, admitted: AdmittedKeys, bounds: SummaryBounds) -> SummaryIncrement:
        """This increment with keys beyond the match's bounds moved to the overflow counters."""
        teams = admit(admitted.teams, self.team_seen, bounds.max_teams)
        minutes = admit(admitted.minutes, self.minute_seen, bounds.max_minutes)
        return SummaryIncrement(
            match_id=self.match_id,
            total=self.total,
            by_type=self.by_type,
            by_team=Counter({k: n for k, n in self.by_team.items() if k in teams}),
            goals=Counter({k: n for k, n in self.goals.items() if k in teams}),
            own_goals=Counter({k: n for k, n in self.own_goals.items() if k in teams}),
            per_minute=Counter({k: n for k, n in self.per_minute.items() if k in minutes}),
            processing_lag=self.processing_lag,
            first_event_at=self.first_event_at,
            last_event_at=self.last_event_at,
            kickoff_at=self.kickoff_at,
            status_rank=self.status_rank,
            team_overflow=self.team_overflow
            + sum(n for k, n in self.by_team.items() if k not in teams),
            minute_overflow=self.minute_overflow
            + sum(n for k, n in self.per_minute.items() if k not in minutes),
            team_seen={k: t for k, t in self.team_seen.items() if k in teams},
            minute_seen={k: t for k, t in self.minute_seen.items() if k in minutes},
        )

    def as_update(self, applied_at: datetime) -> dict[str, Any]:
        """The MongoDB update document: commutative operators only, safe to apply in any order."""
        increments: dict[str, int] = {"total": self.total}
        for prefix, counter in (
            ("byType", self.by_type),
            ("byTeam", self.by_team),
            ("goals", self.goals),
            ("ownGoals", self.own_goals),
            ("perMinute", self.per_minute),
            ("processingLag", self.processing_lag),
        ):
            increments.update({f"{prefix}.{key}": count for key, count in counter.items()})
        if self.team_overflow:
            increments["overflow.teams"] = self.team_overflow
        if self.minute_overflow:
            increments["overflow.minutes"] = self.minute_overflow
        earliest: dict[str, datetime | None] = {"firstEventAt": self.first_event_at}
        if self.kickoff_at is not None:  # $min against a stored null would keep the null
            earliest["kickoffAt"] = self.kickoff_at
        return {
            "$inc": increments,
            "$min": earliest,
            "$max": {
                "lastEventAt": self.last_event_at,
                "statusRank": self.status_rank,
                "updatedAt": applied_at,
            },
        }


def _remember_earliest(seen: dict[str, datetime], key: str, moment: datetime) -> None:
    known = seen.get(key)
    if known is None or moment < known:
        seen[key] = moment


def admit(held: frozenset[str], seen: Mapping[str, datetime], limit: int) -> frozenset[str]:
    """The keys a summary holds after this batch: those it held, then new ones by first receipt
    (ties to the smaller key) while fewer than `limit` are held."""
    room = max(0, limit - len(held))
    fresh = sorted((moment, key) for key, moment in seen.items() if key not in held)
    return held | {key for _, key in fresh[:room]}


def fold_events(
    events: Iterable[Mapping[str, Any]], applied_at: datetime
) -> dict[str, SummaryIncrement]:
    """Fold a batch of stored events into one increment per match (not yet bounded)."""
    increments: dict[str, SummaryIncrement] = {}
    fold_into(increments, events, applied_at)
    return increments


def fold_into(
    increments: dict[str, SummaryIncrement],
    events: Iterable[Mapping[str, Any]],
    applied_at: datetime,
) -> None:
    """Add events to per-match increments: folding a batch in parts gives what one fold gives."""
    for event in events:
        match_id = str(event["matchId"])
        increment = increments.get(match_id)
        if increment is None:
            increment = increments[match_id] = SummaryIncrement(match_id)
        increment.add(event, applied_at)


def bound_increments(
    increments: Iterable[SummaryIncrement],
    admitted: Mapping[str, AdmittedKeys],
    bounds: SummaryBounds,
) -> list[SummaryIncrement]:
    """Bound each match's increment by the keys its summary already holds (pure)."""
    return [
        increment.bounded(admitted.get(increment.match_id, AdmittedKeys()), bounds)
        for increment in increments
    ]


def overflowed(increments: Iterable[SummaryIncrement]) -> tuple[int, int]:
    """Events of bounded increments counted in overflow: (by team, by minute)."""
    teams = minutes = 0
    for increment in increments:
        teams += increment.team_overflow
        minutes += increment.minute_overflow
    return teams, minutes


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


def match_minute(minute: datetime, kickoff_at: datetime | None) -> int | None:
    """The football minute of a wall-clock minute: an event 42:05 after kick-off is in the 43rd.

    The series keeps wall-clock minutes, so a minute is labelled with the match minute that holds
    its middle (most of it): exact when the kick-off is on a whole minute, else at most one off
    for events near a boundary. None before the kick-off or while it is unknown.
    """
    if kickoff_at is None:
        return None
    elapsed = minute + timedelta(seconds=30) - kickoff_at
    number = math.floor(elapsed.total_seconds() / 60) + 1
    return number if number >= 1 else None


def live_match_minute(now: datetime, kickoff_at: datetime | None) -> int | None:
    """The running minute at `now` (the match clock), by the same convention."""
    if kickoff_at is None or now < kickoff_at:
        return None
    return math.floor((now - kickoff_at).total_seconds() / 60) + 1


def sides(by_team: Mapping[str, int]) -> list[str]:
    """The match's two sides: the two teams with the most events (ties to the smaller id)."""
    return [team for team, _ in sorted(by_team.items(), key=lambda item: (-item[1], item[0]))[:2]]


def score(
    by_team: Mapping[str, int], goals: Mapping[str, int], own_goals: Mapping[str, int]
) -> dict[str, int]:
    """Goals per team: goal and penalty_goal count for their teamId; an own_goal's teamId is the
    team that conceded it, and it counts for the other side. An own goal by a team that is not one
    of the two sides, or before the other side has any event, counts for no one (yet)."""
    teams = sides(by_team)
    result = {team: goals.get(team, 0) for team in teams}
    for team, count in goals.items():
        result.setdefault(team, count)
    for team, count in own_goals.items():
        others = [other for other in teams if other != team]
        if team in teams and len(others) == 1:
            result[others[0]] += count
    return result


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
    """The aggregation that recounts summaries from `events` at the finest grain the fold keeps,
    with each group's first receipt time so that the rebuild admits keys as the live fold did."""
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
                "firstReceivedAt": {"$min": "$receivedAt"},
            }
        },
    ]


def summaries_from_rebuild_rows(
    rows: Iterable[Mapping[str, Any]], bounds: SummaryBounds | None = None
) -> dict[str, dict[str, Any]]:
    """Turn the rebuild aggregation's rows into the counted fields of each match's summary.

    The rows are folded like one batch holding every stored event, then bounded from an empty
    summary: keys are admitted by first receipt, as the live fold admitted them batch by batch.
    """
    increments: dict[str, SummaryIncrement] = {}
    for row in rows:
        key = row["_id"]
        match_id = str(key["matchId"])
        increment = increments.get(match_id)
        if increment is None:
            increment = increments[match_id] = SummaryIncrement(match_id)
        _add_rebuild_row(increment, key, row)
    summaries: dict[str, dict[str, Any]] = {}
    for increment in bound_increments(increments.values(), {}, bounds or SummaryBounds()):
        summaries[increment.match_id] = {
            "total": increment.total,
            "byType": dict(increment.by_type),
            "byTeam": dict(increment.by_team),
            "goals": dict(increment.goals),
            "ownGoals": dict(increment.own_goals),
            "perMinute": dict(increment.per_minute),
            "overflow": {"teams": increment.team_overflow, "minutes": increment.minute_overflow},
            "firstEventAt": increment.first_event_at,
            "lastEventAt": increment.last_event_at,
            "kickoffAt": increment.kickoff_at,
            "statusRank": increment.status_rank,
        }
    return summaries


def _add_rebuild_row(
    increment: SummaryIncrement, key: Mapping[str, Any], row: Mapping[str, Any]
) -> None:
    count = int(row["events"])
    event_type = str(key["eventType"])
    team = field_key(str(key["teamId"]))
    minute = str(key["minute"])
    first, last = as_utc(row["firstEventAt"]), as_utc(row["lastEventAt"])
    received = as_utc(row.get("firstReceivedAt") or row["firstEventAt"])
    increment.total += count
    increment.by_type[event_type] += count
    increment.by_team[team] += count
    if event_type in GOAL_TYPES:
        increment.goals[team] += count
    elif event_type == OWN_GOAL:
        increment.own_goals[team] += count
    increment.per_minute[minute] += count
    _remember_earliest(increment.team_seen, team, received)
    _remember_earliest(increment.minute_seen, minute, received)
    if increment.first_event_at is None or first < increment.first_event_at:
        increment.first_event_at = first
    if increment.last_event_at is None or last > increment.last_event_at:
        increment.last_event_at = last
    if event_type == KICK_OFF and (increment.kickoff_at is None or first < increment.kickoff_at):
        increment.kickoff_at = first
    increment.status_rank = max(
        increment.status_rank, STATUS_BY_EVENT_TYPE.get(event_type, STATUS_SCHEDULED)
    )
