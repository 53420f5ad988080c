"""The aggregator loop on the embedded engine: every stored event counted exactly once, whatever
fails (faults injected at the seams by tests/faults.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pymongo.errors import (
    AutoReconnect,
    DocumentTooLarge,
    ExecutionTimeout,
    OperationFailure,
    WriteError,
)

from fanfinity.pipeline import aggregator as aggregator_module
from fanfinity.pipeline.aggregator import FOLD_SLICE, Aggregator, Backoff
from fanfinity.pipeline.fold import fold_events
from fanfinity.pipeline.rebuild import rebuild_all
from fanfinity.storage.engine import Engine
from fanfinity.storage.repositories import CheckpointConflict, refusal_reason
from tests.factories import stored_event
from tests.faults import Faults, history_lost, with_faults
from tests.loop_turns import other_task_turns

KICK_OFF = datetime(2025, 5, 10, 19, 0, tzinfo=UTC)
MATCH = "alhilal-vs-alnassr"
PATIENCE_S = 5.0


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


async def copied_ids(engine: Engine) -> list[str]:
    return sorted(
        copy["eventId"] for copy in await engine.database["match_events"].find({}).to_list(None)
    )


async def test_events_are_copied_as_they_arrive_and_counted_once_the_interval_has_passed(
    engine: Engine,
    run_aggregator: Callable[[Aggregator], asyncio.Task[None]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aggregator_module, "MIN_BATCH_INTERVAL_S", 2.0)
    monkeypatch.setattr(aggregator_module, "FEED_WAIT_S", 4.0)  # the feed never goes quiet here
    run_aggregator(make_aggregator(engine, batch_size=100))
    await eventually(lambda: _has_checkpoint(engine))
    await engine.events.insert_many([stored_event("e1")])
    await eventually(lambda: _total_is(engine, 1))  # the first batch after a quiet spell: at once
    counted_at = asyncio.get_running_loop().time()

    await engine.events.insert_many([stored_event("e2", minute=5)])
    await eventually(lambda: _copied(engine, ["e1", "e2"]))
    assert asyncio.get_running_loop().time() - counted_at < 1.0  # copied as it came
    assert await summary_total(engine) == 1  # and counted once the interval has passed
    await eventually(lambda: _total_is(engine, 2))
    assert await copied_ids(engine) == ["e1", "e2"]  # once each


async def test_events_taken_from_the_feed_are_counted_before_a_stop(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aggregator_module, "MIN_BATCH_INTERVAL_S", 60.0)
    monkeypatch.setattr(aggregator_module, "FEED_WAIT_S", 60.0)
    aggregator = make_aggregator(engine, batch_size=100)
    task = asyncio.create_task(aggregator.run())
    await eventually(lambda: _has_checkpoint(engine))
    await engine.events.insert_many([stored_event("e1")])
    await eventually(lambda: _total_is(engine, 1))
    await engine.events.insert_many([stored_event("e2", minute=5)])
    await eventually(lambda: _copied(engine, ["e1", "e2"]))  # taken, waiting for the interval

    aggregator.stop()
    await engine.events.insert_many([stored_event("e3", minute=6)])  # wakes the feed: it stops
    await asyncio.wait_for(task, timeout=PATIENCE_S)

    assert await summary_total(engine) == 3
    checkpoint = await engine.checkpoints.load()
    assert checkpoint is not None
    assert checkpoint["position"] == {"sequence": 3}  # a restart continues after all three


async def test_a_large_batch_is_folded_in_slices_that_let_other_tasks_run() -> None:
    events = [stored_event(f"e{number}", minute=number % 90) for number in range(10 * FOLD_SLICE)]
    async with other_task_turns() as turns:
        increments = await Aggregator._fold(events, KICK_OFF)

    assert increments == fold_events(events, KICK_OFF)
    assert turns.count >= 9  # one turn between each two slices


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


async def _copied(engine: Engine, event_ids: list[str]) -> bool:
    return await copied_ids(engine) == event_ids


async def _has_checkpoint(engine: Engine) -> bool:
    return await engine.checkpoints.load() is not None


async def _is_running(aggregator: Aggregator) -> bool:
    return aggregator.running


# --- the loop is total, the backoff resets, liveness -------------------------------------------


def fast_backoff() -> Backoff:
    return Backoff(first_s=0.01, max_s=0.05, current_s=0.01)


def faulty_aggregator(engine: Engine, faults: Faults, **options: Any) -> Aggregator:
    return Aggregator(
        with_faults(engine, faults),
        batch_size=options.pop("batch_size", 100),
        stall_after_s=30.0,
        active_window=timedelta(minutes=10),
        backoff=options.pop("backoff", fast_backoff()),
        **options,
    )


async def test_a_failed_commit_of_several_feed_batches_is_retried_without_a_rebuild(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aggregator_module, "MIN_BATCH_INTERVAL_S", 1.0)
    monkeypatch.setattr(aggregator_module, "FEED_WAIT_S", 5.0)
    faults = Faults()
    aggregator = faulty_aggregator(engine, faults)
    task = asyncio.create_task(aggregator.run())
    await eventually(lambda: _has_checkpoint(engine))
    rebuilds: list[Any] = []
    rebuild = aggregator.rebuild
    monkeypatch.setattr(aggregator, "rebuild", lambda *a: rebuilds.append(a) or rebuild(*a))
    await engine.events.insert_many([stored_event("e1")])
    await eventually(lambda: _total_is(engine, 1))
    for number in (2, 3):  # two feed batches held, not yet counted
        await engine.events.insert_many([stored_event(f"e{number}", minute=number)])
        await eventually(lambda n=number: _copied(engine, [f"e{i}" for i in range(1, n + 1)]))
    faults.arm("checkpoint.after_advance", times=1)  # their commit fails once, transiently

    await eventually(lambda: _total_is(engine, 3))  # retried from the checkpoint

    assert rebuilds == []  # the feed still had them: no recount of every stored event
    await stop(aggregator, task)


def test_backoff_doubles_up_to_its_ceiling_and_resets() -> None:
    backoff = Backoff(first_s=0.5, max_s=2.0, current_s=0.5)

    waits = [backoff.next() for _ in range(4)]
    backoff.reset()

    assert waits == [0.5, 1.0, 2.0, 2.0]
    assert backoff.next() == 0.5


async def test_a_rebuild_that_fails_after_lost_history_is_retried_not_fatal(
    engine: Engine, run_aggregator: Callable[[Aggregator], asyncio.Task[None]]
) -> None:
    """Before, the rebuild ran inside `except HistoryLost` and caught only CheckpointConflict:
    a network error there ended `run()` and counting stopped for good."""
    faults = Faults()
    aggregator = faulty_aggregator(engine, faults)
    task = run_aggregator(aggregator)
    await engine.events.insert_many([stored_event("e1")])
    await eventually(lambda: _total_is(engine, 1))

    faults.arm("feed.next", error=history_lost())
    faults.arm("rebuild.read", times=3)
    await engine.events.insert_many([stored_event("e2"), stored_event("e3")])
    await eventually(lambda: _total_is(engine, 3))

    assert faults.fired == {"feed.next": 1, "rebuild.read": 3}
    assert not task.done()
    assert aggregator.running
    assert not aggregator.ended_unexpectedly


async def test_the_backoff_resets_after_the_first_committed_batch(
    engine: Engine, run_aggregator: Callable[[Aggregator], asyncio.Task[None]]
) -> None:
    """Before, it reset only when `_follow_feed` returned (on stop): after a few blips every
    later failure waited the maximum."""
    faults = Faults()
    backoff = fast_backoff()
    run_aggregator(faulty_aggregator(engine, faults, backoff=backoff))
    await eventually(lambda: _has_checkpoint(engine))

    faults.arm("summaries.update", times=3)
    await engine.events.insert_many([stored_event("e1")])
    await eventually(lambda: _total_is(engine, 1))

    assert faults.fired["summaries.update"] == 3
    assert backoff.current_s == backoff.first_s


async def test_an_aggregator_task_that_ends_without_stop_says_so(engine: Engine) -> None:
    aggregator = make_aggregator(engine)
    task = asyncio.create_task(aggregator.run())
    await eventually(lambda: _is_running(aggregator))

    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    assert not aggregator.running
    assert aggregator.ended_unexpectedly


async def test_a_stopped_aggregator_did_not_end_unexpectedly(engine: Engine) -> None:
    aggregator = make_aggregator(engine)
    task = asyncio.create_task(aggregator.run())
    await eventually(lambda: _is_running(aggregator))

    await stop(aggregator, task)

    assert not aggregator.ended_unexpectedly


# --- one match never stalls the others (dead letters) ------------------------------------------


async def test_a_match_whose_update_the_store_refuses_is_parked_and_the_rest_counted(
    engine: Engine, run_aggregator: Callable[[Aggregator], asyncio.Task[None]]
) -> None:
    faults = Faults()
    faults.refuse_match("flooded-match")
    parked_before = _parked_metric()
    aggregator = faulty_aggregator(engine, faults)
    run_aggregator(aggregator)
    await eventually(lambda: _has_checkpoint(engine))

    await engine.events.insert_many(
        [
            stored_event("e1"),
            {**stored_event("f1"), "matchId": "flooded-match"},
            stored_event("e2", minute=1),
            {**stored_event("f2"), "matchId": "flooded-match"},
        ]
    )
    await eventually(lambda: _total_is(engine, 2))
    await engine.events.insert_many([stored_event("e3", minute=2)])  # counting goes on
    await eventually(lambda: _total_is(engine, 3))

    parked = await engine.dead_letters.parked("flooded-match")
    assert sorted(letter["eventId"] for letter in parked) == ["f1", "f2"]
    assert "10334" in parked[0]["reason"]
    assert await engine.summaries.get("flooded-match") is None
    assert aggregator.events_parked == 2
    assert _parked_metric() - parked_before == 2
    checkpoint = await engine.checkpoints.load()
    assert checkpoint is not None
    assert checkpoint["position"] == {"sequence": 5}  # past the parked events: no retry loop


async def test_rebuilding_the_match_once_fixed_brings_its_parked_events_back(
    engine: Engine, run_aggregator: Callable[[Aggregator], asyncio.Task[None]]
) -> None:
    """What `fanfinity rebuild --match ID` runs."""
    faults = Faults()
    faults.refuse_match("flooded-match")
    aggregator = faulty_aggregator(engine, faults)
    run_aggregator(aggregator)
    await eventually(lambda: _has_checkpoint(engine))
    flooded = [{**stored_event(f"f{n}", minute=n), "matchId": "flooded-match"} for n in range(3)]
    await engine.events.insert_many([*flooded, stored_event("e1")])
    await eventually(lambda: _total_is(engine, 1))
    await eventually(lambda: _parked_count(engine, 3))

    faults.clear()  # the cause is fixed
    report = await aggregator.rebuild("flooded-match")

    summary = await engine.summaries.get("flooded-match")
    assert summary is not None
    assert summary["total"] == 3
    assert (report.matches, report.events) == (1, 3)
    assert await engine.dead_letters.count() == 0
    assert await summary_total(engine) == 1  # the other match is untouched


@pytest.mark.parametrize(
    ("error", "refused"),
    [
        (WriteError("too large", 10334, {"code": 10334}), True),
        (OperationFailure("bad value", 2, {"code": 2}), True),
        (OperationFailure("failed to parse", 9, {"code": 9}), True),
        (DocumentTooLarge("BSON document too large"), True),
        (
            OperationFailure(
                "WriteConflict", 112, {"code": 112, "errorLabels": ["TransientTransactionError"]}
            ),
            False,
        ),
        (
            OperationFailure("too large", 10334, {"errorLabels": ["RetryableWriteError"]}),
            False,
        ),
        (ExecutionTimeout("operation exceeded time limit", 50, {"code": 50}), False),
        (AutoReconnect("connection reset"), False),
        (OperationFailure("not authorized", 13, {"code": 13}), False),
    ],
)
def test_only_errors_retrying_cannot_fix_are_refusals(error: Exception, refused: bool) -> None:
    """pymongo/errors.py: labels via `has_error_label`, `timeout`, `ConnectionFailure`."""
    assert (refusal_reason(error) is not None) is refused


# --- chunked, fenced rebuilds ------------------------------------------------------------------


async def test_a_chunked_rebuild_counts_every_match_and_empties_stale_ones(engine: Engine) -> None:
    events = [
        {**stored_event(f"{match}-{n}", minute=n), "matchId": match}
        for match in ("m1", "m2", "m3", "m4", "m5")
        for n in range(3)
    ]
    await engine.events.insert_many(events)
    await engine.summaries.apply(
        fold_events([{**stored_event("x"), "matchId": "gone"}], KICK_OFF).values(), KICK_OFF
    )

    report = await rebuild_all(engine, chunk_size=2)

    assert (report.matches, report.events) == (5, 15)
    for match in ("m1", "m2", "m3", "m4", "m5"):
        summary = await engine.summaries.get(match)
        assert summary is not None
        assert summary["total"] == 3
    gone = await engine.summaries.get("gone")
    assert gone is not None
    assert gone["total"] == 0
    checkpoint = await engine.checkpoints.load()
    assert checkpoint is not None
    assert "rebuilding" not in checkpoint
    assert checkpoint["position"] == {"sequence": 15}


async def test_a_rebuild_that_died_part_way_is_redone_before_the_feed_is_followed(
    engine: Engine, run_aggregator: Callable[[Aggregator], asyncio.Task[None]]
) -> None:
    events = [
        {**stored_event(f"{match}-{n}", minute=n), "matchId": match}
        for match in ("m1", "m2", "m3")
        for n in range(2)
    ]
    await engine.events.insert_many(events)
    faults = Faults()
    faults.arm("rebuild.chunk", times=1, error=RuntimeError("killed mid-rebuild"))
    with pytest.raises(RuntimeError):
        await rebuild_all(with_faults(engine, faults), chunk_size=1)
    marked = await engine.checkpoints.load()
    assert marked is not None
    assert "rebuilding" in marked

    # A fresh marker belongs to a rebuild that may still be working: wait out its lease.
    run_aggregator(faulty_aggregator(engine, Faults(), rebuild_lease_s=0.3))
    await engine.events.insert_many([{**stored_event("m1-9", minute=9), "matchId": "m1"}])
    for match, total in (("m1", 3), ("m2", 2), ("m3", 2)):
        await eventually(lambda match=match, total=total: _match_total_is(engine, match, total))
    await asyncio.sleep(0.3)
    assert await _match_total_is(engine, "m1", 3)


async def test_a_rebuild_fenced_out_by_another_stops_writing(engine: Engine) -> None:
    await engine.events.insert_many(
        [{**stored_event(f"{m}-0"), "matchId": m} for m in ("m1", "m2", "m3")]
    )
    faulty = with_faults(engine, Faults())
    original_hold = faulty.checkpoints.hold
    calls = 0

    async def rival_fences_before_the_second_chunk(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # another process starts its own rebuild now
            checkpoint = await engine.checkpoints.load()
            assert checkpoint is not None
            await engine.checkpoints.fence(
                checkpoint["generation"], {"sequence": 0}, "rival", KICK_OFF
            )
        await original_hold(*args, **kwargs)

    faulty.checkpoints.hold = rival_fences_before_the_second_chunk  # type: ignore[method-assign]
    with pytest.raises(CheckpointConflict):
        await rebuild_all(faulty, chunk_size=1)

    checkpoint = await engine.checkpoints.load()
    assert checkpoint is not None
    assert checkpoint["rebuilding"]["id"] == "rival"  # the loser wrote nothing after that
    assert await engine.summaries.get("m2") is None
    assert await engine.summaries.get("m3") is None


def _parked_metric() -> float:
    value = REGISTRY.get_sample_value("fanfinity_events_parked_total")
    return 0.0 if value is None else value


async def _parked_count(engine: Engine, expected: int) -> bool:
    return await engine.dead_letters.count() == expected


async def _match_total_is(engine: Engine, match_id: str, expected: int) -> bool:
    summary = await engine.summaries.get(match_id)
    return summary is not None and summary["total"] == expected
