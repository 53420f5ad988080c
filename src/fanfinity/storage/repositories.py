"""Repositories over the raw Motor collections: the only code that speaks MongoDB's query language.

They take an optional session so that the aggregator's unit of work can run them inside a
transaction on MongoDB, and without one on the embedded engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import bson
import bson.errors
import pymongo
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from fanfinity.pipeline.fold import AdmittedKeys, SummaryIncrement, ingest_latency_update

DUPLICATE_KEY = 11000
DEAD_LETTERS = "dead_letters"
# Server codes that mean "this update, as sent, can never succeed": retrying it would stall
# counting for every match, so the aggregator parks the match's events instead. Anything else
# (no code, or one not listed) is treated as transient and goes through the backoff.
REFUSED_CODES: Mapping[int, str] = {
    2: "BadValue",
    9: "FailedToParse",
    14: "TypeMismatch",
    28: "PathNotViable",
    40: "ConflictingUpdateOperators",
    52: "DollarPrefixedFieldName",
    56: "EmptyFieldName",
    57: "DottedFieldName",
    10334: "BSONObjectTooLarge",
    17419: "document would exceed the 16 MB limit after the update",
}
EMPTY_COUNTS: dict[str, Any] = {
    "total": 0,
    "byType": {},
    "byTeam": {},
    "goals": {},
    "ownGoals": {},
    "perMinute": {},
    "overflow": {"teams": 0, "minutes": 0},
    "firstEventAt": None,
    "lastEventAt": None,
    "kickoffAt": None,
    "statusRank": 0,
}


@dataclass(frozen=True, slots=True)
class InsertReport:
    """What an unordered insert did: which positions were duplicates and which failed otherwise."""

    duplicate_indexes: frozenset[int] = frozenset()
    failed_indexes: Mapping[int, str] = field(default_factory=dict)


class CheckpointConflict(Exception):
    """Another aggregator (or a rebuild) moved the checkpoint: this copy must not apply."""


class SummaryRefused(Exception):
    """The store refused one match's summary update for a reason retrying cannot fix."""

    def __init__(self, match_id: str, reason: str) -> None:
        super().__init__(f"summary update for {match_id} refused: {reason}")
        self.match_id = match_id
        self.reason = reason


def refusal_reason(error: BaseException) -> str | None:
    """Why the store will never accept this update, or None when retrying may help.

    Read from PyMongo's error classes (pymongo/errors.py): an error carrying the
    `TransientTransactionError` or `RetryableWriteError` label (`has_error_label`), or whose
    `timeout` is true (ExecutionTimeout, WTimeoutError, NetworkTimeout), is transient, and so is
    every `ConnectionFailure` (AutoReconnect, NotPrimaryError, ServerSelectionTimeoutError).
    What is left and refused for good: a document BSON cannot encode or that is too large
    (`DocumentTooLarge` is a `bson.errors.InvalidDocument`, raised before sending), and an
    `OperationFailure`/`WriteError` with one of `REFUSED_CODES`.
    """
    if isinstance(error, bson.errors.InvalidDocument):
        return f"{type(error).__name__}: {error}"
    if not isinstance(error, OperationFailure) or error.timeout:
        return None
    if error.has_error_label("TransientTransactionError") or error.has_error_label(
        "RetryableWriteError"
    ):
        return None
    name = REFUSED_CODES.get(error.code or 0)
    if name is None:
        return None
    return f"code {error.code} ({name}): {str(error)[:300]}"


class WriteNotConfirmed(Exception):
    """Documents may be written, but majority/journal was not confirmed: none is durable yet."""


def insert_report(error: BulkWriteError) -> InsertReport:
    """The one place that reads a BulkWriteError (MongoDB and mongomock share this shape).

    A write concern error (step-down, majority unreachable) fails the whole batch: the inserts
    may be rolled back, so none of them may be acknowledged. Retries resolve them idempotently.
    """
    if error.details.get("writeConcernErrors"):
        raise WriteNotConfirmed(str(error.details["writeConcernErrors"][0].get("errmsg", "")))
    duplicates: set[int] = set()
    failed: dict[int, str] = {}
    for write_error in error.details.get("writeErrors", []):
        if write_error.get("code") == DUPLICATE_KEY:
            duplicates.add(int(write_error["index"]))
        else:
            failed[int(write_error["index"])] = str(write_error.get("errmsg", "write error"))
    return InsertReport(frozenset(duplicates), failed)


def _unstorable(documents: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    """Documents BSON cannot hold (validation should have refused them): kept out of the insert
    so that one bad event can never fail, or half-apply, everybody else's group commit."""
    failed: dict[int, str] = {}
    for index, document in enumerate(documents):
        try:
            bson.encode(document)
        except (bson.errors.InvalidDocument, OverflowError, ValueError) as exc:
            failed[index] = f"not storable: {exc}"
    return failed


def _with_unstorable(report: InsertReport, unstorable: dict[int, str], total: int) -> InsertReport:
    """Map a report about the storable subset back to positions in the whole batch."""
    positions = [index for index in range(total) if index not in unstorable]
    return InsertReport(
        duplicate_indexes=frozenset(positions[i] for i in report.duplicate_indexes),
        failed_indexes={
            **{positions[i]: reason for i, reason in report.failed_indexes.items()},
            **unstorable,
        },
    )


class EventRepository:
    """The `events` collection. `on_inserted` lets the embedded engine feed its change log."""

    def __init__(
        self,
        collection: Any,
        on_inserted: Callable[[Sequence[Mapping[str, Any]]], None] | None = None,
        write_lock: Any = None,
        majority_reads: Any = None,
    ) -> None:
        self._collection = collection
        self._on_inserted = on_inserted
        self._write_lock = write_lock
        self._majority_reads = majority_reads if majority_reads is not None else collection

    async def insert_many(self, documents: Sequence[Mapping[str, Any]]) -> InsertReport:
        """One unordered insert: duplicates and bad documents do not stop the rest landing."""
        if self._write_lock is None:
            return await self._insert(documents)
        async with self._write_lock:
            return await self._insert(documents)

    async def _insert(self, documents: Sequence[Mapping[str, Any]]) -> InsertReport:
        unstorable = _unstorable(documents)
        storable = [doc for index, doc in enumerate(documents) if index not in unstorable]
        try:
            if storable:
                await self._collection.insert_many(storable, ordered=False)
            report = InsertReport()
        except BulkWriteError as exc:
            report = insert_report(exc)
        if unstorable:
            report = _with_unstorable(report, unstorable, len(documents))
        if self._on_inserted is not None:
            rejected = report.duplicate_indexes | set(report.failed_indexes)
            self._on_inserted([doc for index, doc in enumerate(documents) if index not in rejected])
        return report

    async def fingerprints(self, event_ids: Iterable[str]) -> dict[str, str]:
        """Stored payload hashes, read with majority read concern: a duplicate whose first copy is
        not yet majority-committed is not found, so its retry is not acknowledged early."""
        cursor = self._majority_reads.find(
            {"_id": {"$in": list(event_ids)}}, projection={"fingerprint": 1}
        )
        return {doc["_id"]: doc.get("fingerprint", "") async for doc in cursor}

    async def get(self, event_id: str) -> dict[str, Any] | None:
        document: dict[str, Any] | None = await self._collection.find_one({"_id": event_id})
        return document

    async def in_chunks(
        self, match_id: str | None, size: int = 1000
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Every stored event (of one match, or all), `size` at a time, in `_id` order."""
        query: dict[str, Any] = {"matchId": match_id} if match_id else {}
        chunk: list[dict[str, Any]] = []
        async for document in self._majority_reads.find(query).sort("_id", 1):
            chunk.append(document)
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    async def count(self, match_id: str | None = None) -> int:
        query = {"matchId": match_id} if match_id else {}
        count: int = await self._collection.count_documents(query)
        return count


class SummaryRepository:
    """The `match_summaries` read model: one document per match."""

    def __init__(self, collection: Any, operation_timeout_s: float = 2.0) -> None:
        self._collection = collection
        self._operation_timeout_s = operation_timeout_s

    async def get(self, match_id: str) -> dict[str, Any] | None:
        document: dict[str, Any] | None = await self._collection.find_one({"_id": match_id})
        return document

    async def admitted_keys(
        self, match_ids: Iterable[str], session: Any = None
    ) -> dict[str, AdmittedKeys]:
        """The team and minute keys each match's summary already holds (for the fold's bounds)."""
        cursor = self._collection.find(
            {"_id": {"$in": list(match_ids)}},
            projection={"byTeam": 1, "perMinute": 1},
            session=session,
        )
        return {
            document["_id"]: AdmittedKeys(
                teams=frozenset(document.get("byTeam") or ()),
                minutes=frozenset(document.get("perMinute") or ()),
            )
            async for document in cursor
        }

    async def apply(
        self,
        increments: Iterable[SummaryIncrement],
        applied_at: datetime,
        session: Any = None,
    ) -> None:
        """One upsert per match; an update the store refuses for good names its match."""
        for increment in increments:
            try:
                await self._collection.update_one(
                    {"_id": increment.match_id},
                    increment.as_update(applied_at),
                    upsert=True,
                    session=session,
                )
            except Exception as exc:
                reason = refusal_reason(exc)
                if reason is None:
                    raise
                raise SummaryRefused(increment.match_id, reason) from exc

    async def replace_counts(
        self,
        summaries: Mapping[str, Mapping[str, Any]],
        rebuilt_at: datetime,
        session: Any = None,
    ) -> None:
        """Overwrite the counted fields (latency histograms are measurements and are kept)."""
        for summary_id, summary in summaries.items():
            await self._collection.update_one(
                {"_id": summary_id},
                _overwrite({**summary, "updatedAt": rebuilt_at}),
                upsert=True,
                session=session,
            )

    async def reset_counts(
        self, match_ids: Sequence[str], rebuilt_at: datetime, session: Any = None
    ) -> None:
        """Empty the counted fields of matches that have no stored events (any more)."""
        await self._collection.update_many(
            {"_id": {"$in": list(match_ids)}},
            _overwrite({**EMPTY_COUNTS, "updatedAt": rebuilt_at}),
            session=session,
        )

    async def ids(self) -> AsyncIterator[str]:
        """Every summary's match id, streamed (a rebuild compares them with what it counted)."""
        async for document in self._collection.find({}, projection={"_id": 1}):
            yield str(document["_id"])

    async def add_ingest_latency(self, buckets_by_match: Mapping[str, Mapping[int, int]]) -> None:
        """Bounded (CSOT): a summary locked by an orphaned transaction must not hold ingest up."""
        with pymongo.timeout(self._operation_timeout_s):
            for match_id, buckets in buckets_by_match.items():
                await self._collection.update_one(
                    {"_id": match_id}, ingest_latency_update(buckets), upsert=True
                )

    async def list(
        self, status_rank: int | None, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        query: dict[str, Any] = {"total": {"$gt": 0}}
        if status_rank is not None:
            query["statusRank"] = status_rank
        projection = {
            "total": 1,
            "statusRank": 1,
            "firstEventAt": 1,
            "lastEventAt": 1,
            "updatedAt": 1,
            "byTeam": 1,
        }
        cursor = (
            self._collection.find(query, projection=projection)
            .sort([("updatedAt", -1), ("_id", 1)])
            .skip(offset)
            .limit(limit)
        )
        items: list[dict[str, Any]] = await cursor.to_list(limit)
        total: int = await self._collection.count_documents(query)
        return items, total

    async def count_active(self, since: datetime) -> int:
        """Matches started and not ended, or with no start/end yet but recent events."""
        count: int = await self._collection.count_documents(
            {
                "total": {"$gt": 0},
                "$or": [{"statusRank": 1}, {"statusRank": 0, "updatedAt": {"$gte": since}}],
            }
        )
        return count


def _overwrite(fields: Mapping[str, Any]) -> dict[str, Any]:
    """$set the fields, but $unset those that are None: the fold's later ``$min`` on a stored null
    would keep the null (null sorts before dates in BSON comparison order; mongomock raises)."""
    update: dict[str, Any] = {"$set": {k: v for k, v in fields.items() if v is not None}}
    unset = {key: "" for key, value in fields.items() if value is None}
    if unset:
        update["$unset"] = unset
    return update


class CheckpointRepository:
    """The aggregator's position, moved only by compare-and-set on its generation."""

    def __init__(self, collection: Any, name: str = "events-aggregator") -> None:
        self._collection = collection
        self.name = name

    async def load(self) -> dict[str, Any] | None:
        document: dict[str, Any] | None = await self._collection.find_one({"_id": self.name})
        return document

    async def advance(
        self,
        generation: int | None,
        position: Mapping[str, Any],
        updated_at: datetime,
        session: Any = None,
    ) -> int:
        """Move from `generation` to the next one; `None` creates the first. Returns the new one.

        Advancing ends any rebuild in progress (its marker is removed)."""
        return await self._move(generation, position, updated_at, session, rebuilding=None)

    async def fence(
        self,
        generation: int | None,
        position: Mapping[str, Any],
        rebuild_id: str,
        updated_at: datetime,
        session: Any = None,
    ) -> int:
        """Start a rebuild: move to the next generation, marked as rebuilding towards `position`.

        Every other writer's compare-and-set now fails, and whoever loads a marked checkpoint
        knows the summaries may be half rebuilt and must not be followed from."""
        marker = {"id": rebuild_id, "startedAt": updated_at, "touchedAt": updated_at}
        return await self._move(generation, position, updated_at, session, rebuilding=marker)

    async def hold(
        self, generation: int, rebuild_id: str, touched_at: datetime, session: Any = None
    ) -> None:
        """Inside each chunk of a rebuild: fail unless this rebuild still owns the checkpoint.

        It writes the checkpoint, so a concurrent writer meets a write conflict rather than
        slipping in between."""
        result = await self._collection.update_one(
            {"_id": self.name, "generation": generation, "rebuilding.id": rebuild_id},
            {"$set": {"rebuilding.touchedAt": touched_at}},
            session=session,
        )
        if result.matched_count != 1:
            raise CheckpointConflict(f"rebuild {rebuild_id} no longer owns the checkpoint")

    async def _move(
        self,
        generation: int | None,
        position: Mapping[str, Any],
        updated_at: datetime,
        session: Any,
        rebuilding: Mapping[str, Any] | None,
    ) -> int:
        fields: dict[str, Any] = {"position": dict(position), "updatedAt": updated_at}
        if rebuilding is not None:
            fields["rebuilding"] = dict(rebuilding)
        if generation is None:
            try:
                await self._collection.insert_one(
                    {"_id": self.name, "generation": 1, **fields}, session=session
                )
            except DuplicateKeyError:
                raise CheckpointConflict("a checkpoint already exists") from None
            return 1
        update: dict[str, Any] = {"$set": {"generation": generation + 1, **fields}}
        if rebuilding is None:
            update["$unset"] = {"rebuilding": ""}
        result = await self._collection.update_one(
            {"_id": self.name, "generation": generation}, update, session=session
        )
        if result.matched_count != 1:
            raise CheckpointConflict(f"checkpoint moved past generation {generation}")
        return generation + 1


class DeadLetterRepository:
    """Events of matches whose summary update the store refused, with the reason.

    Parked in the same unit of work that advances the checkpoint past them, so an event is
    either counted, or parked, never both and never neither. `fanfinity rebuild --match ID`
    recounts the match from `events` and clears its parked events in one unit of work."""

    def __init__(self, collection: Any) -> None:
        self._collection = collection

    async def park(
        self,
        events: Sequence[Mapping[str, Any]],
        reason: str,
        parked_at: datetime,
        session: Any = None,
    ) -> None:
        documents = [
            {
                "eventId": event["_id"],
                "matchId": event["matchId"],
                "reason": reason,
                "parkedAt": parked_at,
            }
            for event in events
        ]
        if documents:
            await self._collection.insert_many(documents, ordered=False, session=session)

    async def clear(self, match_id: str | None, session: Any = None) -> None:
        """Forget the parked events of one match (or all) once they have been recounted."""
        query = {"matchId": match_id} if match_id else {}
        await self._collection.delete_many(query, session=session)

    async def count(self, match_id: str | None = None) -> int:
        query = {"matchId": match_id} if match_id else {}
        count: int = await self._collection.count_documents(query)
        return count

    async def parked(self, match_id: str) -> list[dict[str, Any]]:
        documents: list[dict[str, Any]] = await self._collection.find(
            {"matchId": match_id}, projection={"_id": 0}
        ).to_list(None)
        return documents


class MatchEventRepository:
    """The data team's time-series copy; written at least once per counted event."""

    CHUNK = 200

    def __init__(self, collection: Any) -> None:
        self._collection = collection

    async def copy(self, events: Sequence[Mapping[str, Any]]) -> None:
        """Insert copies in chunks, yielding between them so requests are not held up."""
        for start in range(0, len(events), self.CHUNK):
            await self._collection.insert_many(
                self._documents(events[start : start + self.CHUNK]), ordered=False
            )
            await asyncio.sleep(0)

    async def backfill(self, events: EventRepository, match_id: str | None = None) -> int:
        """Copy every stored event that has no copy yet (after a rebuild); returns how many."""
        copied = 0
        async for chunk in events.in_chunks(match_id):
            ids = [event["_id"] for event in chunk]
            present = {
                document["eventId"]
                async for document in self._collection.find(
                    {"eventId": {"$in": ids}}, projection={"eventId": 1}
                )
            }
            missing = [event for event in chunk if event["_id"] not in present]
            await self.copy(missing)
            copied += len(missing)
        return copied

    @staticmethod
    def _documents(events: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                "timestamp": event["timestamp"],
                "meta": {
                    "matchId": event["matchId"],
                    "eventType": event["eventType"],
                    "teamId": event["teamId"],
                },
                "eventId": event["_id"],
                "playerId": event.get("playerId"),
                "metadata": event.get("metadata"),
                "receivedAt": event["receivedAt"],
            }
            for event in events
        ]
