"""The group-commit batcher over the real embedded `events` collection.

Store failures are simulated by wrapping the real `EventRepository`: slower, or refusing the write
the way PyMongo does when the primary is gone.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo.errors import AutoReconnect, BulkWriteError

from fanfinity.api.validation import decode_event
from fanfinity.errors import IngestOverloaded, ShuttingDown, StoreUnavailable
from fanfinity.pipeline.ingest import (
    BULK_PER_FLUSH,
    DEADLINE_SWEEP_S,
    IngestBatcher,
    IngestLatencyRecorder,
    WriteOutcome,
    event_document,
    resolve_outcomes,
)
from fanfinity.storage.engine import Engine
from fanfinity.storage.models import EVENTS
from fanfinity.storage.repositories import EventRepository, InsertReport, insert_report

NOW = datetime(2025, 5, 10, 20, 0, tzinfo=UTC)
PROMPTLY_S = 3.0  # far below the 10 s linger the size-flush tests configure


def goal(event_id: str, *, team_id: str = "al-hilal", minute: int = 42) -> dict[str, Any]:
    """The stored document of a goal, built the way the controller builds it."""
    body = {
        "eventId": event_id,
        "matchId": "alhilal-vs-alnassr",
        "eventType": "goal",
        "timestamp": f"2025-05-10T19:{minute:02d}:07+03:00",
        "teamId": team_id,
    }
    return event_document(decode_event(json.dumps(body).encode(), NOW), NOW)


def event_id(number: int) -> str:
    return f"00000000-0000-4000-8000-{number:012d}"


class SlowEventRepository(EventRepository):
    """The real repository behind a slow network."""

    def __init__(self, collection: Any, delay_s: float) -> None:
        super().__init__(collection)
        self.delay_s = delay_s

    async def insert_many(self, documents: Sequence[Mapping[str, Any]]) -> InsertReport:
        await asyncio.sleep(self.delay_s)
        return await super().insert_many(documents)


class PrimaryGoneEventRepository(EventRepository):
    """The real repository while the replica set has no primary."""

    async def insert_many(self, documents: Sequence[Mapping[str, Any]]) -> InsertReport:
        raise AutoReconnect("connection to mongo-0:27017 closed")


BatcherFactory = Callable[..., Awaitable[IngestBatcher]]


@pytest.fixture
def events_collection(engine: Engine) -> Any:
    return engine.database.get_collection(EVENTS)


@pytest.fixture
async def make_batcher(engine: Engine) -> AsyncIterator[BatcherFactory]:
    started: list[IngestBatcher] = []

    async def make(
        events: EventRepository | None = None,
        *,
        max_batch: int = 100,
        linger_s: float = 0.0,
        queue_max: int = 1_000,
        store_timeout_s: float = 5.0,
    ) -> IngestBatcher:
        batcher = IngestBatcher(
            events or engine.events,
            IngestLatencyRecorder(engine.summaries),
            max_batch=max_batch,
            linger_s=linger_s,
            queue_max=queue_max,
            store_timeout_s=store_timeout_s,
        )
        batcher.start()
        started.append(batcher)
        await asyncio.sleep(0)  # let it reach its idle wait, as in a running service
        return batcher

    yield make
    for batcher in started:
        await batcher.close(timeout_s=1.0)


async def submit_all(batcher: IngestBatcher, documents: list[dict[str, Any]]) -> list[Any]:
    futures = [batcher.submit_nowait(document, time.perf_counter()) for document in documents]
    return await asyncio.gather(*futures, return_exceptions=True)


# flushing


async def test_batch_filled_at_once_is_written_without_waiting_for_linger(
    engine: Engine, make_batcher: BatcherFactory
) -> None:
    batcher = await make_batcher(max_batch=3, linger_s=10.0, store_timeout_s=30.0)
    documents = [goal(event_id(n)) for n in range(3)]

    outcomes = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(doc, time.perf_counter()) for doc in documents)),
        timeout=PROMPTLY_S,
    )

    assert outcomes == [WriteOutcome.ACCEPTED] * 3
    assert await engine.events.count() == 3


async def test_batch_filled_while_lingering_is_written_without_waiting_for_linger(
    engine: Engine, make_batcher: BatcherFactory
) -> None:
    """Requests arrive one by one; the one that fills the batch must not wait out the linger."""
    batcher = await make_batcher(max_batch=3, linger_s=10.0, store_timeout_s=30.0)
    first = asyncio.create_task(batcher.submit(goal(event_id(0)), time.perf_counter()))
    await asyncio.sleep(0.05)  # the batcher has woken up for the first event and is lingering
    rest = [
        asyncio.create_task(batcher.submit(goal(event_id(n)), time.perf_counter())) for n in (1, 2)
    ]

    outcomes = await asyncio.wait_for(asyncio.gather(first, *rest), timeout=PROMPTLY_S)

    assert outcomes == [WriteOutcome.ACCEPTED] * 3
    assert await engine.events.count() == 3


async def test_lone_event_is_written_once_the_linger_has_passed(
    engine: Engine, make_batcher: BatcherFactory
) -> None:
    batcher = await make_batcher(max_batch=100, linger_s=0.05)

    outcome = await batcher.submit(goal(event_id(1)), time.perf_counter())

    assert outcome is WriteOutcome.ACCEPTED
    stored = await engine.events.get(event_id(1))
    assert stored is not None
    assert stored["teamId"] == "al-hilal"
    assert batcher.acknowledged == 1


async def test_more_events_than_one_batch_are_all_written(
    engine: Engine, make_batcher: BatcherFactory
) -> None:
    batcher = await make_batcher(max_batch=4)

    outcomes = await submit_all(batcher, [goal(event_id(n)) for n in range(10)])

    assert outcomes == [WriteOutcome.ACCEPTED] * 10
    assert await engine.events.count() == 10


# back-pressure and failures


async def test_full_queue_refuses_at_once_with_retry_after(
    engine: Engine, events_collection: Any, make_batcher: BatcherFactory
) -> None:
    slow = SlowEventRepository(events_collection, delay_s=0.2)
    batcher = await make_batcher(slow, max_batch=1, queue_max=2)
    queued = [batcher.submit_nowait(goal(event_id(n)), time.perf_counter()) for n in (1, 2)]

    with pytest.raises(IngestOverloaded) as refused:
        await batcher.submit(goal(event_id(3)), time.perf_counter())

    assert isinstance(refused.value, StoreUnavailable)
    assert refused.value.retry_after_s > 0
    assert refused.value.headers()["Retry-After"] == "1"
    assert refused.value.event_id == event_id(3)
    assert await asyncio.gather(*queued) == [WriteOutcome.ACCEPTED] * 2
    assert await engine.events.get(event_id(3)) is None


async def test_store_failure_gives_every_waiting_request_store_unavailable(
    events_collection: Any, make_batcher: BatcherFactory
) -> None:
    batcher = await make_batcher(PrimaryGoneEventRepository(events_collection), linger_s=0.01)
    documents = [goal(event_id(n)) for n in range(3)]

    outcomes = await submit_all(batcher, documents)

    assert all(isinstance(outcome, StoreUnavailable) for outcome in outcomes), outcomes
    assert [outcome.event_id for outcome in outcomes] == [event_id(n) for n in range(3)]
    assert batcher.acknowledged == 0
    assert await events_collection.count_documents({}) == 0


async def test_store_slower_than_the_timeout_gives_store_unavailable(
    events_collection: Any, make_batcher: BatcherFactory
) -> None:
    slow = SlowEventRepository(events_collection, delay_s=2.0)
    batcher = await make_batcher(slow, store_timeout_s=0.1)

    with pytest.raises(StoreUnavailable, match="not confirmed durable") as refused:
        await batcher.submit(goal(event_id(1)), time.perf_counter())

    assert refused.value.event_id == event_id(1)
    assert batcher.acknowledged == 0


async def test_each_waiting_write_is_answered_at_its_own_deadline(
    events_collection: Any, make_batcher: BatcherFactory
) -> None:
    """Writes queued at different moments behind a store that never answers in time each get
    their 503 one timeout after they were queued (give or take the sweep), not all together."""
    slow = SlowEventRepository(events_collection, delay_s=5.0)
    batcher = await make_batcher(slow, linger_s=0.0, store_timeout_s=0.4)
    started = time.monotonic()

    async def waited(delay_s: float, n: int) -> float:
        await asyncio.sleep(delay_s)
        queued = time.monotonic()
        with pytest.raises(StoreUnavailable, match="not confirmed durable"):
            await batcher.submit(goal(event_id(n)), time.perf_counter())
        return time.monotonic() - queued

    waits = await asyncio.gather(*(waited(0.15 * n, n) for n in range(4)))

    assert all(0.4 <= wait < 0.4 + DEADLINE_SWEEP_S + 0.25 for wait in waits), waits
    assert time.monotonic() - started < 0.45 + 0.4 + DEADLINE_SWEEP_S + 0.25


async def test_request_that_timed_out_is_not_counted_as_acknowledged(
    events_collection: Any, make_batcher: BatcherFactory
) -> None:
    """The producer was told 503, so the event must not count as acknowledged (202) here.

    Timeline: linger 0.5 s, then a 0.8 s write; the waiter's 1 s bound passes mid-write and the
    write still completes within the batch's own 1 s bound.
    """
    slow = SlowEventRepository(events_collection, delay_s=0.8)
    batcher = await make_batcher(slow, linger_s=0.5, store_timeout_s=1.0)

    with pytest.raises(StoreUnavailable):
        await batcher.submit(goal(event_id(1)), time.perf_counter())
    await batcher.close(timeout_s=5.0)

    assert batcher.acknowledged == 0


async def test_batcher_recovers_once_the_store_answers_again(
    engine: Engine, make_batcher: BatcherFactory
) -> None:
    class FlakyEventRepository(EventRepository):
        def __init__(self, real: EventRepository) -> None:
            self.real = real
            self.failures_left = 1

        async def insert_many(self, documents: Sequence[Mapping[str, Any]]) -> InsertReport:
            if self.failures_left:
                self.failures_left -= 1
                raise AutoReconnect("primary stepped down")
            return await self.real.insert_many(documents)

        async def fingerprints(self, event_ids: Any) -> dict[str, str]:
            return await self.real.fingerprints(event_ids)

    batcher = await make_batcher(FlakyEventRepository(engine.events))

    with pytest.raises(StoreUnavailable):
        await batcher.submit(goal(event_id(1)), time.perf_counter())
    retried = await batcher.submit(goal(event_id(1)), time.perf_counter())

    assert retried is WriteOutcome.ACCEPTED
    assert await engine.events.count() == 1


# duplicates


async def test_batch_with_new_event_retry_and_clash_gets_one_outcome_each(
    engine: Engine, make_batcher: BatcherFactory
) -> None:
    batcher = await make_batcher()
    assert await submit_all(batcher, [goal(event_id(1)), goal(event_id(2))]) == [
        WriteOutcome.ACCEPTED,
        WriteOutcome.ACCEPTED,
    ]

    outcomes = await submit_all(
        batcher,
        [
            goal(event_id(3)),  # new
            goal(event_id(1)),  # exact retry
            goal(event_id(2), team_id="al-nassr"),  # same eventId, other payload
        ],
    )

    assert outcomes == [WriteOutcome.ACCEPTED, WriteOutcome.DUPLICATE, WriteOutcome.CONFLICT]
    assert await engine.events.get(event_id(3)) is not None
    clashed = await engine.events.get(event_id(2))
    assert clashed is not None
    assert clashed["teamId"] == "al-hilal"  # the first payload stays
    assert await engine.events.count() == 3
    assert batcher.acknowledged == 3


async def test_same_new_event_twice_in_one_batch_is_accepted_then_duplicate(
    engine: Engine, make_batcher: BatcherFactory
) -> None:
    batcher = await make_batcher()

    outcomes = await submit_all(batcher, [goal(event_id(7)), goal(event_id(7))])

    assert outcomes == [WriteOutcome.ACCEPTED, WriteOutcome.DUPLICATE]
    assert await engine.events.count() == 1
    assert batcher.acknowledged == 1


async def test_same_new_event_id_with_two_payloads_in_one_batch_is_accepted_then_conflict(
    engine: Engine, make_batcher: BatcherFactory
) -> None:
    batcher = await make_batcher()

    outcomes = await submit_all(
        batcher, [goal(event_id(7), minute=10), goal(event_id(7), minute=11)]
    )

    assert outcomes == [WriteOutcome.ACCEPTED, WriteOutcome.CONFLICT]
    stored = await engine.events.get(event_id(7))
    assert stored is not None
    assert stored["timestamp"].minute == 10
    assert await engine.events.count() == 1


# shutdown


async def test_close_writes_every_queued_event_before_returning(
    engine: Engine, make_batcher: BatcherFactory
) -> None:
    batcher = await make_batcher(max_batch=2, linger_s=0.05)
    futures = [batcher.submit_nowait(goal(event_id(n)), time.perf_counter()) for n in range(5)]

    await batcher.close(timeout_s=5.0)

    assert all(future.done() for future in futures)
    assert [future.result() for future in futures] == [WriteOutcome.ACCEPTED] * 5
    assert await engine.events.count() == 5
    assert batcher.acknowledged == 5


async def test_submit_after_close_is_refused_as_shutting_down(
    engine: Engine, make_batcher: BatcherFactory
) -> None:
    batcher = await make_batcher()
    await batcher.close(timeout_s=1.0)

    with pytest.raises(ShuttingDown) as refused:
        await batcher.submit(goal(event_id(1)), time.perf_counter())

    assert isinstance(refused.value, StoreUnavailable)  # a 503 with Retry-After
    assert refused.value.event_id == event_id(1)
    assert await engine.events.count() == 0


# ingest latency


async def test_recorded_ingest_latencies_reach_the_match_summary(engine: Engine) -> None:
    recorder = IngestLatencyRecorder(engine.summaries)
    for milliseconds in (12.0, 12.5, 480.0):
        recorder.record("alhilal-vs-alnassr", milliseconds)

    await recorder.flush()

    summary = await engine.summaries.get("alhilal-vs-alnassr")
    assert summary is not None
    assert sum(summary["ingestLatency"].values()) == 3


# resolve_outcomes (pure)


def test_outcomes_follow_the_insert_report_and_the_stored_fingerprints() -> None:
    documents = [
        {"_id": "new", "fingerprint": "a"},
        {"_id": "retry", "fingerprint": "b"},
        {"_id": "clash", "fingerprint": "c"},
        {"_id": "refused", "fingerprint": "d"},
        {"_id": "vanished", "fingerprint": "e"},
    ]
    report = InsertReport(
        duplicate_indexes=frozenset({1, 2, 4}), failed_indexes={3: "document failed validation"}
    )
    stored = {"retry": "b", "clash": "not-c"}

    outcomes = resolve_outcomes(documents, report, stored)

    assert outcomes == [
        WriteOutcome.ACCEPTED,
        WriteOutcome.DUPLICATE,
        WriteOutcome.CONFLICT,
        WriteOutcome.FAILED,
        WriteOutcome.FAILED,  # a duplicate whose stored copy cannot be read: not confirmed
    ]


def test_clean_insert_accepts_every_document() -> None:
    documents = [{"_id": "a", "fingerprint": "1"}, {"_id": "b", "fingerprint": "2"}]

    assert resolve_outcomes(documents, InsertReport(), {}) == [WriteOutcome.ACCEPTED] * 2


class UnconfirmedWritesRepository(EventRepository):
    """Inserts land but the write concern fails, as during a primary step-down."""

    async def _insert(self, documents: Sequence[Mapping[str, Any]]) -> InsertReport:
        await super()._insert(documents)
        return insert_report(
            BulkWriteError(
                {
                    "nInserted": len(documents),
                    "writeErrors": [],
                    "writeConcernErrors": [{"code": 64, "errmsg": "waiting for replication"}],
                }
            )
        )


async def test_unconfirmed_write_concern_gives_every_waiter_503_not_202(
    events_collection: Any, make_batcher: BatcherFactory
) -> None:
    batcher = await make_batcher(UnconfirmedWritesRepository(events_collection))
    results = await asyncio.gather(
        *(batcher.submit(goal(event_id(900 + i)), time.perf_counter()) for i in range(3)),
        return_exceptions=True,
    )
    assert all(isinstance(result, StoreUnavailable) for result in results)
    assert batcher.acknowledged == 0


class RecordingEventRepository(EventRepository):
    """The real repository, remembering the ids of each group commit it was given."""

    def __init__(self, collection: Any) -> None:
        super().__init__(collection)
        self.groups: list[list[str]] = []

    async def insert_many(self, documents: Sequence[Mapping[str, Any]]) -> InsertReport:
        self.groups.append([str(document["_id"]) for document in documents])
        return await super().insert_many(documents)


async def test_a_single_event_does_not_wait_behind_a_whole_batch(
    events_collection: Any, make_batcher: BatcherFactory
) -> None:
    """A batch request's 300 items are queued, then one event is posted on its own while the
    first group is being written: it goes into the next group, not after all 300, because
    batch items join each group at most BULK_PER_FLUSH at a time and single events go first."""
    recording = RecordingEventRepository(events_collection)
    batcher = await make_batcher(recording, max_batch=500, store_timeout_s=30.0)
    bulk = [goal(event_id(n)) for n in range(300)]
    alone = goal(event_id(999))
    bulk_futures = [batcher.submit_nowait(document, time.perf_counter()) for document in bulk]
    outcome = await asyncio.wait_for(batcher.submit(alone, time.perf_counter()), PROMPTLY_S)
    await asyncio.gather(*bulk_futures)

    assert outcome is WriteOutcome.ACCEPTED
    holding = next(i for i, group in enumerate(recording.groups) if alone["_id"] in group)
    assert holding <= 1
    assert max(len(group) for group in recording.groups) <= 1 + BULK_PER_FLUSH
    written = [event for group in recording.groups for event in group]
    assert sorted(written) == sorted(str(document["_id"]) for document in [*bulk, alone])
