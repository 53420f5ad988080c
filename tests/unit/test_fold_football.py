"""What fans read: kick-off, match minutes and the score, and a summary bounded whatever is sent.

Everything here must come out the same whatever order the events arrive in, and a rebuild from
the stored events must give the body the live fold gave.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fanfinity import metrics
from fanfinity.config import MAX_MINUTES_LIMIT, MAX_TEAMS_LIMIT, Settings
from fanfinity.pipeline.aggregator import Aggregator
from fanfinity.pipeline.fold import (
    DEFAULT_MAX_MINUTES,
    DEFAULT_MAX_TEAMS,
    AdmittedKeys,
    SummaryBounds,
    bound_increments,
    fold_events,
    live_match_minute,
    match_minute,
    score,
)
from fanfinity.pipeline.reads import encode_metrics, match_metrics
from fanfinity.storage.engine import Engine, open_engine

MATCH = "alhilal-vs-alnassr"
KICK_OFF = datetime(2025, 5, 10, 19, 0, tzinfo=UTC)
APPLIED_AT = datetime(2025, 5, 10, 22, 0, tzinfo=UTC)
TINY = SummaryBounds(max_teams=2, max_minutes=3)
CHANGING_FIELDS = ("asOf", "generatedAt", "processingLagMs")


def event(
    number: int,
    event_type: str = "corner",
    team: str = "al-hilal",
    after: timedelta = timedelta(),
    received: timedelta | None = None,
) -> dict[str, Any]:
    """A stored event `after` kick-off, received `received` after kick-off (default: at once)."""
    timestamp = KICK_OFF + after
    return {
        "_id": f"event-{number:05d}",
        "matchId": MATCH,
        "eventType": event_type,
        "timestamp": timestamp,
        "teamId": team,
        "receivedAt": KICK_OFF + (after if received is None else received),
        "fingerprint": f"fp-{number}",
    }


def aggregator(engine: Engine, bounds: SummaryBounds = TINY) -> Aggregator:
    return Aggregator(
        engine,
        batch_size=100,
        stall_after_s=30.0,
        active_window=timedelta(minutes=10),
        bounds=bounds,
    )


async def count_in_batches(
    engine: Engine, batches: list[list[dict[str, Any]]], bounds: SummaryBounds = TINY
) -> Aggregator:
    """What the aggregator does with these batches, checkpoint and all."""
    folding = aggregator(engine, bounds)
    await folding.rebuild()  # the first checkpoint, on an empty store
    checkpoint = await engine.checkpoints.load()
    assert checkpoint is not None
    generation, sequence = checkpoint["generation"], 0
    for batch in batches:
        await engine.events.insert_many(batch)
        sequence += len(batch)
        generation = await folding._commit(batch, {"sequence": sequence}, generation)
    return folding


async def body_of(engine: Engine) -> dict[str, Any]:
    summary = await engine.summaries.get(MATCH)
    assert summary is not None
    body: dict[str, Any] = msgspec.json.decode(encode_metrics(match_metrics(summary, APPLIED_AT)))
    return {key: value for key, value in body.items() if key not in CHANGING_FIELDS}


# match minutes


def test_an_event_42_05_after_kick_off_is_in_the_43rd_minute() -> None:
    assert match_minute(KICK_OFF + timedelta(minutes=42), KICK_OFF) == 43
    assert live_match_minute(KICK_OFF + timedelta(minutes=42, seconds=5), KICK_OFF) == 43


def test_first_minute_after_kick_off_is_minute_one() -> None:
    assert match_minute(KICK_OFF, KICK_OFF) == 1
    assert live_match_minute(KICK_OFF, KICK_OFF) == 1


def test_a_wall_minute_takes_the_match_minute_holding_most_of_it() -> None:
    kick_off = KICK_OFF + timedelta(seconds=20)  # 19:00:20
    # 19:42:00-19:42:59 is 41:40-42:39 after kick-off: mostly the 43rd minute.
    assert match_minute(KICK_OFF + timedelta(minutes=42), kick_off) == 43
    kick_off = KICK_OFF + timedelta(seconds=45)
    # 19:42 is 41:15-42:14 after this kick-off: mostly the 42nd minute.
    assert match_minute(KICK_OFF + timedelta(minutes=42), kick_off) == 42


def test_no_match_minute_before_kick_off_or_without_one() -> None:
    assert match_minute(KICK_OFF - timedelta(minutes=1), KICK_OFF) is None
    assert match_minute(KICK_OFF, None) is None
    assert live_match_minute(KICK_OFF - timedelta(seconds=1), KICK_OFF) is None


def test_kick_off_is_the_earliest_match_start() -> None:
    events = [
        event(1, "match_start", after=timedelta(minutes=1)),
        event(2, "match_start"),
        event(3, "goal", after=timedelta(minutes=-5)),  # a goal is not a kick-off
    ]
    assert fold_events(events, APPLIED_AT)[MATCH].kickoff_at == KICK_OFF


async def test_late_match_start_gives_the_same_body_as_an_early_one(engine: Engine) -> None:
    play = [
        event(1, "goal", "al-hilal", timedelta(minutes=12, seconds=10)),
        event(2, "corner", "al-nassr", timedelta(minutes=30)),
        event(3, "own_goal", "al-hilal", timedelta(minutes=44, seconds=59)),
    ]
    start = event(0, "match_start", "al-hilal")
    early = await open_engine(Settings())
    try:
        await count_in_batches(early, [[start], play], SummaryBounds())
        await count_in_batches(engine, [play, [start]], SummaryBounds())

        late_body, early_body = await body_of(engine), await body_of(early)
    finally:
        early.close()

    assert late_body == early_body
    assert [entry["matchMinute"] for entry in late_body["eventsPerMinute"]] == [1, 13, 31, 45]
    assert late_body["score"] == {"al-hilal": 1, "al-nassr": 1}


# the score


def test_goals_and_penalty_goals_count_for_their_team() -> None:
    events = [
        event(1, "match_start"),
        event(2, "goal", "al-hilal"),
        event(3, "penalty_goal", "al-hilal"),
        event(4, "penalty_missed", "al-nassr"),
        event(5, "goal", "al-nassr"),
    ]
    increment = fold_events(events, APPLIED_AT)[MATCH]
    assert score(increment.by_team, increment.goals, increment.own_goals) == {
        "al-hilal": 2,
        "al-nassr": 1,
    }


def test_an_own_goal_counts_for_the_other_side() -> None:
    events = [event(1, "match_start", "al-hilal"), event(2, "own_goal", "al-nassr")]
    increment = fold_events(events, APPLIED_AT)[MATCH]
    assert score(increment.by_team, increment.goals, increment.own_goals) == {
        "al-hilal": 1,
        "al-nassr": 0,
    }


def test_an_own_goal_before_the_other_side_appears_counts_later() -> None:
    assert score({"al-nassr": 1}, {}, {"al-nassr": 1}) == {"al-nassr": 0}
    assert score({"al-nassr": 1, "al-hilal": 1}, {}, {"al-nassr": 1}) == {
        "al-hilal": 1,
        "al-nassr": 0,
    }


def test_the_sides_are_the_two_busiest_teams() -> None:
    by_team = {"home": 30, "away": 25, "referee": 2}
    assert score(by_team, {"home": 1}, {"away": 1, "referee": 1}) == {"home": 2, "away": 0}


# bounds


def test_events_beyond_the_team_bound_go_to_overflow_but_stay_in_the_totals() -> None:
    events = [event(n, "goal", team) for n, team in enumerate(["a", "b", "c", "c", "a", "d"])]

    (bounded,) = bound_increments(fold_events(events, APPLIED_AT).values(), {}, TINY)

    assert dict(bounded.by_team) == {"a": 2, "b": 1}
    assert dict(bounded.goals) == {"a": 2, "b": 1}
    assert bounded.team_overflow == 3
    assert bounded.total == 6
    assert dict(bounded.by_type) == {"goal": 6}


def test_teams_are_admitted_by_first_receipt_not_by_name() -> None:
    events = [
        event(1, team="zulu", received=timedelta(seconds=1)),
        event(2, team="alpha", received=timedelta(seconds=3)),
        event(3, team="mike", received=timedelta(seconds=2)),
    ]
    (bounded,) = bound_increments(fold_events(events, APPLIED_AT).values(), {}, TINY)
    assert set(bounded.by_team) == {"zulu", "mike"}


def test_keys_a_summary_holds_keep_counting_after_the_bound_is_reached() -> None:
    held = AdmittedKeys(teams=frozenset({"a", "b"}), minutes=frozenset())
    events = [event(1, team="c"), event(2, team="b")]

    (bounded,) = bound_increments(fold_events(events, APPLIED_AT).values(), {MATCH: held}, TINY)

    assert dict(bounded.by_team) == {"b": 1}
    assert bounded.team_overflow == 1


def test_minutes_beyond_the_bound_go_to_overflow() -> None:
    events = [event(n, after=timedelta(minutes=n)) for n in range(5)]
    (bounded,) = bound_increments(fold_events(events, APPLIED_AT).values(), {}, TINY)
    assert len(bounded.per_minute) == 3
    assert bounded.minute_overflow == 2
    assert sum(bounded.per_minute.values()) + bounded.minute_overflow == bounded.total


async def test_flooded_match_is_counted_once_and_shows_its_overflow(engine: Engine) -> None:
    before = metrics.SUMMARY_OVERFLOW.labels("team")._value.get()
    flood = [
        event(n, "goal", f"team-{n}", timedelta(minutes=n), received=timedelta(seconds=n))
        for n in range(40)
    ]
    await count_in_batches(engine, [flood[:15], flood[15:]])

    body = await body_of(engine)
    assert body["totalEvents"] == 40
    assert body["eventsByType"] == {"goal": 40}
    assert body["eventsByTeam"] == {"team-0": 1, "team-1": 1}
    assert [entry["events"] for entry in body["eventsPerMinute"]] == [1, 1, 1]
    assert body["overflow"] == {"teams": 38, "minutes": 37}
    assert body["score"] == {"team-0": 1, "team-1": 1}
    assert metrics.SUMMARY_OVERFLOW.labels("team")._value.get() - before == 38


async def test_rebuild_admits_the_keys_the_live_fold_admitted(engine: Engine) -> None:
    events = [
        event(n, "goal", f"team-{n % 5}", timedelta(minutes=n % 7), received=timedelta(seconds=n))
        for n in range(30)
    ]
    folding = await count_in_batches(engine, [events[:4], events[4:13], events[13:]])
    live = await body_of(engine)

    await folding.rebuild()

    assert await body_of(engine) == live
    assert live["overflow"]["teams"] > 0
    assert live["overflow"]["minutes"] > 0


@pytest.mark.parametrize(
    ("max_teams", "max_minutes"),
    [(DEFAULT_MAX_TEAMS, DEFAULT_MAX_MINUTES), (MAX_TEAMS_LIMIT, MAX_MINUTES_LIMIT)],
)
def test_a_flooded_match_at_the_bounds_stays_under_64_kib(max_teams: int, max_minutes: int) -> None:
    """The worst body the bounds allow: every team id 64 characters, every count huge."""
    teams = {f"{n:02d}".ljust(64, "x"): 10**9 for n in range(max_teams)}
    minutes = {
        (KICK_OFF + timedelta(minutes=n)).strftime("%Y-%m-%dT%H:%M"): 10**9
        for n in range(max_minutes)
    }
    summary = {
        "_id": "m".ljust(64, "x"),
        "total": 10**12,
        "byType": {kind: 10**11 for kind in ("goal", "own_goal", "penalty_goal", "corner")},
        "byTeam": teams,
        "goals": teams,
        "perMinute": minutes,
        "overflow": {"teams": 10**12, "minutes": 10**12},
        "kickoffAt": KICK_OFF,
        "firstEventAt": KICK_OFF,
        "lastEventAt": KICK_OFF,
        "statusRank": 1,
        "updatedAt": APPLIED_AT,
        "ingestLatency": {f"b{n}": 10**9 for n in range(101)},
        "processingLag": {f"b{n}": 10**9 for n in range(101)},
    }

    body = encode_metrics(match_metrics(summary, APPLIED_AT))

    assert len(body) <= 64 * 1024, len(body)


event_fields = st.tuples(
    st.sampled_from(["goal", "own_goal", "corner", "match_start", "penalty_goal"]),
    st.sampled_from(["a", "b", "c", "d"]),
    st.integers(min_value=-10, max_value=20),  # minutes after kick-off
)


@settings(max_examples=25, deadline=None)
@given(fields=st.lists(event_fields, min_size=1, max_size=30), cuts=st.sets(st.integers(1, 29)))
def test_any_batching_in_receipt_order_counts_each_event_once_and_rebuilds_alike(
    fields: list[tuple[str, str, int]], cuts: set[int]
) -> None:
    events = [
        event(n, kind, team, timedelta(minutes=minute), received=timedelta(seconds=n))
        for n, (kind, team, minute) in enumerate(fields)
    ]
    bounds = [0, *sorted(cut for cut in cuts if cut < len(events)), len(events)]
    batches = [events[start:end] for start, end in itertools.pairwise(bounds)]

    async def scenario() -> None:
        engine = await open_engine(Settings())
        try:
            folding = await count_in_batches(engine, batches)
            live = await body_of(engine)
            overflow = live["overflow"]
            assert live["totalEvents"] == len(events)
            assert sum(live["eventsByType"].values()) == len(events)
            assert sum(live["eventsByTeam"].values()) + overflow["teams"] == len(events)
            minutes = sum(entry["events"] for entry in live["eventsPerMinute"])
            assert minutes + overflow["minutes"] == len(events)
            assert len(live["eventsByTeam"]) <= TINY.max_teams
            assert len(live["eventsPerMinute"]) <= TINY.max_minutes
            await folding.rebuild()
            assert await body_of(engine) == live
        finally:
            engine.close()

    asyncio.run(scenario())
