"""Units of work: a bounded MongoDB transaction, and the embedded engine's undo journal.

The aggregator hands each a callback `work(session)` that advances the checkpoint and applies a
batch. Both implementations give the same promise: when `work` raises, nothing it wrote stays.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import pymongo
from pymongo import WriteConcern
from pymongo.errors import OperationFailure, PyMongoError
from pymongo.read_concern import ReadConcern

from fanfinity.storage.embedded import deep_copied

T = TypeVar("T")
# The longest one unit of work may take on MongoDB, retries included, before it gives up and the
# aggregator's backoff takes over. PyMongo's own `with_transaction` retries for 120 s with no
# pause (motor/core.py `with_transaction`, pymongo/asynchronous/client_session.py
# `_WITH_TRANSACTION_RETRY_TIME_LIMIT`), which is what stalled a killed aggregator's successor.
TRANSACTION_TIME_LIMIT_S = 10.0
RETRY_PAUSE_S = 0.05
MAX_TIME_EXPIRED = 50


class UnitOfWork(Protocol):
    async def run(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """Run `work(session)` atomically: when it raises, none of its writes remain."""
        ...


class TransactionTimedOut(Exception):
    """The transaction kept meeting transient errors (WriteConflict with an orphaned transaction,
    an election) for longer than its time limit."""


def durable_write_concern(timeout_s: float) -> WriteConcern:
    """Majority and journal, with a `wtimeout`: a per-collection WriteConcern replaces the
    client's `wTimeoutMS`, so without one a write waits for an unreachable majority until the
    socket times out (pymongo/write_concern.py: `wtimeout` is part of the concern document)."""
    return WriteConcern(w="majority", j=True, wtimeout=max(1, int(timeout_s * 1000)))


@dataclass(slots=True)
class _Retry:
    reason: str


class MongoTransaction:
    """A majority-committed transaction, retried on transient errors within its own time bound.

    This is PyMongo's `with_transaction` loop (retry on the TransientTransactionError label,
    retry the commit on UnknownTransactionCommitResult unless MaxTimeMSExpired) with two
    differences: it stops at `time_limit_s`, not 120 s, and pauses between attempts. Every
    attempt runs under `pymongo.timeout` (CSOT), so each operation and the commit carry the
    remaining time as maxTimeMS; an attempt that runs out raises a timeout error. (Under CSOT
    PyMongo drops the write concern's `wtimeout` and uses the remaining time instead:
    pymongo/_csot.py `apply_write_concern`.)
    """

    def __init__(
        self,
        client: Any,
        write_concern: WriteConcern,
        time_limit_s: float = TRANSACTION_TIME_LIMIT_S,
    ) -> None:
        self._client = client
        self._write_concern = write_concern
        self._time_limit_s = time_limit_s

    async def run(self, work: Callable[[Any], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._time_limit_s
        last = "no attempt"
        attempt = 0
        async with await self._client.start_session() as session:
            while (remaining := deadline - loop.time()) > 0:
                attempt += 1
                outcome = await self._attempt(session, work, remaining)
                if not isinstance(outcome, _Retry):
                    return outcome
                last = outcome.reason
                await asyncio.sleep(min(RETRY_PAUSE_S * attempt, max(0.0, deadline - loop.time())))
        raise TransactionTimedOut(
            f"gave up after {attempt} attempts in {self._time_limit_s:g}s; last: {last}"
        )

    async def _attempt(
        self, session: Any, work: Callable[[Any], Awaitable[T]], remaining_s: float
    ) -> T | _Retry:
        session.start_transaction(
            read_concern=ReadConcern("majority"), write_concern=self._write_concern
        )
        try:
            with pymongo.timeout(remaining_s):
                result = await work(session)
        except BaseException as exc:
            if session.in_transaction:
                await session.abort_transaction()  # PyMongo ignores errors while aborting
            if isinstance(exc, PyMongoError) and exc.has_error_label("TransientTransactionError"):
                return _Retry(repr(exc))
            raise
        while True:
            try:
                with pymongo.timeout(remaining_s):
                    await session.commit_transaction()
                return result
            except PyMongoError as exc:
                if exc.has_error_label("UnknownTransactionCommitResult") and not (
                    isinstance(exc, OperationFailure) and exc.code == MAX_TIME_EXPIRED
                ):
                    return await self._commit_again(session, result, exc)
                if exc.has_error_label("TransientTransactionError"):
                    return _Retry(repr(exc))
                raise

    async def _commit_again(self, session: Any, result: T, first: PyMongoError) -> T:
        """An unknown commit result: committing again is safe (the server commits at most once)."""
        try:
            await session.commit_transaction()
        except PyMongoError as exc:
            raise exc from first
        return result


# --- the embedded engine -----------------------------------------------------------------------


@dataclass(slots=True)
class UndoJournal:
    """What a unit of work wrote on the embedded engine, and how to take it back.

    It is passed where a MongoDB session would be. mongomock-motor's coroutines never suspend
    (each one calls mongomock synchronously), so nothing else writes between a journaled write
    and its undo unless the callback itself awaits something that yields; ours do not.
    """

    _steps: list[tuple[Any, list[dict[str, Any]], list[Any]]] = field(default_factory=list)

    def remember(
        self, collection: Any, before: Sequence[dict[str, Any]], created: list[Any]
    ) -> None:
        self._steps.append((collection, list(before), created))

    async def undo(self) -> None:
        for collection, before, created in reversed(self._steps):
            for document_id in created:
                await collection.delete_one({"_id": document_id})
            for document in before:
                await collection.replace_one({"_id": document["_id"]}, document, upsert=True)
        self._steps.clear()


class JournaledCollection:
    """A mongomock collection whose writes, when given an `UndoJournal` as session, record the
    documents they are about to change so that the journal can restore them."""

    def __init__(self, collection: Any) -> None:
        self._collection = collection

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)

    async def update_one(
        self, filter: Mapping[str, Any], update: Any, upsert: bool = False, session: Any = None
    ) -> Any:
        before = self._stored_copy(filter) if session is not None else None
        result = await self._collection.update_one(filter, update, upsert=upsert)
        self._remember(session, [before] if before else [], result.upserted_id)
        return result

    def _stored_copy(self, filter: Mapping[str, Any]) -> dict[str, Any] | None:
        """A copy of the document `update_one(filter)` is about to change: the first one
        mongomock's `_iter_documents` yields, as its update takes it. Copied as stored rather
        than read through `find_one` (copy, then datetimes made aware): it is only ever written
        back, and the write stores it the same either way."""
        for document in self._collection._iter_documents(filter):
            snapshot: dict[str, Any] = deep_copied(document)
            return snapshot
        return None

    async def update_many(
        self, filter: Mapping[str, Any], update: Any, upsert: bool = False, session: Any = None
    ) -> Any:
        before = await self._collection.find(filter).to_list(None) if session is not None else []
        result = await self._collection.update_many(filter, update, upsert=upsert)
        self._remember(session, before, result.upserted_id)
        return result

    async def insert_one(self, document: Mapping[str, Any], session: Any = None) -> Any:
        result = await self._collection.insert_one(document)
        self._remember(session, [], result.inserted_id)
        return result

    async def insert_many(
        self, documents: Sequence[Mapping[str, Any]], ordered: bool = True, session: Any = None
    ) -> Any:
        result = await self._collection.insert_many(documents, ordered=ordered)
        if isinstance(session, UndoJournal):
            session.remember(self._collection, [], list(result.inserted_ids))
        return result

    async def delete_many(self, filter: Mapping[str, Any], session: Any = None) -> Any:
        before = await self._collection.find(filter).to_list(None) if session is not None else []
        result = await self._collection.delete_many(filter)
        self._remember(session, before, None)
        return result

    def _remember(self, session: Any, before: list[dict[str, Any]], created: Any) -> None:
        if isinstance(session, UndoJournal):
            session.remember(self._collection, before, [] if created is None else [created])


class JournaledWrites:
    """The embedded engine's unit of work: as atomic as a transaction when the callback raises."""

    async def run(self, work: Callable[[Any], Awaitable[T]]) -> T:
        journal = UndoJournal()
        try:
            return await work(journal)
        except BaseException:
            await journal.undo()
            raise
