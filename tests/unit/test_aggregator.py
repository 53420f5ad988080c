"""The aggregator loop on the embedded engine: every stored event counted exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fanfinity.pipeline.aggregator import Aggregator
from fanfinity.storage.engine import Engine
from fanfinity.storage.repositories import CheckpointConflict

KICK_OFF = datetime(2025, 5, 10, 19, 0, tzinfo=UTC)
MATCH = "alhilal-vs-alnassr"
PATIENCE_S = 5.0


def stored_event(
    event_id: str, *, event_type: str = "goal", team_id: str = "al-hilal", minute: int = 0
) -> dict[str, Any]:
    timestamp = KICK_OFF + timedelta(minutes=minute)
    return {
        "_id": event_id,
        "matchId": MATCH,
        "eventType": event_type,
        "timestamp": timestamp,
        "teamId": team_id,
        "receivedAt": timestamp,
        "fingerprint": f"fp-{event_id}",
    }


def make_aggregator(engine: Engine, batch_size: int = 2) -> Aggregator:
    return Aggregator(
        engine, batch_size=batch_size, stall_after_s=30.0, active_window=timedelta(minutes=10)
    )


async def summary_total(engine: Engine) -> int:
    summary = await engine.summaries.get(MATCH)
    return 0 if summary is None else int(summary["total"])


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll until `check` holds; a bound for a background loop, not a speed requirement."""
    deadline = asyncio.get_running_loop().time() + PATIENCE_S
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail("the aggregator did not get there in time")
        await asyncio.sleep(0.02)


@pytest.fixture
async def run_aggregator() -> AsyncIterator[Callable[[Aggregator], asyncio.Task[None]]]:
    running: list[tuple[Aggregator, asyncio.Task[None]]] = []

    def start(aggregator: Aggregator) -> asyncio.Task[None]:
        task = asyncio.create_task(aggregator.run())
        running.append((aggregator, task))
        return task

    yield start
    for aggregator, task in running:
        aggregator.stop()
        await asyncio.wait_for(task, timeout=PATIENCE_S)


async def stop(aggregator: Aggregator, task: asyncio.Task[None]) -> None:
    aggregator.stop()
    await asyncio.wait_for(task, timeout=PATIENCE_S)


async def test_events_inserted_while_running_are_counted_once(
    engine: Engine, run_aggregator: Callable[[Aggregator], asyncio.Task[None]]
) -> None:
    aggregator = make_aggregator(engine)
    run_aggregator(aggregator)
    await eventually(lambda: _has_checkpoint(engine))  # following the feed

    await engine.events.insert_many(
        [
            stored_event("e1", event_type="match_start"),
            stored_event("e2", minute=12),
            stored_event("e3", team_id="al-nassr", minute=12),
        ]
    )
    # A producer's retry of e2 plus two new events.
    await engine.events.insert_many(
        [stored_event("e2", minute=12), stored_event("e4", minute=30), stored_event("e5")]
    )
    await eventually(lambda: _total_is(engine, 5))

    summary = await engine.summaries.get(MATCH)
    assert summary is not None
    assert summary["byType"] == {"match_start": 1, "goal": 4}
    assert summary["byTeam"] == {"al-hilal": 4, "al-nassr": 1}
    assert summary["perMinute"] == {
        "2025-05-10T19:00": 2,
        "2025-05-10T19:12": 2,
        "2025-05-10T19:30": 1,
    }
    assert summary["statusRank"] == 1
    assert aggregator.events_processed == 5
    assert aggregator.healthy()


async def test_counted_events_are_copied_for_the_data_team(
    engine: Engine, run_aggregator: Callable[[Aggregator], asyncio.Task[None]]
) -> None:
    run_aggregator(make_aggregator(engine))
    await eventually(lambda: _has_checkpoint(engine))

    await engine.events.insert_many([stored_event("e1"), stored_event("e2", minute=5)])
    await eventually(lambda: _total_is(engine, 2))

    copies = await engine.database["match_events"].find({}).to_list(None)
    assert sorted(copy["eventId"] for copy in copies) == ["e1", "e2"]
    assert copies[0]["meta"] == {"matchId": MATCH, "eventType": "goal", "teamId": "al-hilal"}


async def test_events_counted_by_the_first_rebuild_are_also_copied_for_the_data_team(
    engine: Engine, run_aggregator: Callable[[Aggregator], asyncio.Task[None]]
) -> None:
    """MatchEventRepository: "written at least once per counted event", however it was counted."""
    await engine.events.insert_many([stored_event("before-start")])
    run_aggregator(make_aggregator(engine))
    await eventually(lambda: _total_is(engine, 1))

    await engine.events.insert_many([stored_event("after-start")])
    await eventually(lambda: _total_is(engine, 2))

    copies = await engine.database["match_events"].find({}).to_list(None)
    assert sorted(copy["eventId"] for copy in copies) == ["after-start", "before-start"]


async def test_events_stored_before_the_first_start_are_counted_by_the_rebuild(
    engine: Engine, run_aggregator: Callable[[Aggregator], asyncio.Task[None]]
) -> None:
    await engine.events.insert_many([stored_event("old1"), stored_event("old2")])
    run_aggregator(make_aggregator(engine))
    await eventually(lambda: _total_is(engine, 2))

    await engine.events.insert_many([stored_event("new1", minute=1)])

    await eventually(lambda: _total_is(engine, 3))
    await asyncio.sleep(0.3)  # one more feed round: nothing may be counted twice
    assert await summary_total(engine) == 3


async def test_restarted_aggregator_continues_after_its_checkpoint(engine: Engine) -> None:
    first = make_aggregator(engine)
    first_task = asyncio.create_task(first.run())
    await engine.events.insert_many([stored_event("e1"), stored_event("e2"), stored_event("e3")])
    await eventually(lambda: _total_is(engine, 3))
    await stop(first, first_task)

    await engine.events.insert_many([stored_event("e4"), stored_event("e5")])
    second = make_aggregator(engine)
    second_task = asyncio.create_task(second.run())
    await eventually(lambda: _total_is(engine, 5))
    await asyncio.sleep(0.3)
    await stop(second, second_task)

    assert await summary_total(engine) == 5
    assert second.events_processed == 2


async def test_lost_feed_history_rebuilds_instead_of_skipping_or_double_counting(
    engine: Engine,
) -> None:
    first = make_aggregator(engine)
    first_task = asyncio.create_task(first.run())
    await engine.events.insert_many([stored_event(f"e{n}") for n in range(6)])
    await eventually(lambda: _total_is(engine, 6))
    await stop(first, first_task)
    # The checkpoint now points before history the feed has already dropped.
    checkpoint = await engine.checkpoints.load()
    assert checkpoint is not None
    await engine.checkpoints.advance(checkpoint["generation"], {"sequence": 0}, KICK_OFF)

    await engine.events.insert_many([stored_event("e6")])
    second = make_aggregator(engine)
    second_task = asyncio.create_task(second.run())
    await eventually(lambda: _total_is(engine, 7))
    await asyncio.sleep(0.3)
    await stop(second, second_task)

    assert await summary_total(engine) == 7


async def test_redelivered_batch_with_a_stale_generation_is_refused_and_not_counted(
    engine: Engine,
) -> None:
    aggregator = make_aggregator(engine)
    await aggregator.rebuild()  # empty store: the first checkpoint
    first = await engine.checkpoints.load()
    assert first is not None
    batch = [stored_event("e1"), stored_event("e2")]
    generation = await aggregator._commit(batch, {"sequence": 2}, first["generation"])

    with pytest.raises(CheckpointConflict):
        await aggregator._commit(batch, {"sequence": 2}, first["generation"])

    assert generation == first["generation"] + 1
    assert await summary_total(engine) == 2
    checkpoint = await engine.checkpoints.load()
    assert checkpoint is not None
    assert (checkpoint["generation"], checkpoint["position"]) == (generation, {"sequence": 2})


async def test_rebuild_recounts_a_summary_that_drifted(engine: Engine) -> None:
    aggregator = make_aggregator(engine)
    await engine.events.insert_many([stored_event("e1"), stored_event("e2", minute=3)])
    await engine.summaries.add_ingest_latency({MATCH: {12: 4}})
    await engine.database["match_summaries"].update_one({"_id": MATCH}, {"$inc": {"total": 40}})

    report = await aggregator.rebuild()

    assert (report.matches, report.events) == (1, 2)
    summary = await engine.summaries.get(MATCH)
    assert summary is not None
    assert summary["total"] == 2
    assert summary["perMinute"] == {"2025-05-10T19:00": 1, "2025-05-10T19:03": 1}
    assert summary["ingestLatency"] == {"b12": 4}  # measurements survive a rebuild


async def test_stopped_aggregator_reports_not_running(engine: Engine) -> None:
    aggregator = make_aggregator(engine)
    task = asyncio.create_task(aggregator.run())
    await eventually(lambda: _is_running(aggregator))

    await stop(aggregator, task)

    assert not aggregator.running
    assert not aggregator.healthy()


async def _total_is(engine: Engine, expected: int) -> bool:
    return await summary_total(engine) == expected


async def _has_checkpoint(engine: Engine) -> bool:
    return await engine.checkpoints.load() is not None


async def _is_running(aggregator: Aggregator) -> bool:
    return aggregator.running
