"""Change feeds: the embedded log, and the MongoDB change stream over a test double of PyMongo's."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo.errors import OperationFailure

from fanfinity.storage.engine import Engine
from fanfinity.storage.feeds import (
    FeedInvalidated,
    HistoryLost,
    InProcessChangeFeed,
    MongoChangeFeed,
    describe_position,
)
from tests.factories import stored_event

KICK_OFF = datetime(2025, 5, 10, 19, 0, tzinfo=UTC)


def ids(events: Any) -> list[str]:
    return [event["_id"] for event in events]


@pytest.fixture
def feed(engine: Engine) -> InProcessChangeFeed:
    assert isinstance(engine.feed, InProcessChangeFeed)
    return engine.feed


async def test_batches_hold_at_most_max_batch_events_in_insert_order(
    feed: InProcessChangeFeed,
) -> None:
    feed.append([stored_event(f"e{n}") for n in range(5)])
    changes = feed.changes({"sequence": 0}, max_batch=2, max_wait_s=0.05)

    batches = [await anext(changes) for _ in range(3)]
    await changes.aclose()

    assert [ids(batch.events) for batch in batches] == [["e0", "e1"], ["e2", "e3"], ["e4"]]
    assert [batch.position for batch in batches] == [
        {"sequence": 2},
        {"sequence": 4},
        {"sequence": 5},
    ]


async def test_idle_feed_yields_an_empty_batch_at_the_same_position(
    feed: InProcessChangeFeed,
) -> None:
    feed.append([stored_event("e0")])
    changes = feed.changes({"sequence": 1}, max_batch=10, max_wait_s=0.05)

    batch = await anext(changes)
    await changes.aclose()

    assert list(batch.events) == []
    assert batch.position == {"sequence": 1}


async def test_waiting_consumer_gets_new_events_without_waiting_out_max_wait(
    feed: InProcessChangeFeed,
) -> None:
    changes = feed.changes({"sequence": 0}, max_batch=10, max_wait_s=30.0)
    waiting = asyncio.create_task(anext(changes))
    await asyncio.sleep(0.01)

    feed.append([stored_event("e0"), stored_event("e1")])
    batch = await asyncio.wait_for(waiting, timeout=5.0)
    await changes.aclose()

    assert ids(batch.events) == ["e0", "e1"]
    assert batch.position == {"sequence": 2}


async def test_consumer_resumes_after_its_position(feed: InProcessChangeFeed) -> None:
    feed.append([stored_event(f"e{n}") for n in range(5)])
    changes = feed.changes({"sequence": 3}, max_batch=10, max_wait_s=0.05)

    batch = await anext(changes)
    await changes.aclose()

    assert ids(batch.events) == ["e3", "e4"]
    assert batch.position == {"sequence": 5}


async def test_events_appended_later_continue_the_positions(feed: InProcessChangeFeed) -> None:
    feed.append([stored_event("e0")])
    changes = feed.changes({"sequence": 0}, max_batch=10, max_wait_s=0.05)
    first = await anext(changes)

    feed.append([stored_event("e1"), stored_event("e2")])
    second = await anext(changes)
    await changes.aclose()

    assert (ids(first.events), first.position) == (["e0"], {"sequence": 1})
    assert (ids(second.events), second.position) == (["e1", "e2"], {"sequence": 3})


async def take_two_batches_of_two(feed: InProcessChangeFeed) -> None:
    """Four events appended, and a consumer that takes them as two batches and goes away."""
    feed.append([stored_event(f"e{n}") for n in range(4)])
    consumer = feed.changes({"sequence": 0}, max_batch=2, max_wait_s=0.05)
    await anext(consumer)
    await anext(consumer)
    await consumer.aclose()


async def test_position_before_the_trimmed_history_raises_history_lost(
    feed: InProcessChangeFeed,
) -> None:
    await take_two_batches_of_two(feed)
    feed.committed({"sequence": 2})  # counted and checkpointed: forgotten

    late = feed.changes({"sequence": 1}, max_batch=2, max_wait_s=0.05)
    with pytest.raises(HistoryLost):
        await anext(late)


async def test_batches_handed_over_but_not_committed_can_be_read_again(
    feed: InProcessChangeFeed,
) -> None:
    await take_two_batches_of_two(feed)  # held, say, when their commit fails

    again = feed.changes({"sequence": 0}, max_batch=4, max_wait_s=0.05)
    assert ids((await anext(again)).events) == ["e0", "e1", "e2", "e3"]
    await again.aclose()


async def test_snapshot_returns_rows_and_the_position_right_after_them(engine: Engine) -> None:
    await engine.events.insert_many(
        [stored_event("e0"), stored_event("e1"), stored_event("e2", match_id="other")]
    )

    rows, position = await engine.feed.snapshot(
        [{"$group": {"_id": "$matchId", "events": {"$sum": 1}}}, {"$sort": {"_id": 1}}]
    )

    assert rows == [{"_id": "alhilal-vs-alnassr", "events": 2}, {"_id": "other", "events": 1}]
    assert position == {"sequence": 3}


async def test_feed_from_a_snapshot_position_holds_only_later_inserts(engine: Engine) -> None:
    await engine.events.insert_many([stored_event("before")])
    _, position = await engine.feed.snapshot([{"$match": {}}])
    await engine.events.insert_many([stored_event("after")])

    changes = engine.feed.changes(position, max_batch=10, max_wait_s=0.05)
    batch = await anext(changes)
    await changes.aclose()

    assert ids(batch.events) == ["after"]


@pytest.mark.parametrize(
    ("position", "described"),
    [
        ({"sequence": 42}, "sequence 42"),
        ({"startAtOperationTime": "T1"}, "cluster time T1"),
        ({"resumeToken": {"_data": "8263"}}, "resume token"),
    ],
)
def test_positions_are_described_without_their_token(
    position: dict[str, Any], described: str
) -> None:
    assert describe_position(position) == described


# --- MongoChangeFeed over a test double of PyMongo's change stream ------------------------------


def token(sequence: int) -> dict[str, str]:
    return {"_data": f"{sequence:08d}"}


class LogicalClock:
    """Time that moves only when the double says a getMore waited or a consumer worked."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class ChangeStreamDouble:
    """A change stream with PyMongo 4.13's documented semantics (pymongo/synchronous/
    change_stream.py, which Motor's `try_next` runs on its executor):

    - `try_next` returns a locally cached document without I/O; with nothing cached it runs ONE
      getMore and returns that getMore's first document, or None when the getMore was empty (the
      server waited up to maxAwaitTimeMS).
    - `resume_token` after a returned document is that document's `_id`, except after the last
      document of a server batch, where it is the batch's postBatchResumeToken; after None it is
      the empty batch's postBatchResumeToken.
    - An invalidate event is returned, then the cursor is closed: `alive` turns false and every
      later `try_next` returns None without resuming.

    `server_returns_early` chooses whether a getMore returns as soon as an event arrives or
    holds for the whole maxAwaitTimeMS (the slower of the two possible server behaviours).
    """

    def __init__(
        self,
        clock: LogicalClock,
        inserts: list[tuple[float, dict[str, Any]]],
        *,
        max_await_s: float,
        batch_size: int,
        server_returns_early: bool = True,
        round_trip_s: float = 0.001,
    ) -> None:
        self._clock = clock
        self._pending = list(inserts)
        self._cached: list[dict[str, Any]] = []
        self._post_batch_token: dict[str, str] = token(0)
        self._resume_token: dict[str, str] | None = None
        self._closed = False
        self._max_await_s = max_await_s
        self._batch_size = batch_size
        self._returns_early = server_returns_early
        self._round_trip_s = round_trip_s
        self._high_water = 0
        self.get_mores = 0

    @property
    def alive(self) -> bool:
        return not self._closed

    @property
    def resume_token(self) -> dict[str, str] | None:
        return self._resume_token

    async def try_next(self) -> dict[str, Any] | None:
        await asyncio.sleep(0)
        if not self._cached:
            if self._closed:
                return None
            self._get_more()
            if not self._cached:
                self._resume_token = self._post_batch_token
                return None
        change = self._cached.pop(0)
        self._resume_token = change["_id"] if self._cached else self._post_batch_token
        if change["operationType"] == "invalidate":
            self._closed = True
        return change

    def _get_more(self) -> None:
        self.get_mores += 1
        self._clock.now += self._round_trip_s
        if not self._ready():
            give_up_at = self._clock.now + self._max_await_s
            next_insert = self._pending[0][0] if self._pending else float("inf")
            if self._returns_early and next_insert <= give_up_at:
                self._clock.now = next_insert
            else:
                self._clock.now = give_up_at
        while self._ready() and len(self._cached) < self._batch_size:
            _, change = self._pending.pop(0)
            self._cached.append(change)
            self._high_water += 1
        self._post_batch_token = token(self._high_water)

    def _ready(self) -> bool:
        return bool(self._pending) and self._pending[0][0] <= self._clock.now


class EventsCollectionDouble:
    """`events.watch(...)` as Motor offers it: an async context manager around the stream."""

    def __init__(self, stream: ChangeStreamDouble) -> None:
        self.stream = stream
        self.options: dict[str, Any] = {}

    def watch(self, pipeline: list[dict[str, Any]], **options: Any) -> Any:
        self.options = options
        stream = self.stream

        class Watching:
            async def __aenter__(self) -> ChangeStreamDouble:
                return stream

            async def __aexit__(self, *exc: object) -> None:
                return None

        return Watching()


def insert_change(sequence: int) -> dict[str, Any]:
    return {
        "_id": token(sequence),
        "operationType": "insert",
        "fullDocument": stored_event(f"e{sequence}"),
    }


def steady_inserts(every_s: float, for_s: float) -> list[tuple[float, dict[str, Any]]]:
    count = round(for_s / every_s)
    return [(n * every_s, insert_change(n + 1)) for n in range(count)]


@pytest.mark.parametrize("server_returns_early", [True, False])
async def test_steady_traffic_is_counted_within_a_second_of_each_insert(
    server_returns_early: bool,
) -> None:
    """One event every 20 ms for 5 s. Before the fix a batch closed only on an empty getMore
    (never, under steady traffic) or at max_batch: the first event waited the whole 5 s.

    Times are logical (the double's clock), so the bound is exact, not a wall-clock guess; the
    consumer spends `commit_s` per batch, as the aggregator's minimum batch interval does."""
    clock = LogicalClock()
    inserts = steady_inserts(every_s=0.02, for_s=5.0)
    inserted_at = {change["fullDocument"]["_id"]: at for at, change in inserts}
    stream = ChangeStreamDouble(
        clock,
        inserts,
        max_await_s=0.2,
        batch_size=1000,
        server_returns_early=server_returns_early,
    )
    feed = MongoChangeFeed(None, None, EventsCollectionDouble(stream), clock=clock)
    commit_s = 0.1
    counted_at: dict[str, float] = {}
    changes = feed.changes({}, max_batch=1000, max_wait_s=0.2)
    while len(counted_at) < len(inserts):
        batch = await anext(changes)
        clock.now += commit_s if batch.events else 0.0
        counted_at.update({event["_id"]: clock.now for event in batch.events})
    await changes.aclose()

    delays = [counted_at[event_id] - at for event_id, at in inserted_at.items()]
    assert len(counted_at) == 250
    assert max(delays) <= 1.0, f"slowest event counted {max(delays):.2f}s after its insert"


async def test_a_batch_closed_early_resumes_right_after_its_last_event() -> None:
    clock = LogicalClock()
    inserts = [(0.0, insert_change(n)) for n in range(1, 6)]  # one server batch of five
    stream = ChangeStreamDouble(clock, inserts, max_await_s=0.2, batch_size=1000)
    feed = MongoChangeFeed(None, None, EventsCollectionDouble(stream), clock=clock)

    changes = feed.changes({}, max_batch=2, max_wait_s=0.2)
    batches = [await anext(changes) for _ in range(3)]
    await changes.aclose()

    assert [ids(batch.events) for batch in batches] == [["e1", "e2"], ["e3", "e4"], ["e5"]]
    # Mid server batch the position is the last taken event's own token; after the server
    # batch's last event it is the post-batch resume token.
    assert [batch.position for batch in batches] == [
        {"resumeToken": token(2)},
        {"resumeToken": token(4)},
        {"resumeToken": token(5)},
    ]


async def test_the_stream_resumes_after_the_stored_token() -> None:
    clock = LogicalClock()
    events = EventsCollectionDouble(ChangeStreamDouble(clock, [], max_await_s=0.2, batch_size=10))
    feed = MongoChangeFeed(None, None, events, clock=clock)

    changes = feed.changes({"resumeToken": token(7)}, max_batch=10, max_wait_s=0.2)
    idle = await anext(changes)
    await changes.aclose()

    assert events.options["start_after"] == token(7)
    assert events.options["max_await_time_ms"] == 200
    assert list(idle.events) == []


async def test_an_invalidated_stream_is_reported_instead_of_idling_forever() -> None:
    """After `events` is dropped or renamed the server sends an invalidate and closes the
    cursor; `try_next` then returns None for ever, so only `alive` tells."""
    clock = LogicalClock()
    inserts = [
        (0.0, insert_change(1)),
        (0.0, {"_id": token(2), "operationType": "invalidate"}),
    ]
    stream = ChangeStreamDouble(clock, inserts, max_await_s=0.2, batch_size=10)
    feed = MongoChangeFeed(None, None, EventsCollectionDouble(stream), clock=clock)

    changes = feed.changes({}, max_batch=10, max_wait_s=0.2)
    before = await anext(changes)
    with pytest.raises(FeedInvalidated):
        await anext(changes)

    assert ids(before.events) == ["e1"]  # what came before the invalidate is still counted


async def test_a_resume_point_out_of_the_oplog_is_history_lost() -> None:
    class LostHistory:
        def watch(self, pipeline: list[dict[str, Any]], **options: Any) -> Any:
            raise OperationFailure("resume point may no longer be in the oplog", code=286)

    feed = MongoChangeFeed(None, None, LostHistory())
    changes = feed.changes({"resumeToken": token(1)}, max_batch=10, max_wait_s=0.2)

    with pytest.raises(HistoryLost):
        await anext(changes)


async def test_every_read_of_an_embedded_snapshot_sees_the_same_events(engine: Engine) -> None:
    await engine.events.insert_many([stored_event("e0")])
    count = [{"$group": {"_id": None, "events": {"$sum": 1}}}]

    async with engine.feed.snapshot_reader() as snapshot:
        writer = asyncio.create_task(engine.events.insert_many([stored_event("e1")]))
        await asyncio.sleep(0.01)
        first = [row async for row in snapshot.aggregate(count)]
        second = [row async for row in snapshot.aggregate(count)]
    await writer

    assert first == second == [{"_id": None, "events": 1}]
    assert snapshot.position == {"sequence": 1}
