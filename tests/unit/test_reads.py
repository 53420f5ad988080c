"""Metric reads: the response built from a summary, and the short cache in front of the store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from fanfinity.errors import MatchNotFound
from fanfinity.pipeline.fold import LATENCY_RELATIVE_ERROR, fold_events
from fanfinity.pipeline.reads import MatchMetricsReader, match_metrics
from fanfinity.storage.engine import Engine
from fanfinity.storage.repositories import SummaryRepository
from tests.factories import stored_event

KICK_OFF = datetime(2025, 5, 10, 19, 0, tzinfo=UTC)
GENERATED_AT = datetime(2025, 5, 10, 20, 0, tzinfo=UTC)
LONG_TTL_S = 60.0


def at(hh_mm: str) -> datetime:
    hours, minutes = hh_mm.split(":")
    return datetime(2025, 5, 10, int(hours), int(minutes), tzinfo=UTC)


async def count(engine: Engine, *events: dict[str, Any]) -> None:
    """What the aggregator does with a batch of events."""
    await engine.summaries.apply(fold_events(events, KICK_OFF).values(), KICK_OFF)


def total_events(body: bytes) -> int:
    decoded: dict[str, Any] = msgspec.json.decode(body)
    return int(decoded["totalEvents"])


class SlowSummaryRepository(SummaryRepository):
    """The real repository behind a network round trip, so that reads overlap."""

    async def get(self, match_id: str) -> dict[str, Any] | None:
        await asyncio.sleep(0.05)
        return await super().get(match_id)


# match_metrics (pure)


def derby_summary() -> dict[str, Any]:
    return {
        "_id": "alhilal-vs-alnassr",
        "total": 31,
        "byType": {"goal": 3, "corner": 20, "match_start": 1, "foul": 7},
        "byTeam": {"al-hilal": 18, "al-nassr": 13},
        # Stored in no particular order; 19:02-19:06 has no events.
        "perMinute": {
            "2025-05-10T19:10": 6,
            "2025-05-10T19:00": 2,
            "2025-05-10T19:07": 6,
            "2025-05-10T19:01": 9,
            "2025-05-10T19:08": 1,
            "2025-05-10T19:09": 7,
            "2025-05-10T19:30": 0,
        },
        "goals": {"al-hilal": 2, "al-nassr": 1},
        "firstEventAt": datetime(2025, 5, 10, 19, 0, 3),  # naive UTC, as MongoDB returns it
        "kickoffAt": datetime(2025, 5, 10, 19, 0, 3),
        "lastEventAt": datetime(2025, 5, 10, 19, 10, 41),
        "statusRank": 1,
        "ingestLatency": {"b40": 90, "b60": 5, "b80": 5},
        "processingLag": {"b50": 10},
        "updatedAt": datetime(2025, 5, 10, 19, 10, 42, tzinfo=UTC),
    }


def test_metrics_carry_the_counts_and_status() -> None:
    metrics = match_metrics(derby_summary(), GENERATED_AT)

    assert metrics.match_id == "alhilal-vs-alnassr"
    assert metrics.status == "live"
    assert metrics.total_events == 31
    assert metrics.events_by_type == {"goal": 3, "corner": 20, "match_start": 1, "foul": 7}
    assert metrics.events_by_team == {"al-hilal": 18, "al-nassr": 13}
    assert metrics.first_event_at == datetime(2025, 5, 10, 19, 0, 3, tzinfo=UTC)
    assert metrics.last_event_at == datetime(2025, 5, 10, 19, 10, 41, tzinfo=UTC)
    assert metrics.as_of == datetime(2025, 5, 10, 19, 10, 42, tzinfo=UTC)
    assert metrics.generated_at == GENERATED_AT


def test_per_minute_series_is_oldest_first_without_empty_minutes() -> None:
    metrics = match_metrics(derby_summary(), GENERATED_AT)

    assert [(item.minute, item.events) for item in metrics.events_per_minute] == [
        (at("19:00"), 2),
        (at("19:01"), 9),
        (at("19:07"), 6),
        (at("19:08"), 1),
        (at("19:09"), 7),
        (at("19:10"), 6),
    ]


def test_peaks_are_the_busiest_minutes_and_window() -> None:
    metrics = match_metrics(derby_summary(), GENERATED_AT)

    assert [(item.minute, item.events) for item in metrics.peak_engagement_periods] == [
        (at("19:01"), 9),
        (at("19:09"), 7),
        (at("19:07"), 6),
        (at("19:10"), 6),
        (at("19:00"), 2),
    ]
    window = metrics.busiest_window
    assert window is not None
    assert (window.start, window.end, window.events) == (at("19:07"), at("19:12"), 20)


def test_latency_percentiles_come_from_the_histograms() -> None:
    metrics = match_metrics(derby_summary(), GENERATED_AT)

    response = metrics.response_time_ms
    assert response.samples == 100
    assert response.p50 is not None
    assert response.p95 is not None
    assert response.p99 is not None
    assert response.p50 < response.p95 < response.p99
    lag = metrics.processing_lag_ms
    assert lag.samples == 10
    assert lag.p50 == lag.p99
    # b50 holds (0.1 * 2**12.25, 0.1 * 2**12.5] ms, around 500 ms.
    assert lag.p50 == pytest.approx(0.1 * 2**12.5, rel=LATENCY_RELATIVE_ERROR)


@pytest.mark.parametrize(("rank", "status"), [(0, "scheduled"), (1, "live"), (2, "ended")])
def test_status_is_named(rank: int, status: str) -> None:
    assert match_metrics({**derby_summary(), "statusRank": rank}, GENERATED_AT).status == status


def test_summary_without_latencies_reports_no_percentiles() -> None:
    summary = {"_id": "quiet-match", "total": 1, "perMinute": {"2025-05-10T19:00": 1}}

    metrics = match_metrics(summary, GENERATED_AT)

    assert (metrics.response_time_ms.p50, metrics.response_time_ms.samples) == (None, 0)
    assert (metrics.processing_lag_ms.p99, metrics.processing_lag_ms.samples) == (None, 0)
    assert metrics.status == "scheduled"
    assert metrics.as_of is None


def test_metrics_encode_with_camel_case_names() -> None:
    body = msgspec.json.decode(msgspec.json.encode(match_metrics(derby_summary(), GENERATED_AT)))

    assert body["matchId"] == "alhilal-vs-alnassr"
    assert body["totalEvents"] == 31
    assert body["eventsPerMinute"][0] == {
        "minute": "2025-05-10T19:00:00Z",
        "matchMinute": 1,
        "events": 2,
    }
    assert body["kickoffAt"] == "2025-05-10T19:00:03Z"
    assert body["score"] == {"al-hilal": 2, "al-nassr": 1}
    assert body["responseTimeMs"]["samples"] == 100


# MatchMetricsReader


async def test_repeated_reads_within_the_ttl_cost_one_store_read(engine: Engine) -> None:
    await count(engine, stored_event("e1"))
    reader = MatchMetricsReader(engine.summaries, ttl_s=LONG_TTL_S)

    first = await reader.encoded("alhilal-vs-alnassr")
    await count(engine, stored_event("e2"))
    second = await reader.encoded("alhilal-vs-alnassr")

    assert reader.store_reads == 1
    assert second == first
    assert total_events(second) == 1


async def test_read_after_the_ttl_sees_new_events(engine: Engine) -> None:
    await count(engine, stored_event("e1"))
    reader = MatchMetricsReader(engine.summaries, ttl_s=0.05)
    assert total_events(await reader.encoded("alhilal-vs-alnassr")) == 1

    await count(engine, stored_event("e2"))
    await asyncio.sleep(0.1)

    assert total_events(await reader.encoded("alhilal-vs-alnassr")) == 2
    assert reader.store_reads == 2


async def test_zero_ttl_reads_the_store_every_time(engine: Engine) -> None:
    await count(engine, stored_event("e1"))
    reader = MatchMetricsReader(engine.summaries, ttl_s=0)

    await reader.encoded("alhilal-vs-alnassr")
    await count(engine, stored_event("e2"))

    assert total_events(await reader.encoded("alhilal-vs-alnassr")) == 2
    assert reader.store_reads == 2


async def test_concurrent_misses_share_one_store_read(engine: Engine) -> None:
    await count(engine, stored_event("e1"), stored_event("e2"))
    # No cache at all: only the sharing of the in-flight read can keep this to one read.
    reader = MatchMetricsReader(SlowSummaryRepository(engine.database["match_summaries"]), ttl_s=0)

    bodies = await asyncio.gather(*(reader.encoded("alhilal-vs-alnassr") for _ in range(20)))

    assert reader.store_reads == 1
    assert len(set(bodies)) == 1
    assert total_events(bodies[0]) == 2


async def test_cache_is_per_match(engine: Engine) -> None:
    await count(engine, stored_event("e1"))
    await engine.summaries.apply(
        fold_events([{**stored_event("x1"), "matchId": "ittihad-vs-ahli"}], KICK_OFF).values(),
        KICK_OFF,
    )
    reader = MatchMetricsReader(engine.summaries, ttl_s=LONG_TTL_S)

    derby = msgspec.json.decode(await reader.encoded("alhilal-vs-alnassr"))
    other = msgspec.json.decode(await reader.encoded("ittihad-vs-ahli"))

    assert (derby["matchId"], other["matchId"]) == ("alhilal-vs-alnassr", "ittihad-vs-ahli")
    assert reader.store_reads == 2


async def test_unknown_match_is_not_found(engine: Engine) -> None:
    reader = MatchMetricsReader(engine.summaries, ttl_s=LONG_TTL_S)

    with pytest.raises(MatchNotFound, match="no-such-match"):
        await reader.encoded("no-such-match")


async def test_match_with_latencies_but_no_counted_events_is_not_found(engine: Engine) -> None:
    await engine.summaries.add_ingest_latency({"alhilal-vs-alnassr": {10: 1}})
    reader = MatchMetricsReader(engine.summaries, ttl_s=LONG_TTL_S)

    with pytest.raises(MatchNotFound):
        await reader.encoded("alhilal-vs-alnassr")


async def test_concurrent_reads_of_an_unknown_match_all_get_not_found(engine: Engine) -> None:
    reader = MatchMetricsReader(SlowSummaryRepository(engine.database["match_summaries"]), ttl_s=0)

    results = await asyncio.gather(
        *(reader.encoded("no-such-match") for _ in range(5)), return_exceptions=True
    )

    assert all(isinstance(result, MatchNotFound) for result in results), results
    assert reader.store_reads == 1


async def test_not_found_is_cached_until_the_match_is_counted(engine: Engine) -> None:
    """A sweep of unknown ids costs one read each per ttl; the in-process aggregator's commit
    (`forget_miss`, through the stream hub's nudge) makes a new match visible at once."""
    reader = MatchMetricsReader(engine.summaries, ttl_s=LONG_TTL_S)
    for _ in range(3):
        with pytest.raises(MatchNotFound):
            await reader.encoded("alhilal-vs-alnassr")
    assert reader.store_reads == 1

    await count(engine, stored_event("e1"))
    reader.forget_miss("alhilal-vs-alnassr")

    assert total_events(await reader.encoded("alhilal-vs-alnassr")) == 1
