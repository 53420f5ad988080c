"""The aggregator on a real change stream and real transactions: each event counted exactly once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from bson import Timestamp

from fanfinity.pipeline.fold import fold_events
from fanfinity.pipeline.ingest import WriteOutcome
from fanfinity.storage.engine import Engine
from fanfinity.storage.models import MATCH_EVENTS, MATCH_SUMMARIES
from fanfinity.storage.repositories import CheckpointConflict, InsertReport
from tests.integration.conftest import (
    TEAMS,
    event_batch,
    eventually,
    expected_summaries,
    ingest,
    new_aggregator,
    new_match_id,
    running,
    running_batcher,
    stored_event,
    stored_summaries,
    totals,
    wait_for_exact_summaries,
)

pytestmark = pytest.mark.integration

DOTTED_TEAM = "fc.porto"


async def copied_event_ids(engine: Engine) -> set[str]:
    rows = (
        await engine.database[MATCH_EVENTS]
        .aggregate([{"$group": {"_id": "$eventId"}}])
        .to_list(None)
    )
    return {row["_id"] for row in rows}


async def test_aggregator_follows_the_stream_and_a_new_one_resumes_from_the_checkpoint(
    open_engines: Callable[[], Awaitable[Engine]],
) -> None:
    matches = [new_match_id("resume-a"), new_match_id("resume-b")]
    first_engine = await open_engines()
    first = new_aggregator(first_engine, batch_size=25)
    counted_live = event_batch(matches, 120)

    async with running(first) as task:
        # No checkpoint yet: it rebuilds from the (empty) events, checkpoints, then follows.
        await eventually(
            first_engine.checkpoints.load,
            lambda checkpoint: checkpoint is not None,
            what="the first checkpoint",
            watch=[task],
        )
        async with running_batcher(first_engine) as batcher:
            assert await ingest(batcher, counted_live) == [WriteOutcome.ACCEPTED] * 120
        await wait_for_exact_summaries(first_engine, watch=[task])

    assert first.events_processed == 120  # all of them came through the change stream
    checkpoint = await first_engine.checkpoints.load()
    assert checkpoint is not None
    assert "resumeToken" in checkpoint["position"]

    counted_after_restart = event_batch(matches, 60)
    async with running_batcher(first_engine) as batcher:
        assert await ingest(batcher, counted_after_restart) == [WriteOutcome.ACCEPTED] * 60
    assert sum((await totals(first_engine)).values()) == 120  # nobody is counting right now

    second_engine = await open_engines()  # a new process: new client, new aggregator
    second = new_aggregator(second_engine, batch_size=1_000)
    async with running(second) as task:
        await wait_for_exact_summaries(second_engine, watch=[task])

    # It resumed after the stored position: only what it had not seen, and no rebuild.
    assert second.events_processed == 60
    assert await stored_summaries(second_engine) == await expected_summaries(second_engine)
    assert sum((await totals(second_engine)).values()) == 180
    all_ids = {document["_id"] for document in counted_live + counted_after_restart}
    assert await copied_event_ids(second_engine) == all_ids  # the data team's time-series copy


async def test_stale_generation_commit_is_refused_and_its_increments_rolled_back(
    engine: Engine,
) -> None:
    match_id = new_match_id("guard")
    events = event_batch([match_id], 10)
    assert await engine.events.insert_many(events) == InsertReport()
    first_position = {"startAtOperationTime": Timestamp(1, 1)}
    assert await engine.checkpoints.advance(None, first_position, datetime.now(UTC)) == 1

    aggregator = new_aggregator(engine)
    second_position = {"startAtOperationTime": Timestamp(2, 1)}
    assert await aggregator._commit(events[:5], second_position, 1) == 2
    assert await totals(engine) == {match_id: 5}

    # Another copy still believes it is at generation 1: its commit must not count anything.
    with pytest.raises(CheckpointConflict):
        await aggregator._commit(events[5:], {"startAtOperationTime": Timestamp(3, 1)}, 1)
    assert await totals(engine) == {match_id: 5}
    checkpoint = await engine.checkpoints.load()
    assert checkpoint is not None
    assert checkpoint["generation"] == 2
    assert checkpoint["position"] == second_position

    # Increments applied before the guard fails in the same transaction are rolled back with it.
    applied_at = datetime.now(UTC)
    increments = fold_events(events[5:], applied_at)
    seen_inside: list[Any] = []

    async def increments_then_stale_checkpoint(session: Any) -> None:
        await engine.summaries.apply(increments.values(), applied_at, session)
        summary = await engine.database[MATCH_SUMMARIES].find_one(
            {"_id": match_id}, session=session
        )
        seen_inside.append(summary["total"])
        await engine.checkpoints.advance(
            1, {"startAtOperationTime": Timestamp(4, 1)}, applied_at, session
        )

    with pytest.raises(CheckpointConflict):
        await engine.unit_of_work.run(increments_then_stale_checkpoint)
    assert seen_inside[-1] == 10  # the $inc did run, inside the transaction
    assert await totals(engine) == {match_id: 5}  # and is gone with it
    assert (await engine.checkpoints.load() or {})["generation"] == 2


async def test_two_aggregators_at_once_count_every_event_exactly_once(
    open_engines: Callable[[], Awaitable[Engine]],
) -> None:
    matches = [new_match_id("pair-a"), new_match_id("pair-b"), new_match_id("pair-c")]
    writer = await open_engines()
    await new_aggregator(writer).rebuild()  # the first checkpoint, as a first deploy leaves it
    # Two copies (say an accidental second replica), cutting the stream at different places.
    one = new_aggregator(await open_engines(), batch_size=20)
    other = new_aggregator(await open_engines(), batch_size=7)
    waves = [event_batch(matches, 60) for _ in range(3)]

    async with running(one) as one_task, running(other) as other_task:
        async with running_batcher(writer, max_batch=25) as batcher:
            for wave in waves:
                assert await ingest(batcher, wave) == [WriteOutcome.ACCEPTED] * len(wave)
        await wait_for_exact_summaries(writer, watch=[one_task, other_task])

    # Both finished the batch in hand when stopped: still exact. Only committed batches reach
    # `events_processed`, so the two add up to each event once: the loser of every race for a
    # batch had its transaction refused by the generation guard instead of counting it again.
    assert await stored_summaries(writer) == await expected_summaries(writer)
    assert sum((await totals(writer)).values()) == 180
    assert one.events_processed + other.events_processed == 180
    checkpoint = await writer.checkpoints.load()
    assert checkpoint is not None
    assert checkpoint["generation"] >= 2


async def test_two_aggregators_starting_on_an_empty_database_still_count_exactly_once(
    open_engines: Callable[[], Awaitable[Engine]],
) -> None:
    matches = [new_match_id("race-a"), new_match_id("race-b")]
    writer = await open_engines()
    one = new_aggregator(await open_engines(), batch_size=50)
    other = new_aggregator(await open_engines(), batch_size=13)

    # Both find no checkpoint and rebuild at the same time as events arrive; one rebuild wins
    # the first checkpoint (the other's insert is a duplicate key, refused with its transaction).
    async with running(one) as one_task, running(other) as other_task:
        async with running_batcher(writer, max_batch=10) as batcher:
            for _ in range(4):
                wave = event_batch(matches, 30)
                assert await ingest(batcher, wave) == [WriteOutcome.ACCEPTED] * len(wave)
        await wait_for_exact_summaries(writer, watch=[one_task, other_task])

    assert await stored_summaries(writer) == await expected_summaries(writer)
    assert sum((await totals(writer)).values()) == 120


async def test_rebuild_counts_existing_events_then_the_stream_counts_only_new_ones(
    engine: Engine,
) -> None:
    matches = [new_match_id("rebuild-a"), new_match_id("rebuild-b")]
    # A team id with a '.' (identifiers allow it) must land under one key on both paths.
    dotted = [stored_event(matches[0], "goal", DOTTED_TEAM, minute=minute) for minute in (3, 9)]
    existing = [*event_batch(matches, 90), *dotted]
    assert await engine.events.insert_many(existing) == InsertReport()
    assert await engine.checkpoints.load() is None

    aggregator = new_aggregator(engine)
    report = await aggregator.rebuild()

    assert (report.matches, report.events) == (2, 92)
    assert await stored_summaries(engine) == await expected_summaries(engine)
    checkpoint = await engine.checkpoints.load()
    assert checkpoint is not None
    assert checkpoint["generation"] == 2  # 1: fenced for the rebuild, 2: rebuild finished
    assert "rebuilding" not in checkpoint
    assert isinstance(checkpoint["position"]["startAtOperationTime"], Timestamp)
    assert checkpoint["position"] == report.position
    assert await copied_event_ids(engine) == {event["_id"] for event in existing}

    before_start = event_batch(matches, 30)  # after the rebuild's snapshot, before anyone follows
    assert await engine.events.insert_many(before_start) == InsertReport()
    while_running = [*event_batch(matches, 29), stored_event(matches[0], "corner", DOTTED_TEAM)]
    async with running(aggregator) as task:
        assert await engine.events.insert_many(while_running) == InsertReport()
        await wait_for_exact_summaries(engine, watch=[task])

    assert aggregator.events_processed == 60  # the 92 rebuilt events were not delivered again
    assert await stored_summaries(engine) == await expected_summaries(engine)
    assert sum((await totals(engine)).values()) == 152
    teams = (await stored_summaries(engine))[matches[0]]["byTeam"]
    other_teams = [count for team, count in teams.items() if team not in TEAMS]
    assert other_teams == [3]  # the dotted team: two rebuilt, one streamed, under one key
    everything = existing + before_start + while_running
    assert await copied_event_ids(engine) == {event["_id"] for event in everything}
