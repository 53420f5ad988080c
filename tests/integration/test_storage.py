"""Storage on a real replica set: what start-up creates, how `events` is written, duplicate ids."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pytest
from beanie import Document
from pymongo.errors import BulkWriteError
from pymongo.read_concern import ReadConcern

from fanfinity.storage.engine import Engine
from fanfinity.storage.models import (
    EVENTS,
    MATCH_EVENTS,
    MATCH_SUMMARIES,
    Event,
    MatchEvent,
    MatchSummary,
)
from fanfinity.storage.repositories import DUPLICATE_KEY, InsertReport, insert_report
from tests.integration.conftest import TEAMS, CommandLog, new_match_id, stored_event

pytestmark = pytest.mark.integration

MAJORITY_AND_JOURNAL = {"w": "majority", "j": True}


def key_of(pairs: Iterable[tuple[str, Any]]) -> list[tuple[str, int]]:
    return [(field, int(direction)) for field, direction in pairs]


async def assert_model_indexes(engine: Engine) -> None:
    models: tuple[tuple[str, type[Document]], ...] = (
        (EVENTS, Event),
        (MATCH_SUMMARIES, MatchSummary),
        (MATCH_EVENTS, MatchEvent),
    )
    for collection, model in models:
        present = await engine.database[collection].index_information()
        for index in model.Settings.indexes:
            spec = index.document
            assert spec["name"] in present, f"{collection} lacks index {spec['name']}: {present}"
            assert key_of(present[spec["name"]]["key"]) == key_of(spec["key"].items())


async def collection_info(engine: Engine, name: str) -> dict[str, Any]:
    cursor = await engine.database.list_collections(filter={"name": name})
    listed: list[dict[str, Any]] = await cursor.to_list(None)
    assert len(listed) == 1, f"{name} is not in listCollections: {listed}"
    return listed[0]


async def test_start_up_creates_the_model_indexes_and_a_time_series_match_events(
    engine: Engine,
) -> None:
    await assert_model_indexes(engine)

    match_events = await collection_info(engine, MATCH_EVENTS)
    assert match_events["type"] == "timeseries"
    timeseries = match_events["options"]["timeseries"]
    assert timeseries["timeField"] == "timestamp"
    assert timeseries["metaField"] == "meta"
    assert timeseries["granularity"] == "seconds"

    # `events` stays a regular collection: the one with a unique `_id` and a change stream.
    assert (await collection_info(engine, EVENTS))["type"] == "collection"


async def test_restarting_on_an_existing_database_keeps_collections_and_indexes(
    open_engines: Callable[[], Awaitable[Engine]],
) -> None:
    first = await open_engines()
    await first.events.insert_many([stored_event(new_match_id("restart"))])

    second = await open_engines()  # a redeploy: the collections and indexes already exist

    await assert_model_indexes(second)
    assert (await collection_info(second, MATCH_EVENTS))["type"] == "timeseries"
    assert await second.events.count() == 1


def plan_stages(plan: Any) -> set[str]:
    """Every stage name in an explain plan, at any depth."""
    if isinstance(plan, dict):
        found = {str(plan["stage"])} if "stage" in plan else set()
        for value in plan.values():
            found |= plan_stages(value)
        return found
    if isinstance(plan, list):
        return set().union(*(plan_stages(item) for item in plan)) if plan else set()
    return set()


@pytest.mark.parametrize("status_rank", [None, 1])
async def test_the_match_list_count_reads_an_index_not_every_summary(
    engine: Engine, status_rank: int | None
) -> None:
    """`GET /api/matches` counts {total > 0} (of one status) per uncached page: with thousands of
    matches a collection scan per page blocks the store; the winning plan must use an index."""
    query: dict[str, Any] = {"total": {"$gt": 0}}
    if status_rank is not None:
        query["statusRank"] = status_rank
    explained = await engine.database.command(
        {"explain": {"count": MATCH_SUMMARIES, "query": query}, "verbosity": "queryPlanner"}
    )
    stages = plan_stages(explained["queryPlanner"]["winningPlan"])
    assert "COLLSCAN" not in stages, stages


async def test_events_are_written_with_majority_and_journal(
    command_log: CommandLog, open_engines: Callable[[], Awaitable[Engine]], database_name: str
) -> None:
    engine = await open_engines()  # created after the command listener, so it reports to it
    # What the engine built: the repository's collection and the one the change stream watches.
    assert engine.events._collection.write_concern.document == MAJORITY_AND_JOURNAL
    assert engine.feed._events.name == EVENTS

    document = stored_event(new_match_id("durable"))
    assert await engine.events.insert_many([document]) == InsertReport()

    inserts = [
        command
        for command in command_log.sent(database_name, "insert")
        if command["insert"] == EVENTS
    ]
    assert inserts, "no insert into events was sent"
    assert all(command["writeConcern"] == MAJORITY_AND_JOURNAL for command in inserts)
    assert all(command["ordered"] is False for command in inserts)

    majority = engine.database.get_collection(EVENTS, read_concern=ReadConcern("majority"))
    stored = await majority.find_one({"_id": document["_id"]})
    assert stored is not None
    assert stored["fingerprint"] == document["fingerprint"]


async def test_unordered_insert_stores_all_but_the_duplicates_and_reports_them(
    engine: Engine,
) -> None:
    match_id = new_match_id("dupes")
    existing = stored_event(match_id, "goal", TEAMS[0])
    assert await engine.events.insert_many([existing]) == InsertReport()

    fresh_a = stored_event(match_id, "corner", TEAMS[0])
    first_b = stored_event(match_id, "foul", TEAMS[0])
    fresh_c = stored_event(match_id, "offside", TEAMS[1])
    batch = [
        fresh_a,
        first_b,
        {**existing, "teamId": TEAMS[1]},  # an `_id` already stored
        {**first_b, "teamId": TEAMS[1]},  # an `_id` repeated inside the batch
        fresh_c,
    ]

    report = await engine.events.insert_many(batch)

    assert report.duplicate_indexes == frozenset({2, 3})
    assert dict(report.failed_indexes) == {}
    assert await engine.events.count(match_id) == 4
    for kept in (existing, fresh_a, first_b, fresh_c):
        stored = await engine.events.get(kept["_id"])
        assert stored is not None
        assert stored["teamId"] == kept["teamId"]  # the first write of an `_id` wins, unchanged
        assert stored["fingerprint"] == kept["fingerprint"]

    # The raw server reply that `insert_report` reads: one 11000 per position, nothing inserted.
    with pytest.raises(BulkWriteError) as caught:
        await engine.database[EVENTS].insert_many(batch, ordered=False)
    details = caught.value.details
    assert details["nInserted"] == 0
    assert sorted(error["index"] for error in details["writeErrors"]) == [0, 1, 2, 3, 4]
    assert {error["code"] for error in details["writeErrors"]} == {DUPLICATE_KEY}
    assert insert_report(caught.value) == InsertReport(frozenset(range(5)), {})
