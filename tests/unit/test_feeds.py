"""The embedded engine's change feed: batches, positions, idling, trimmed history, snapshots."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from fanfinity.storage.engine import Engine
from fanfinity.storage.feeds import HistoryLost, InProcessChangeFeed, describe_position

KICK_OFF = datetime(2025, 5, 10, 19, 0, tzinfo=UTC)


def inserted(event_id: str, match_id: str = "alhilal-vs-alnassr") -> dict[str, Any]:
    return {
        "_id": event_id,
        "matchId": match_id,
        "eventType": "goal",
        "timestamp": KICK_OFF,
        "teamId": "al-hilal",
        "receivedAt": KICK_OFF,
        "fingerprint": f"fp-{event_id}",
    }


def ids(events: Any) -> list[str]:
    return [event["_id"] for event in events]


@pytest.fixture
def feed(engine: Engine) -> InProcessChangeFeed:
    assert isinstance(engine.feed, InProcessChangeFeed)
    return engine.feed


async def test_batches_hold_at_most_max_batch_events_in_insert_order(
    feed: InProcessChangeFeed,
) -> None:
    feed.append([inserted(f"e{n}") for n in range(5)])
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
    feed.append([inserted("e0")])
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

    feed.append([inserted("e0"), inserted("e1")])
    batch = await asyncio.wait_for(waiting, timeout=5.0)
    await changes.aclose()

    assert ids(batch.events) == ["e0", "e1"]
    assert batch.position == {"sequence": 2}


async def test_consumer_resumes_after_its_position(feed: InProcessChangeFeed) -> None:
    feed.append([inserted(f"e{n}") for n in range(5)])
    changes = feed.changes({"sequence": 3}, max_batch=10, max_wait_s=0.05)

    batch = await anext(changes)
    await changes.aclose()

    assert ids(batch.events) == ["e3", "e4"]
    assert batch.position == {"sequence": 5}


async def test_events_appended_later_continue_the_positions(feed: InProcessChangeFeed) -> None:
    feed.append([inserted("e0")])
    changes = feed.changes({"sequence": 0}, max_batch=10, max_wait_s=0.05)
    first = await anext(changes)

    feed.append([inserted("e1"), inserted("e2")])
    second = await anext(changes)
    await changes.aclose()

    assert (ids(first.events), first.position) == (["e0"], {"sequence": 1})
    assert (ids(second.events), second.position) == (["e1", "e2"], {"sequence": 3})


async def test_position_before_the_trimmed_history_raises_history_lost(
    feed: InProcessChangeFeed,
) -> None:
    feed.append([inserted(f"e{n}") for n in range(4)])
    consumer = feed.changes({"sequence": 0}, max_batch=2, max_wait_s=0.05)
    await anext(consumer)
    await anext(consumer)  # coming back for more means the first batch was applied: trimmed
    await consumer.aclose()

    late = feed.changes({"sequence": 1}, max_batch=2, max_wait_s=0.05)
    with pytest.raises(HistoryLost):
        await anext(late)


async def test_snapshot_returns_rows_and_the_position_right_after_them(engine: Engine) -> None:
    await engine.events.insert_many([inserted("e0"), inserted("e1"), inserted("e2", "other")])

    rows, position = await engine.feed.snapshot(
        [{"$group": {"_id": "$matchId", "events": {"$sum": 1}}}, {"$sort": {"_id": 1}}]
    )

    assert rows == [{"_id": "alhilal-vs-alnassr", "events": 2}, {"_id": "other", "events": 1}]
    assert position == {"sequence": 3}


async def test_feed_from_a_snapshot_position_holds_only_later_inserts(engine: Engine) -> None:
    await engine.events.insert_many([inserted("before")])
    _, position = await engine.feed.snapshot([{"$match": {}}])
    await engine.events.insert_many([inserted("after")])

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
