"""Properties of the fold on the embedded engine: batching and re-delivery never change the counts.

Each example opens a fresh embedded engine (a few milliseconds) inside its own event loop, so the
examples share nothing.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fanfinity.config import Settings
from fanfinity.pipeline import fold
from fanfinity.pipeline.aggregator import Aggregator
from fanfinity.pipeline.fold import (
    MINUTE_KEYS_KEPT,
    SummaryIncrement,
    fold_events,
    fold_into,
    minute_key,
)
from fanfinity.schemas import EventType
from fanfinity.storage.engine import open_engine
from fanfinity.storage.repositories import CheckpointConflict, SummaryRepository

KICK_OFF = datetime(2025, 5, 10, 19, 0, tzinfo=UTC)
APPLIED_AT = datetime(2025, 5, 10, 21, 0, tzinfo=UTC)
MATCHES = ("alhilal-vs-alnassr", "ittihad-vs-ahli", "shabab-vs-ettifaq")
TEAMS = ("home", "away")
COUNTED_FIELDS = ("total", "byType", "byTeam", "perMinute", "firstEventAt", "lastEventAt")

event_fields = st.tuples(
    st.sampled_from(MATCHES),
    st.sampled_from([str(event_type) for event_type in EventType]),
    st.sampled_from(TEAMS),
    st.integers(min_value=0, max_value=6 * 60 * 60),  # seconds after kick-off
    st.integers(min_value=0, max_value=10_000),  # milliseconds from receipt to apply
)
event_lists = st.lists(event_fields, min_size=1, max_size=40)


def stored_events(fields: list[tuple[str, str, str, int, int]]) -> list[dict[str, Any]]:
    events = []
    for number, (match_id, event_type, team_id, second, lag_ms) in enumerate(fields):
        timestamp = KICK_OFF + timedelta(seconds=second)
        events.append(
            {
                "_id": f"event-{number}",
                "matchId": match_id,
                "eventType": event_type,
                "timestamp": timestamp,
                "teamId": team_id,
                "receivedAt": APPLIED_AT - timedelta(milliseconds=lag_ms),
                "fingerprint": f"fp-{number}",
            }
        )
    return events


def split(items: list[Any], cuts: set[int]) -> list[list[Any]]:
    bounds = [0, *sorted(cut for cut in cuts if 0 < cut < len(items)), len(items)]
    return [items[start:end] for start, end in itertools.pairwise(bounds)]


def counted_once(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What each match's summary must say, counted by hand."""
    expected: dict[str, dict[str, Any]] = {}
    for event in events:
        summary = expected.setdefault(
            event["matchId"],
            {
                "total": 0,
                "byType": Counter(),
                "byTeam": Counter(),
                "perMinute": Counter(),
                "firstEventAt": event["timestamp"],
                "lastEventAt": event["timestamp"],
            },
        )
        summary["total"] += 1
        summary["byType"][event["eventType"]] += 1
        summary["byTeam"][event["teamId"]] += 1
        summary["perMinute"][event["timestamp"].strftime("%Y-%m-%dT%H:%M")] += 1
        summary["firstEventAt"] = min(summary["firstEventAt"], event["timestamp"])
        summary["lastEventAt"] = max(summary["lastEventAt"], event["timestamp"])
    for summary in expected.values():
        for name in ("byType", "byTeam", "perMinute"):
            summary[name] = dict(summary[name])
    return expected


def counted_fields(summary: dict[str, Any] | None) -> dict[str, Any]:
    assert summary is not None
    return {name: summary[name] for name in COUNTED_FIELDS}


@settings(max_examples=40, deadline=None)
@given(fields=event_lists, cuts=st.sets(st.integers(min_value=1, max_value=39)), data=st.data())
def test_any_split_into_batches_gives_the_same_summaries_as_one_batch(
    fields: list[tuple[str, str, str, int, int]], cuts: set[int], data: st.DataObject
) -> None:
    events = stored_events(fields)
    delivered = data.draw(st.permutations(events), label="delivery order")

    async def scenario() -> None:
        engine = await open_engine(Settings())
        try:
            one_batch = SummaryRepository(engine.database["summaries_one_batch"])
            batched = SummaryRepository(engine.database["summaries_batched"])
            await one_batch.apply(fold_events(events, APPLIED_AT).values(), APPLIED_AT)
            for batch in split(delivered, cuts):
                await batched.apply(fold_events(batch, APPLIED_AT).values(), APPLIED_AT)

            expected = counted_once(events)
            for match_id in MATCHES:
                single = await one_batch.get(match_id)
                several = await batched.get(match_id)
                if match_id not in expected:
                    assert single is None
                    assert several is None
                    continue
                assert counted_fields(several) == counted_fields(single) == expected[match_id]
                assert several is not None
                assert single is not None
                assert several["statusRank"] == single["statusRank"]
                assert several["processingLag"] == single["processingLag"]
        finally:
            engine.close()

    asyncio.run(scenario())


@settings(max_examples=60, deadline=None)
@given(fields=event_lists, cuts=st.sets(st.integers(min_value=1, max_value=39)))
def test_folding_a_batch_in_parts_gives_the_one_fold(
    fields: list[tuple[str, str, str, int, int]], cuts: set[int]
) -> None:
    """The aggregator folds a large batch in slices (yielding between them): same increments."""
    events = stored_events(fields)
    in_parts: dict[str, SummaryIncrement] = {}
    for part in split(events, cuts):
        fold_into(in_parts, part, APPLIED_AT)
    assert in_parts == fold_events(events, APPLIED_AT)


@settings(max_examples=40, deadline=None)
@given(
    fields=event_lists,
    cuts=st.sets(st.integers(min_value=1, max_value=39)),
    redeliver_after=st.lists(st.booleans(), min_size=40, max_size=40),
)
def test_redelivered_checkpointed_batches_are_counted_once(
    fields: list[tuple[str, str, str, int, int]],
    cuts: set[int],
    redeliver_after: list[bool],
) -> None:
    """A second aggregator (or a retry) holding a stale generation must not count a batch again."""
    events = stored_events(fields)

    async def scenario() -> None:
        engine = await open_engine(Settings())
        try:
            aggregator = Aggregator(
                engine, batch_size=100, stall_after_s=30.0, active_window=timedelta(minutes=10)
            )
            await aggregator.rebuild()  # the first checkpoint, on an empty store
            checkpoint = await engine.checkpoints.load()
            assert checkpoint is not None
            generation = checkpoint["generation"]
            sequence = 0
            for index, batch in enumerate(split(events, cuts)):
                sequence += len(batch)
                stale = generation
                generation = await aggregator._commit(batch, {"sequence": sequence}, generation)
                if redeliver_after[index]:
                    before = {m: await engine.summaries.get(m) for m in MATCHES}
                    with pytest.raises(CheckpointConflict):
                        await aggregator._commit(batch, {"sequence": sequence}, stale)
                    after = {m: await engine.summaries.get(m) for m in MATCHES}
                    assert after == before

            expected = counted_once(events)
            for match_id in MATCHES:
                summary = await engine.summaries.get(match_id)
                if match_id in expected:
                    assert counted_fields(summary) == expected[match_id]
                else:
                    assert summary is None
            assert aggregator.events_processed == len(events)
        finally:
            engine.close()

    asyncio.run(scenario())


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=3)), timezone(-timedelta(hours=5))]
        ),
    )
)
def test_a_minute_key_is_the_utc_minute_as_strftime_writes_it(moment: datetime) -> None:
    """Made or remembered (the second call, from another offset, finds the first's key)."""
    expected = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")
    assert minute_key(moment) == expected
    assert minute_key(moment.astimezone(timezone(timedelta(hours=-11)))) == expected


def test_the_remembered_minute_keys_are_bounded() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for minute in range(3 * MINUTE_KEYS_KEPT):
        moment = start + timedelta(minutes=minute, seconds=59, microseconds=999_999)
        assert minute_key(moment) == moment.strftime("%Y-%m-%dT%H:%M")
    assert 0 < len(fold._MINUTE_KEYS) <= MINUTE_KEYS_KEPT
