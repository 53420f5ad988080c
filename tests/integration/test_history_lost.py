"""When the stored position cannot be resumed: rebuild from `events`, never skip ahead to "now".

What can be provoked on a CI replica set, and how:

- A checkpoint whose resume token is syntactically valid but was never in the `events` stream (a
  real token taken from a change stream on another collection). Once `events` has changes after
  the token's time, the server refuses it with ChangeStreamFatalError 280, "cannot resume stream;
  the resume token was not found" (DocumentSourceChangeStreamEnsureResumeTokenPresent). That is
  exactly what a token from before a restore looks like, and feeds.py maps it to `HistoryLost`.
- A `startAtOperationTime` older than the oplog: ChangeStreamHistoryLost 286 only once the oplog
  has rolled over. A fresh replica set whose oldest oplog entry is still the "initiating set"
  no-op deliberately lets a stream start "at the dawn of time" and replays every insert (the
  server's own jstests/change_streams/oplog_rollover.js). The oplog of a CI runner is far too big
  to roll over in a test, so that test asserts what holds on both paths: exact totals.
- The literal code 286 needs the `failCommand` fail point, available only when mongod runs with
  `--setParameter enableTestCommands=1`; that test skips itself otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import pytest
from bson import Timestamp
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo.errors import OperationFailure

from fanfinity.storage.engine import Engine
from fanfinity.storage.feeds import HISTORY_LOST_CODES, HistoryLost, Position
from fanfinity.storage.repositories import InsertReport
from tests.integration.conftest import (
    DEADLINE_S,
    event_batch,
    eventually,
    new_aggregator,
    new_match_id,
    running,
    totals,
    wait_for_exact_summaries,
)

pytestmark = pytest.mark.integration

CHANGE_STREAM_HISTORY_LOST = 286
SERVICE_APP_NAME = "fanfinity"  # the appname storage/engine.py gives the service's client


async def resume_token_from_another_collection(engine: Engine) -> dict[str, Any]:
    """A real insert event's resume token, from a change stream that never watched `events`."""
    scratch = engine.database["scratch"]
    await scratch.insert_one({"note": "creates the collection"})
    async with scratch.watch(max_await_time_ms=200) as stream:
        await scratch.insert_one({"note": "only here to mint a resume token"})
        change = await eventually(
            stream.try_next, lambda change: change is not None, what="the scratch insert"
        )
    token: dict[str, Any] = change["_id"]
    return token


async def first_batch(engine: Engine, start: Position) -> Any:
    changes = engine.feed.changes(start, 100, 0.2)
    try:
        return await asyncio.wait_for(anext(changes), timeout=DEADLINE_S)
    finally:
        await changes.aclose()


async def test_an_unavailable_resume_token_is_history_lost(engine: Engine) -> None:
    token = await resume_token_from_another_collection(engine)
    assert await engine.events.insert_many(event_batch([new_match_id("lost")], 5)) == InsertReport()

    with pytest.raises(HistoryLost) as caught:
        await first_batch(engine, {"resumeToken": token})

    cause = caught.value.__cause__
    assert isinstance(cause, OperationFailure)
    assert cause.code in HISTORY_LOST_CODES


async def test_aggregator_rebuilds_when_its_checkpoint_cannot_be_resumed(engine: Engine) -> None:
    matches = [new_match_id("heal-a"), new_match_id("heal-b")]
    token = await resume_token_from_another_collection(engine)
    assert await engine.checkpoints.advance(None, {"resumeToken": token}, datetime.now(UTC)) == 1
    # Events the summaries never saw, stored after the checkpoint's point in time.
    assert await engine.events.insert_many(event_batch(matches, 40)) == InsertReport()

    aggregator = new_aggregator(engine)
    async with running(aggregator) as task:
        await wait_for_exact_summaries(engine, watch=[task])
        checkpoint = await engine.checkpoints.load()
        assert checkpoint is not None
        assert checkpoint["generation"] >= 2
        assert checkpoint["position"] != {"resumeToken": token}
        assert aggregator.events_processed == 0  # counted by the rebuild, not replayed

        assert await engine.events.insert_many(event_batch(matches, 20)) == InsertReport()
        await wait_for_exact_summaries(engine, watch=[task])

    assert sum((await totals(engine)).values()) == 60


async def test_a_checkpoint_older_than_the_oplog_neither_loses_nor_double_counts(
    engine: Engine,
) -> None:
    matches = [new_match_id("ancient-a"), new_match_id("ancient-b")]
    assert await engine.events.insert_many(event_batch(matches, 40)) == InsertReport()
    # Second 1 of 1970: before any oplog. Either replayed from the oplog's start (young oplog)
    # or refused with 286 and rebuilt (rolled-over oplog); both must give the exact totals.
    ancient = {"startAtOperationTime": Timestamp(1, 1)}
    assert await engine.checkpoints.advance(None, ancient, datetime.now(UTC)) == 1

    aggregator = new_aggregator(engine)
    async with running(aggregator) as task:
        await wait_for_exact_summaries(engine, watch=[task])
        assert await engine.events.insert_many(event_batch(matches, 20)) == InsertReport()
        await wait_for_exact_summaries(engine, watch=[task])

    assert sum((await totals(engine)).values()) == 60


async def test_a_corrupt_resume_token_is_an_error_not_lost_history(engine: Engine) -> None:
    # Not hex at all: the server's FailedToParse. Only the documented history-lost codes may
    # trigger a rebuild; anything else is retried and shows up as a stalled aggregator.
    with pytest.raises(OperationFailure) as caught:
        await first_batch(engine, {"resumeToken": {"_data": "not-a-resume-token"}})

    assert caught.value.code not in HISTORY_LOST_CODES


async def test_change_stream_history_lost_code_is_reported_as_history_lost(
    engine: Engine, mongodb_url: str
) -> None:
    admin: Any = AsyncIOMotorClient(mongodb_url, appname="fanfinity-it-admin")
    try:
        try:
            await admin.admin.command(
                {
                    "configureFailPoint": "failCommand",
                    "mode": {"times": 1},
                    "data": {
                        "failCommands": ["aggregate"],
                        "errorCode": CHANGE_STREAM_HISTORY_LOST,
                        "appName": SERVICE_APP_NAME,
                    },
                }
            )
        except OperationFailure as exc:
            pytest.skip(
                "the failCommand fail point needs mongod --setParameter enableTestCommands=1 "
                f"({exc.code}: {exc})"
            )
        with pytest.raises(HistoryLost) as caught:
            await first_batch(engine, {})
        cause = caught.value.__cause__
        assert isinstance(cause, OperationFailure)
        assert cause.code == CHANGE_STREAM_HISTORY_LOST
    finally:
        with contextlib.suppress(OperationFailure):
            await admin.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
        admin.close()
