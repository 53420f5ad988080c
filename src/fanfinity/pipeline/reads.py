"""Metric reads: one summary document per match, turned into the response and cached briefly.

The cache holds the encoded response per match for `ttl_s` (a few hundred ms) and lets concurrent
misses share one database read, so a goal spike of readers costs one read per match per interval
on each replica, whatever the number of readers. Each cached body carries its entity tag, so a
conditional read (`If-None-Match`) is answered 304 from the same entry, and the `Cache-Control`
lets a CDN in front serve one body per second to every fan of the match.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from fanfinity.errors import MatchNotFound
from fanfinity.pipeline.fold import (
    MinuteCount,
    busiest_window,
    match_minute,
    name_from_field_key,
    optional_utc,
    peak_minutes,
    per_minute_series,
    percentiles,
    score,
    status_name,
)
from fanfinity.schemas import (
    EngagementWindow,
    LatencyPercentiles,
    MatchMetrics,
    MinuteEvents,
    SummaryOverflow,
)
from fanfinity.storage.repositories import SummaryRepository

MAX_CACHED_MATCHES = 10_000
# A shared cache (CDN) may keep a body for a second and serve it stale for a few more while it
# revalidates in the background: one origin request per match per second per edge, whatever the
# number of fans. With read keys the body is per client: only the browser may keep it.
SHARED_CACHE_CONTROL = "public, max-age=1, stale-while-revalidate=5"
PRIVATE_CACHE_CONTROL = "private, max-age=1"
_TAG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def match_metrics(summary: Mapping[str, Any], generated_at: datetime) -> MatchMetrics:
    """Build the metrics response from a summary document (pure).

    Match minutes are computed here from the stored wall-clock minutes and the kick-off, so the
    body does not depend on whether match_start was counted before or after the other events.
    """
    kickoff_at = optional_utc(summary.get("kickoffAt"))
    series = per_minute_series(summary.get("perMinute") or {})
    window = busiest_window(series)
    by_team = dict(summary.get("byTeam") or {})
    overflow = summary.get("overflow") or {}

    def minute_events(item: MinuteCount) -> MinuteEvents:
        return MinuteEvents(item.minute, match_minute(item.minute, kickoff_at), item.events)

    return MatchMetrics(
        match_id=str(summary["_id"]),
        status=status_name(int(summary.get("statusRank", 0))),
        kickoff_at=kickoff_at,
        score={
            name_from_field_key(key): goals
            for key, goals in score(
                by_team, summary.get("goals") or {}, summary.get("ownGoals") or {}
            ).items()
        },
        total_events=int(summary.get("total", 0)),
        events_by_type=dict(summary.get("byType") or {}),
        events_by_team={name_from_field_key(key): count for key, count in by_team.items()},
        first_event_at=optional_utc(summary.get("firstEventAt")),
        last_event_at=optional_utc(summary.get("lastEventAt")),
        as_of=optional_utc(summary.get("updatedAt")),
        generated_at=generated_at,
        events_per_minute=[minute_events(item) for item in series],
        peak_engagement_periods=[minute_events(item) for item in peak_minutes(series)],
        busiest_window=(
            EngagementWindow(
                window.start,
                window.end,
                match_minute(window.start, kickoff_at),
                match_minute(window.end - timedelta(minutes=1), kickoff_at),
                window.events,
            )
            if window
            else None
        ),
        overflow=SummaryOverflow(
            teams=int(overflow.get("teams", 0)), minutes=int(overflow.get("minutes", 0))
        ),
        response_time_ms=latency_percentiles(summary.get("ingestLatency") or {}),
        processing_lag_ms=latency_percentiles(summary.get("processingLag") or {}),
    )


def encode_metrics(metrics: MatchMetrics) -> bytes:
    """The JSON body; maps in key order, so equal metrics always encode to equal bytes."""
    return msgspec.json.encode(metrics, order="deterministic")


def entity_tag(metrics: MatchMetrics) -> str:
    """A weak ETag of everything in the body but `generatedAt`: it changes exactly when the
    summary behind the body changes (weak, because two 200s with one tag differ in that stamp)."""
    stable = encode_metrics(msgspec.structs.replace(metrics, generated_at=_TAG_EPOCH))
    return f'W/"{hashlib.blake2b(stable, digest_size=12).hexdigest()}"'


def tag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 If-None-Match: weak comparison against each listed tag, or `*`."""
    if not if_none_match:
        return False
    wanted = etag.removeprefix("W/")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == wanted:
            return True
    return False


def latency_percentiles(histogram: Mapping[str, int]) -> LatencyPercentiles:
    values = percentiles(histogram, (50, 95, 99))
    return LatencyPercentiles(
        p50=values[50], p95=values[95], p99=values[99], samples=sum(histogram.values())
    )


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """An encoded metrics body plus its entity tag (`version`) and whether the match ended."""

    body: bytes
    version: str
    ended: bool

    @property
    def etag(self) -> str:
        return self.version

    def not_modified(self, if_none_match: str | None) -> bool:
        """True when the client already holds this body (answer 304 without it)."""
        return tag_matches(if_none_match, self.version)

    def response_headers(self, shared: bool) -> list[tuple[bytes, bytes]]:
        """The validator and caching header fields of a 200 or a 304, encoded (`shared`: reads
        need no key)."""
        cache_control = SHARED_CACHE_CONTROL if shared else PRIVATE_CACHE_CONTROL
        return [(b"etag", self.version.encode()), (b"cache-control", cache_control.encode())]


class MatchMetricsReader:
    """Serves encoded metric bodies from a short per-match cache in front of the summaries."""

    def __init__(self, summaries: SummaryRepository, ttl_s: float) -> None:
        self._summaries = summaries
        self._ttl_s = ttl_s
        self._cache: dict[str, tuple[float, MetricsSnapshot]] = {}
        self._in_flight: dict[str, asyncio.Future[MetricsSnapshot]] = {}
        self._misses: dict[str, float] = {}  # unknown ids, so a sweep of them is not a read each
        self.store_reads = 0

    async def encoded(self, match_id: str) -> bytes:
        """The JSON body for a match; raises `MatchNotFound` when it has no counted events."""
        return (await self.snapshot(match_id)).body

    async def snapshot(self, match_id: str) -> MetricsSnapshot:
        """The match's current metrics, from the cache or one shared store read."""
        cached = self._cache.get(match_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        if self._misses.get(match_id, 0.0) > time.monotonic():
            raise MatchNotFound(f"no events have been counted for match {match_id!r}")
        in_flight = self._in_flight.get(match_id)
        if in_flight is not None:
            return await asyncio.shield(in_flight)
        future: asyncio.Future[MetricsSnapshot] = asyncio.get_running_loop().create_future()
        self._in_flight[match_id] = future
        try:
            snapshot = await self._load(match_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must
            if isinstance(exc, MatchNotFound):
                self._remember_miss(match_id)
            raise
        else:
            future.set_result(snapshot)
            self._remember(match_id, snapshot)
            return snapshot
        finally:
            del self._in_flight[match_id]

    async def _load(self, match_id: str) -> MetricsSnapshot:
        self.store_reads += 1
        summary = await self._summaries.get(match_id)
        if summary is None or int(summary.get("total", 0)) <= 0:
            raise MatchNotFound(f"no events have been counted for match {match_id!r}")
        metrics = match_metrics(summary, datetime.now(UTC))
        return MetricsSnapshot(
            body=encode_metrics(metrics),
            version=entity_tag(metrics),
            ended=metrics.status == "ended",
        )

    def forget(self, match_id: str) -> None:
        """Drop a cached body that is known to be stale (its summary just changed)."""
        self._cache.pop(match_id, None)
        self._misses.pop(match_id, None)

    def forget_miss(self, match_id: str) -> None:
        """The match has just been counted: a cached "not found" for it is wrong now."""
        self._misses.pop(match_id, None)

    def _remember_miss(self, match_id: str) -> None:
        if self._ttl_s <= 0:
            return
        now = time.monotonic()
        if len(self._misses) >= MAX_CACHED_MATCHES:
            self._misses = {key: until for key, until in self._misses.items() if until > now}
            if len(self._misses) >= MAX_CACHED_MATCHES:
                self._misses.clear()
        self._misses[match_id] = now + self._ttl_s

    def _remember(self, match_id: str, snapshot: MetricsSnapshot) -> None:
        if self._ttl_s <= 0:
            return
        now = time.monotonic()
        if len(self._cache) >= MAX_CACHED_MATCHES:
            self._cache = {key: entry for key, entry in self._cache.items() if entry[0] > now}
            if len(self._cache) >= MAX_CACHED_MATCHES:
                self._cache.clear()
        self._cache[match_id] = (now + self._ttl_s, snapshot)
