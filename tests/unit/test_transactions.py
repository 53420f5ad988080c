"""Units of work: the embedded engine's is atomic when its callback raises; MongoDB's is bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo.errors import OperationFailure
from pymongo.read_concern import ReadConcern

from fanfinity.pipeline.fold import fold_events
from fanfinity.storage.engine import Engine
from fanfinity.storage.transactions import (
    MongoTransaction,
    TransactionTimedOut,
    durable_write_concern,
)
from tests.factories import stored_event

KICK_OFF = datetime(2025, 5, 10, 19, 0, tzinfo=UTC)
MATCH = "alhilal-vs-alnassr"


class Crash(Exception):
    """The process 'dies' at this point of the callback."""


# --- the embedded engine -----------------------------------------------------------------------


async def test_a_callback_that_raises_after_the_checkpoint_advance_leaves_nothing_applied(
    engine: Engine,
) -> None:
    """The gap the fault simulation probes: checkpoint moved, summaries not yet (or half)."""
    first = await engine.checkpoints.advance(None, {"sequence": 0}, KICK_OFF)
    await engine.summaries.apply(fold_events([stored_event("e0")], KICK_OFF).values(), KICK_OFF)
    summary_before = await engine.summaries.get(MATCH)
    batch = [stored_event("e1"), stored_event("e2", match_id="other-match")]

    async def half_a_batch(session: Any) -> None:
        await engine.checkpoints.advance(first, {"sequence": 2}, KICK_OFF, session)
        await engine.summaries.apply(fold_events(batch, KICK_OFF).values(), KICK_OFF, session)
        await engine.dead_letters.park(batch[:1], "test", KICK_OFF, session)
        raise Crash

    with pytest.raises(Crash):
        await engine.unit_of_work.run(half_a_batch)

    checkpoint = await engine.checkpoints.load()
    assert checkpoint is not None
    assert (checkpoint["generation"], checkpoint["position"]) == (first, {"sequence": 0})
    summary = await engine.summaries.get(MATCH)
    assert summary is not None
    assert summary["total"] == 1
    assert summary == summary_before  # every field as it was, datetimes included
    assert await engine.summaries.get("other-match") is None  # its upsert was taken back
    assert await engine.dead_letters.count() == 0


async def test_a_first_checkpoint_created_by_a_failed_callback_is_taken_back(
    engine: Engine,
) -> None:
    async def create_then_fail(session: Any) -> None:
        await engine.checkpoints.advance(None, {"sequence": 3}, KICK_OFF, session)
        raise Crash

    with pytest.raises(Crash):
        await engine.unit_of_work.run(create_then_fail)

    assert await engine.checkpoints.load() is None


async def test_a_callback_that_returns_keeps_all_its_writes(engine: Engine) -> None:
    async def whole_batch(session: Any) -> int:
        generation = await engine.checkpoints.advance(None, {"sequence": 1}, KICK_OFF, session)
        await engine.summaries.apply(
            fold_events([stored_event("e1")], KICK_OFF).values(), KICK_OFF, session
        )
        return generation

    assert await engine.unit_of_work.run(whole_batch) == 1
    summary = await engine.summaries.get(MATCH)
    assert summary is not None
    assert summary["total"] == 1


# --- MongoDB, against a session double with Motor's API ----------------------------------------


def labelled(label: str, code: int = 112) -> OperationFailure:
    """A server error as PyMongo builds it: labels come from the reply's `errorLabels`."""
    return OperationFailure("WriteConflict", code, {"errorLabels": [label], "code": code})


class SessionDouble:
    def __init__(
        self, work_errors: list[Exception], commit_errors: list[Exception] | None = None
    ) -> None:
        self._work_errors = work_errors
        self._commit_errors = commit_errors or []
        self.in_transaction = False
        self.started = 0
        self.aborted = 0
        self.commits = 0
        self.options: dict[str, Any] = {}
        self.conflict_forever = False

    def start_transaction(self, **options: Any) -> None:
        self.started += 1
        self.in_transaction = True
        self.options = options

    async def abort_transaction(self) -> None:
        self.aborted += 1
        self.in_transaction = False

    async def commit_transaction(self) -> None:
        self.commits += 1
        if self._commit_errors:
            raise self._commit_errors.pop(0)
        self.in_transaction = False

    def next_work_error(self) -> Exception | None:
        if self.conflict_forever:
            return labelled("TransientTransactionError")
        return self._work_errors.pop(0) if self._work_errors else None


class ClientDouble:
    def __init__(self, session: SessionDouble) -> None:
        self.session = session

    async def start_session(self) -> Any:
        session = self.session

        class Started:
            async def __aenter__(self) -> SessionDouble:
                return session

            async def __aexit__(self, *exc: object) -> None:
                return None

        return Started()


def work_on(session: SessionDouble) -> Callable[[Any], Awaitable[str]]:
    async def work(given: Any) -> str:
        assert given is session
        error = session.next_work_error()
        if error is not None:
            raise error
        return "applied"

    return work


async def test_transaction_retries_transient_errors_then_commits_once() -> None:
    session = SessionDouble([labelled("TransientTransactionError")] * 2)
    transaction = MongoTransaction(ClientDouble(session), durable_write_concern(2.0), 5.0)

    assert await transaction.run(work_on(session)) == "applied"

    assert (session.started, session.aborted, session.commits) == (3, 2, 1)
    assert session.options["write_concern"].document == {
        "w": "majority",
        "j": True,
        "wtimeout": 2000,
    }
    assert session.options["read_concern"] == ReadConcern("majority")


async def test_transaction_that_keeps_conflicting_gives_up_at_its_time_limit() -> None:
    """A killed aggregator's open transaction makes every attempt meet WriteConflict until the
    server reaps it; PyMongo's `with_transaction` would spin for 120 s (motor/core.py), ours
    stops at its bound and lets the aggregator's backoff wait."""
    session = SessionDouble([])
    session.conflict_forever = True
    transaction = MongoTransaction(ClientDouble(session), durable_write_concern(2.0), 0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()

    with pytest.raises(TransactionTimedOut):
        await transaction.run(work_on(session))

    assert loop.time() - started < 3.0  # a bound for the test, far above the 0.3 s limit
    assert session.started > 1
    assert session.aborted == session.started  # every attempt was aborted, none left open
    assert session.commits == 0


async def test_a_non_transient_error_is_raised_at_once() -> None:
    refused = OperationFailure("BSONObjectTooLarge", 10334, {"code": 10334})
    session = SessionDouble([refused])
    transaction = MongoTransaction(ClientDouble(session), durable_write_concern(2.0), 5.0)

    with pytest.raises(OperationFailure) as raised:
        await transaction.run(work_on(session))

    assert raised.value is refused
    assert (session.started, session.aborted) == (1, 1)


async def test_an_unknown_commit_result_is_committed_again() -> None:
    session = SessionDouble([], [labelled("UnknownTransactionCommitResult", code=91)])
    transaction = MongoTransaction(ClientDouble(session), durable_write_concern(2.0), 5.0)

    assert await transaction.run(work_on(session)) == "applied"
    assert (session.started, session.commits) == (1, 2)


async def test_a_transient_commit_failure_retries_the_whole_transaction() -> None:
    session = SessionDouble([], [labelled("TransientTransactionError", code=251)])
    transaction = MongoTransaction(ClientDouble(session), durable_write_concern(2.0), 5.0)

    assert await transaction.run(work_on(session)) == "applied"
    assert (session.started, session.commits) == (2, 2)


def test_the_durable_write_concern_carries_the_store_timeout() -> None:
    """A per-collection WriteConcern replaces the client's wTimeoutMS (pymongo/write_concern.py),
    so without its own wtimeout a write waits for an unreachable majority until the socket
    times out."""
    assert durable_write_concern(2.5).document == {"w": "majority", "j": True, "wtimeout": 2500}


async def test_the_embedded_events_collection_uses_the_durable_write_concern(
    engine: Engine,
) -> None:
    concern = engine.events._collection.write_concern
    assert concern.document == {"w": "majority", "j": True, "wtimeout": 2000}
