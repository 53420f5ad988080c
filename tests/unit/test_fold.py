"""The pure read-model maths: the fold, the update documents, percentiles, peaks and the rebuild."""

from __future__ import annotations

import math
import random
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone

import pytest

from fanfinity.pipeline.fold import (
    LATENCY_FLOOR_MS,
    LATENCY_MAX_BUCKET,
    LATENCY_RELATIVE_ERROR,
    MinuteCount,
    bucket_key,
    bucket_value_ms,
    busiest_window,
    fold_events,
    latency_bucket,
    peak_minutes,
    percentiles,
    rebuild_pipeline,
    summaries_from_rebuild_rows,
)
from fanfinity.storage.engine import Engine
from tests.factories import stored_event

RIYADH = timezone(timedelta(hours=3))
KICK_OFF = datetime(2025, 5, 10, 19, 0, tzinfo=UTC)
# percentiles() rounds to the microsecond; allow that on top of the bucket error.
ROUNDING_MS = 0.0005


def nearest_rank(samples: list[float], rank: float) -> float:
    """The textbook nearest-rank percentile, by sorting every sample."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(rank / 100 * len(ordered))) - 1]


def histogram_of(samples: list[float]) -> dict[str, int]:
    return dict(Counter(bucket_key(latency_bucket(sample)) for sample in samples))


# fold_events


def test_fold_counts_totals_types_and_teams_per_match() -> None:
    events = [
        stored_event("e1", event_type="goal", team_id="al-hilal"),
        stored_event("e2", event_type="goal", team_id="al-hilal"),
        stored_event("e3", event_type="yellow_card", team_id="al-nassr"),
        stored_event("e4", match_id="ittihad-vs-ahli", event_type="corner", team_id="ahli"),
    ]

    increments = fold_events(events, KICK_OFF)

    assert set(increments) == {"alhilal-vs-alnassr", "ittihad-vs-ahli"}
    derby = increments["alhilal-vs-alnassr"]
    assert derby.total == 3
    assert derby.by_type == {"goal": 2, "yellow_card": 1}
    assert derby.by_team == {"al-hilal": 2, "al-nassr": 1}
    other = increments["ittihad-vs-ahli"]
    assert other.total == 1
    assert other.by_type == {"corner": 1}
    assert other.by_team == {"ahli": 1}


def test_fold_of_no_events_has_no_matches() -> None:
    assert fold_events([], KICK_OFF) == {}


def test_per_minute_is_keyed_by_the_events_own_utc_minute() -> None:
    events = [
        # 19:42 in Riyadh is 16:42 UTC.
        stored_event("e1", timestamp=datetime(2025, 5, 10, 19, 42, 7, tzinfo=RIYADH)),
        stored_event("e2", timestamp=datetime(2025, 5, 10, 16, 42, 59, tzinfo=UTC)),
        # MongoDB hands back naive datetimes that are UTC.
        stored_event("e3", timestamp=datetime(2025, 5, 10, 16, 43, 0)),
    ]

    increment = fold_events(events, KICK_OFF)["alhilal-vs-alnassr"]

    assert increment.per_minute == {"2025-05-10T16:42": 2, "2025-05-10T16:43": 1}


def test_first_and_last_event_times_are_the_earliest_and_latest_in_utc() -> None:
    events = [
        stored_event("middle", timestamp=datetime(2025, 5, 10, 19, 30, tzinfo=UTC)),
        stored_event("last", timestamp=datetime(2025, 5, 10, 23, 50, tzinfo=RIYADH)),
        stored_event("first", timestamp=datetime(2025, 5, 10, 21, 5, tzinfo=RIYADH)),
    ]

    increment = fold_events(events, KICK_OFF)["alhilal-vs-alnassr"]

    assert increment.first_event_at == datetime(2025, 5, 10, 18, 5, tzinfo=UTC)
    assert increment.last_event_at == datetime(2025, 5, 10, 20, 50, tzinfo=UTC)
    assert increment.first_event_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("event_types", "expected_rank"),
    [
        pytest.param(["goal", "corner"], 0, id="no-start-is-scheduled"),
        pytest.param(["match_start", "goal"], 1, id="started-is-live"),
        pytest.param(["match_start", "goal", "match_end"], 2, id="ended"),
        pytest.param(["match_end", "goal", "match_start"], 2, id="end-seen-before-start"),
        pytest.param(["match_end"], 2, id="end-alone"),
    ],
)
def test_status_rank_comes_from_start_and_end_in_any_order(
    event_types: list[str], expected_rank: int
) -> None:
    events = [
        stored_event(f"e{index}", event_type=event_type)
        for index, event_type in enumerate(event_types)
    ]

    increment = fold_events(events, KICK_OFF)["alhilal-vs-alnassr"]

    assert increment.status_rank == expected_rank


def test_processing_lag_reads_back_within_the_bucket_error() -> None:
    applied_at = datetime(2025, 5, 10, 19, 0, 10, tzinfo=UTC)
    events = [
        stored_event("fast", received_at=applied_at - timedelta(milliseconds=250)),
        stored_event("also-fast", received_at=applied_at - timedelta(milliseconds=252)),
        stored_event("slow", received_at=applied_at - timedelta(seconds=8)),
    ]

    lag = fold_events(events, applied_at)["alhilal-vs-alnassr"].processing_lag

    assert sum(lag.values()) == 3
    assert len(lag) == 2  # 250 ms and 252 ms share a bucket; 8 s is elsewhere
    p50, p99 = percentiles(lag, (50, 99)).values()
    assert p50 == pytest.approx(250, rel=LATENCY_RELATIVE_ERROR)
    assert p99 == pytest.approx(8_000, rel=LATENCY_RELATIVE_ERROR)


def test_event_received_after_it_was_applied_counts_as_zero_lag() -> None:
    """Clock skew between replicas must not make a lag negative or crash the fold."""
    applied_at = datetime(2025, 5, 10, 19, 0, 10, tzinfo=UTC)
    events = [stored_event("skewed", received_at=applied_at + timedelta(seconds=2))]

    lag = fold_events(events, applied_at)["alhilal-vs-alnassr"].processing_lag

    assert percentiles(lag, (50,)) == {50: LATENCY_FLOOR_MS}


# SummaryIncrement.as_update


def test_update_document_uses_only_commutative_operators() -> None:
    applied_at = datetime(2025, 5, 10, 20, 0, tzinfo=UTC)
    events = [
        stored_event("e1", event_type="match_start", timestamp=KICK_OFF),
        stored_event("e2", team_id="al-nassr", timestamp=KICK_OFF + timedelta(minutes=42)),
        stored_event("e3", timestamp=KICK_OFF + timedelta(minutes=42, seconds=30)),
    ]

    update = fold_events(events, applied_at)["alhilal-vs-alnassr"].as_update(applied_at)

    assert set(update) == {"$inc", "$min", "$max"}
    assert update["$inc"]["total"] == 3
    assert update["$inc"]["byType.goal"] == 2
    assert update["$inc"]["byType.match_start"] == 1
    assert update["$inc"]["byTeam.al-hilal"] == 2
    assert update["$inc"]["byTeam.al-nassr"] == 1
    assert update["$inc"]["perMinute.2025-05-10T19:00"] == 1
    assert update["$inc"]["perMinute.2025-05-10T19:42"] == 2
    assert update["$inc"]["goals.al-hilal"] == 1
    assert update["$inc"]["goals.al-nassr"] == 1
    assert sum(v for k, v in update["$inc"].items() if k.startswith("processingLag.")) == 3
    assert update["$min"] == {"firstEventAt": KICK_OFF, "kickoffAt": KICK_OFF}
    assert update["$max"]["lastEventAt"] == KICK_OFF + timedelta(minutes=42, seconds=30)
    assert update["$max"]["statusRank"] == 1
    assert update["$max"]["updatedAt"] == applied_at


# latency buckets and percentiles


@pytest.mark.parametrize("milliseconds", [0.11, 0.5, 1.0, 3.7, 42.0, 199.9, 1_000.0, 65_432.1])
def test_bucket_value_is_within_the_stated_error_of_any_latency_in_it(milliseconds: float) -> None:
    reported = bucket_value_ms(latency_bucket(milliseconds))

    assert abs(reported - milliseconds) <= LATENCY_RELATIVE_ERROR * milliseconds


def test_stated_error_is_about_nine_percent() -> None:
    assert 0.09 < LATENCY_RELATIVE_ERROR < 0.091


def test_larger_latencies_never_land_in_smaller_buckets() -> None:
    values = [0.05 * 1.07**step for step in range(300)]

    buckets = [latency_bucket(value) for value in values]

    assert buckets == sorted(buckets)


def test_latencies_at_or_below_the_floor_share_the_first_bucket() -> None:
    assert latency_bucket(0.0) == latency_bucket(0.01) == latency_bucket(LATENCY_FLOOR_MS) == 0
    assert bucket_value_ms(0) == LATENCY_FLOOR_MS


def test_huge_latencies_are_clamped_to_the_last_bucket() -> None:
    assert latency_bucket(1e12) == LATENCY_MAX_BUCKET
    assert latency_bucket(1e15) == LATENCY_MAX_BUCKET


@pytest.mark.parametrize("seed", [7, 2025, 90210])
def test_percentiles_match_brute_force_nearest_rank_within_the_stated_error(seed: int) -> None:
    rng = random.Random(seed)
    samples = [rng.lognormvariate(math.log(40), 1.0) for _ in range(1_000)]

    reported = percentiles(histogram_of(samples), (50, 90, 95, 99, 100))

    for rank, value in reported.items():
        exact = nearest_rank(samples, rank)
        assert value is not None
        assert abs(value - exact) <= LATENCY_RELATIVE_ERROR * exact + ROUNDING_MS, rank


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_percentiles_are_ordered(seed: int) -> None:
    rng = random.Random(seed)
    samples = [rng.lognormvariate(math.log(5), 2.0) for _ in range(rng.randint(1, 300))]

    reported = percentiles(histogram_of(samples), (50, 95, 99))

    assert reported[50] is not None
    assert reported[95] is not None
    assert reported[99] is not None
    assert reported[50] <= reported[95] <= reported[99]


def test_single_sample_is_every_percentile() -> None:
    reported = percentiles(histogram_of([120.0]), (50, 95, 99))

    assert len(set(reported.values())) == 1
    assert reported[50] == pytest.approx(120.0, rel=LATENCY_RELATIVE_ERROR)


@pytest.mark.parametrize(
    "histogram", [pytest.param({}, id="no-buckets"), pytest.param({"b10": 0}, id="zero-counts")]
)
def test_empty_histogram_has_no_percentiles(histogram: dict[str, int]) -> None:
    assert percentiles(histogram, (50, 95, 99)) == {50: None, 95: None, 99: None}


# peaks


def minute(hh_mm: str) -> datetime:
    hours, minutes = hh_mm.split(":")
    return datetime(2025, 5, 10, int(hours), int(minutes), tzinfo=UTC)


def series_of(counts: dict[str, int]) -> list[MinuteCount]:
    return [MinuteCount(minute(key), events) for key, events in counts.items()]


def test_peak_minutes_are_busiest_first_with_ties_to_the_earlier_minute() -> None:
    series = series_of(
        {"19:00": 3, "19:01": 9, "19:02": 9, "19:03": 1, "19:04": 9, "19:05": 4, "19:06": 7}
    )

    peaks = peak_minutes(series)

    assert peaks == series_of({"19:01": 9, "19:02": 9, "19:04": 9, "19:06": 7, "19:05": 4})


def test_peak_minutes_are_at_most_five() -> None:
    series = series_of({f"19:{m:02d}": 10 + m for m in range(12)})

    assert len(peak_minutes(series)) == 5


def test_peak_minutes_of_a_short_match_are_all_its_minutes() -> None:
    series = series_of({"19:00": 1, "19:07": 2})

    assert peak_minutes(series) == series_of({"19:07": 2, "19:00": 1})


def test_busiest_window_of_no_events_is_none() -> None:
    assert busiest_window([]) is None


def test_busiest_window_of_one_minute_spans_five_minutes_from_it() -> None:
    window = busiest_window(series_of({"19:42": 6}))

    assert window is not None
    assert (window.start, window.end, window.events) == (minute("19:42"), minute("19:47"), 6)


def test_busiest_window_spans_gaps_between_minutes() -> None:
    # 19:03-19:07 holds 5 + 8 = 13; 19:00-19:04 holds 10; 19:07-19:11 holds 8.
    window = busiest_window(series_of({"19:00": 5, "19:03": 5, "19:07": 8}))

    assert window is not None
    assert (window.start, window.end, window.events) == (minute("19:03"), minute("19:08"), 13)


def test_busiest_window_end_is_exclusive() -> None:
    window = busiest_window(series_of({"19:00": 5, "19:05": 5}))

    assert window is not None
    assert (window.start, window.end, window.events) == (minute("19:00"), minute("19:05"), 5)


def test_busiest_window_tie_goes_to_the_earlier_window() -> None:
    window = busiest_window(series_of({"19:00": 4, "19:30": 4}))

    assert window is not None
    assert window.start == minute("19:00")


# rebuild


async def test_rebuild_rows_give_the_same_counts_as_folding_the_same_events(
    engine: Engine,
) -> None:
    events = [
        stored_event("e1", event_type="match_start", timestamp=KICK_OFF),
        stored_event("e2", team_id="al-nassr", timestamp=KICK_OFF + timedelta(minutes=12)),
        stored_event("e3", timestamp=KICK_OFF + timedelta(minutes=12, seconds=40)),
        stored_event("e4", event_type="yellow_card", timestamp=KICK_OFF + timedelta(minutes=55)),
        stored_event("e5", event_type="match_end", timestamp=KICK_OFF + timedelta(minutes=97)),
        stored_event("e6", match_id="ittihad-vs-ahli", team_id="ahli", event_type="corner"),
    ]
    await engine.events.insert_many(events)

    rows, _ = await engine.feed.snapshot(rebuild_pipeline(None))
    rebuilt = summaries_from_rebuild_rows(rows)
    folded = fold_events(events, KICK_OFF)

    assert set(rebuilt) == set(folded) == {"alhilal-vs-alnassr", "ittihad-vs-ahli"}
    for match_id, increment in folded.items():
        summary = rebuilt[match_id]
        assert summary["total"] == increment.total
        assert summary["byType"] == dict(increment.by_type)
        assert summary["byTeam"] == dict(increment.by_team)
        assert summary["perMinute"] == dict(increment.per_minute)
        assert summary["firstEventAt"] == increment.first_event_at
        assert summary["lastEventAt"] == increment.last_event_at
        assert summary["statusRank"] == increment.status_rank


async def test_rebuild_of_one_match_counts_only_that_match(engine: Engine) -> None:
    await engine.events.insert_many(
        [
            stored_event("e1"),
            stored_event("e2"),
            stored_event("e3", match_id="ittihad-vs-ahli", team_id="ahli"),
        ]
    )

    rows, _ = await engine.feed.snapshot(rebuild_pipeline("ittihad-vs-ahli"))

    rebuilt = summaries_from_rebuild_rows(rows)
    assert list(rebuilt) == ["ittihad-vs-ahli"]
    assert rebuilt["ittihad-vs-ahli"]["total"] == 1


def test_rebuild_rows_merge_into_one_summary_per_match() -> None:
    rows = [
        {
            "_id": {
                "matchId": "derby",
                "eventType": "match_end",
                "teamId": "home",
                "minute": "2025-05-10T20:37",
            },
            "events": 1,
            "firstEventAt": datetime(2025, 5, 10, 20, 37, 1),
            "lastEventAt": datetime(2025, 5, 10, 20, 37, 1),
        },
        {
            "_id": {
                "matchId": "derby",
                "eventType": "goal",
                "teamId": "away",
                "minute": "2025-05-10T19:12",
            },
            "events": 3,
            "firstEventAt": datetime(2025, 5, 10, 19, 12, 5),
            "lastEventAt": datetime(2025, 5, 10, 19, 12, 50),
        },
    ]

    summaries = summaries_from_rebuild_rows(rows)

    assert summaries == {
        "derby": {
            "total": 4,
            "byType": {"match_end": 1, "goal": 3},
            "byTeam": {"home": 1, "away": 3},
            "goals": {"away": 3},
            "ownGoals": {},
            "perMinute": {"2025-05-10T20:37": 1, "2025-05-10T19:12": 3},
            "overflow": {"teams": 0, "minutes": 0},
            "firstEventAt": datetime(2025, 5, 10, 19, 12, 5, tzinfo=UTC),
            "lastEventAt": datetime(2025, 5, 10, 20, 37, 1, tzinfo=UTC),
            "kickoffAt": None,
            "statusRank": 2,
        }
    }
