"""The MongoDB-only behaviour of issue 13, on a real replica set (skipped without one).

Each of these was fixed and unit-tested against doubles that follow PyMongo's documented
semantics; only a server shows that MongoDB behaves as those doubles assume.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from fanfinity.storage.engine import Engine
from fanfinity.storage.models import EVENTS, MATCH_SUMMARIES
from fanfinity.storage.transactions import MongoTransaction, TransactionTimedOut
from tests.integration.conftest import (
    eventually,
    new_aggregator,
    new_match_id,
    running,
    stored_event,
    totals,
)

pytestmark = pytest.mark.integration


async def test_steady_traffic_is_counted_within_a_second(engine: Engine) -> None:
    """Defect 1: one event every 20 ms for 5 s; each must be in its summary within 1 s."""
    match_id = new_match_id("steady")
    aggregator = new_aggregator(engine)
    async with running(aggregator) as task:
        await eventually(
            engine.checkpoints.load, lambda c: c is not None, what="the first checkpoint"
        )
        worst = 0.0
        for number in range(250):
            inserted = time.monotonic()
            await engine.events.insert_many([stored_event(match_id, minute=number % 90)])

            async def total() -> int:
                return (await totals(engine)).get(match_id, 0)

            if number % 25 == 24:  # sample: wait for this one to be counted
                await eventually(
                    total, lambda t, n=number: t >= n + 1, what="the event", watch=[task]
                )
                worst = max(worst, time.monotonic() - inserted)
            await asyncio.sleep(0.02)
    assert worst <= 1.0, f"an event was counted {worst:.2f}s after its insert"


async def test_losing_the_time_series_creation_race_is_harmless(
    open_engines: Callable[[], Awaitable[Engine]],
) -> None:
    """Defect 6: an API and an aggregator starting together on a fresh database."""
    first, second = await asyncio.gather(open_engines(), open_engines())

    names = await first.database.list_collection_names()
    assert "match_events" in names
    options = await first.database["match_events"].options()
    assert "timeseries" in options
    assert second.name == "mongodb"


async def test_a_transaction_left_open_by_a_killed_aggregator_does_not_spin(
    engine: Engine,
) -> None:
    """Defect 4: an open transaction holding a summary makes every successor attempt meet
    WriteConflict; the commit must give up at its own bound (not PyMongo's 120 s)."""
    match_id = new_match_id("orphan")
    summaries = engine.database[MATCH_SUMMARIES]
    await summaries.insert_one({"_id": match_id, "total": 0})
    orphan = await engine.client.start_session()
    orphan.start_transaction()
    await summaries.update_one({"_id": match_id}, {"$inc": {"total": 1}}, session=orphan)

    async def successor(session: Any) -> None:
        await summaries.update_one({"_id": match_id}, {"$inc": {"total": 1}}, session=session)

    bounded = MongoTransaction(engine.client, engine.events._collection.write_concern, 2.0)
    started = time.monotonic()
    with pytest.raises(TransactionTimedOut):
        await bounded.run(successor)
    took = time.monotonic() - started
    await orphan.abort_transaction()
    await orphan.end_session()

    assert took < 15.0, f"the bounded commit took {took:.1f}s"


async def test_dropping_events_invalidates_the_stream_and_the_aggregator_recounts(
    engine: Engine,
) -> None:
    """Defect 8: after an invalidate `try_next` returns None forever; `alive` tells."""
    match_id = new_match_id("invalidate")
    aggregator = new_aggregator(engine)
    async with running(aggregator) as task:
        await engine.events.insert_many([stored_event(match_id)])
        await eventually(lambda: totals(engine), lambda t: t.get(match_id) == 1, what="first count")
        await engine.database.drop_collection(EVENTS)
        await eventually(
            lambda: totals(engine),
            lambda t: t.get(match_id, 0) == 0,
            what="the summaries recounted from the (now empty) events",
            deadline_s=60.0,
            watch=[task],
        )
        assert aggregator.running
