"""The change feed seam: where the aggregator learns which events were inserted.

Two implementations deliver the same `ChangeBatch` shape: a MongoDB change stream on `events` and an
in-process log for the embedded engine. Positions are opaque dicts stored in the checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pymongo
from bson import Timestamp
from pymongo.errors import OperationFailure

from fanfinity.storage.memory_aggregation import FrozenEvents, mongomock_collection

Position = dict[str, Any]
Document = Mapping[str, Any]

# MongoDB error codes meaning "the oplog no longer holds this resume point".
HISTORY_LOST_CODES = frozenset({136, 280, 286})
# A bound for each rebuild read (it replaces socketTimeoutMS for that command).
REBUILD_OPERATION_TIMEOUT_S = 120.0
SNAPSHOT_BATCH = 1000


class HistoryLost(Exception):
    """The stored position is no longer available: rebuild the summaries, never skip ahead."""


@dataclass(frozen=True, slots=True)
class ChangeBatch:
    """Inserted events (full documents) and the position to resume after them."""

    events: Sequence[Document]
    position: Position


class FeedInvalidated(HistoryLost):
    """The change stream was invalidated (`events` dropped or renamed): recount from what is
    stored now rather than report healthy while `try_next` returns None forever."""


class SnapshotReader(Protocol):
    """Aggregations on `events` that all see the same point in time, and the position after it."""

    position: Position

    def aggregate(self, pipeline: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]: ...


class ChangeFeed(Protocol):
    def changes(
        self, start: Position, max_batch: int, max_wait_s: float
    ) -> AsyncGenerator[ChangeBatch, None]:
        """Batches after `start`, empty ones included (they advance the position when idle)."""
        ...

    def snapshot_reader(self) -> contextlib.AbstractAsyncContextManager[SnapshotReader]:
        """Run aggregations on `events` at one point in time; `position` is right after it."""
        ...

    def committed(self, position: Position) -> None:
        """Everything up to `position` is counted and checkpointed: the feed may forget it."""
        ...

    async def snapshot(
        self, pipeline: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], Position]:
        """Run an aggregation on `events` at one point in time, and the position right after it."""
        ...


class _InProcessSnapshot:
    """The embedded snapshot: no event is written while it is open (it holds the write lock),
    so the stored events are frozen once, indexed on `matchId`, and every aggregation runs on
    that frozen view, with mongomock's results but without a scan and copy of every event per
    aggregation (`memory_aggregation.py`). A collection that is not mongomock's is aggregated
    through its own `aggregate`."""

    def __init__(self, events: Any, position: Position) -> None:
        self._events = events
        self.position = position
        self._frozen: FrozenEvents | None = None

    async def aggregate(self, pipeline: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        collection = mongomock_collection(self._events)
        rows: list[dict[str, Any]]
        if collection is None:
            rows = await self._events.aggregate(pipeline).to_list(None)
        else:
            if self._frozen is None:
                self._frozen = FrozenEvents(collection)
            rows = self._frozen.aggregate(pipeline)
        for row in rows:
            yield row


class InProcessChangeFeed:
    """The embedded engine's change stream: an append-only log of inserted documents.

    The writer appends under `write_lock` right after its insert, and `snapshot` reads under the
    same lock, so a rebuild and the log agree on exactly which events it covered. Entries before
    a position the consumer has committed (`committed`) are dropped.
    """

    def __init__(self, events: Any) -> None:
        self._events = events
        self._log: list[Document] = []
        self._base = 0
        self._appended = asyncio.Event()
        self.write_lock = asyncio.Lock()

    @property
    def end(self) -> int:
        return self._base + len(self._log)

    def append(self, documents: Sequence[Document]) -> None:
        if documents:
            self._log.extend(documents)
            self._appended.set()

    async def changes(
        self, start: Position, max_batch: int, max_wait_s: float
    ) -> AsyncGenerator[ChangeBatch, None]:
        cursor = int(start.get("sequence", 0))
        while True:
            if cursor < self._base:
                raise HistoryLost(f"position {cursor} was trimmed (log starts at {self._base})")
            if self.end <= cursor:
                self._appended.clear()
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can lose a cancellation
                # that arrives as its timeout fires, and a cancelled aggregator then never ends
                # (found by the fault simulation).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max_wait_s):
                        await self._appended.wait()
            taken = self._log[cursor - self._base : cursor - self._base + max_batch]
            cursor += len(taken)
            yield ChangeBatch(events=taken, position={"sequence": cursor})

    @contextlib.asynccontextmanager
    async def snapshot_reader(self) -> AsyncIterator[SnapshotReader]:
        """Holds the write lock for its whole life: every aggregation sees the same events."""
        async with self.write_lock:
            yield _InProcessSnapshot(self._events, {"sequence": self.end})

    async def snapshot(
        self, pipeline: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], Position]:
        async with self.snapshot_reader() as reader:
            return [row async for row in reader.aggregate(pipeline)], reader.position

    def committed(self, position: Position) -> None:
        """Drop the entries before a checkpointed position. Not on handing a batch over: the
        consumer may hold several batches before it commits them, and a failed commit resumes
        from the checkpoint, which must still be in the log (else: a needless full rebuild)."""
        cursor = int(position.get("sequence", 0))
        drop = min(cursor, self.end) - self._base
        if drop > 0:
            del self._log[:drop]
            self._base += drop


class MongoChangeFeed:
    """A change stream on `events` (inserts only), resumable from its post-batch resume token.

    `clock` is injectable so that tests can drive batch deadlines with logical time.
    """

    def __init__(
        self,
        client: Any,
        database: Any,
        events: Any,
        *,
        operation_timeout_s: float = REBUILD_OPERATION_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._database = database
        self._events = events
        self._operation_timeout_s = operation_timeout_s
        self._clock = clock

    async def changes(
        self, start: Position, max_batch: int, max_wait_s: float
    ) -> AsyncGenerator[ChangeBatch, None]:
        options: dict[str, Any] = {
            "full_document": "default",
            "max_await_time_ms": max(1, int(max_wait_s * 1000)),
            "batch_size": max_batch,
        }
        if "resumeToken" in start:
            options["start_after"] = start["resumeToken"]
        elif "startAtOperationTime" in start:
            options["start_at_operation_time"] = start["startAtOperationTime"]
        pipeline = [{"$match": {"operationType": {"$in": ["insert", "invalidate"]}}}]
        try:
            async with self._events.watch(pipeline, **options) as stream:
                while True:
                    documents = await self._next_batch(stream, max_batch, max_wait_s)
                    token = stream.resume_token
                    position = {"resumeToken": token} if token is not None else start
                    if documents or stream.alive:
                        yield ChangeBatch(events=documents, position=position)
                    if not stream.alive:
                        raise FeedInvalidated(
                            "the change stream on `events` was invalidated (collection dropped "
                            "or renamed?)"
                        )
        except OperationFailure as exc:
            if exc.code in HISTORY_LOST_CODES:
                raise HistoryLost(str(exc)) from exc
            raise

    async def _next_batch(self, stream: Any, max_batch: int, max_wait_s: float) -> list[Document]:
        """Close a batch at `max_batch` events or `max_wait_s` after its first event.

        PyMongo's `try_next` (pymongo/synchronous/change_stream.py, run on Motor's executor)
        returns a cached document without I/O, or runs one getMore and returns its first
        document; it returns None only for an empty getMore (after maxAwaitTimeMS). So "until
        None" never ends under steady traffic: the deadline is what bounds a batch, to
        `max_wait_s` plus one getMore wait. After a document, `resume_token` is that document's
        `_id`, or the post-batch resume token when it was the last of its server batch; after
        None it is the post-batch token: either way, the position right after what we took.
        An invalidate (`events` dropped or renamed) closes the cursor: `alive` turns false and
        `try_next` would return None forever, so the loop checks `alive`.
        """
        documents: list[Document] = []
        deadline: float | None = None
        while len(documents) < max_batch and stream.alive:
            change = await stream.try_next()
            if change is None:
                break
            if change.get("operationType") != "insert":
                continue  # an invalidate: `alive` is false from now on
            documents.append(change["fullDocument"])
            now = self._clock()
            if deadline is None:
                deadline = now + max_wait_s
            elif now >= deadline:
                break
        return documents

    @contextlib.asynccontextmanager
    async def snapshot_reader(self) -> AsyncIterator[SnapshotReader]:
        """Aggregations on `events` at one cluster time T (snapshot read concern), however many.

        Every aggregation is bounded (`pymongo.timeout`: CSOT sets the command's maxTimeMS and
        replaces socketTimeoutMS for it, pymongo/synchronous/pool.py `apply_timeout`), may spill
        to disk, and streams its cursor. MongoDB keeps snapshot history for
        `minSnapshotHistoryWindowInSeconds` (300 s by default): a rebuild that reads longer
        fails with SnapshotTooOld and is retried by the aggregator's backoff.
        """
        async with await self._client.start_session() as session:
            with pymongo.timeout(self._operation_timeout_s):
                ping = await self._database.command("ping", session=session)
            cluster_time: Timestamp = ping["operationTime"]
            after = Timestamp(cluster_time.time, cluster_time.inc + 1)
            yield _MongoSnapshot(
                self._database,
                self._events.name,
                session,
                cluster_time,
                {"startAtOperationTime": after},
                self._operation_timeout_s,
            )

    async def snapshot(
        self, pipeline: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], Position]:
        """Aggregate at one cluster time T (snapshot read concern); resume the stream after T."""
        async with self.snapshot_reader() as reader:
            return [row async for row in reader.aggregate(pipeline)], reader.position

    def committed(self, position: Position) -> None:
        """Nothing to forget: the oplog is the server's."""


class _MongoSnapshot:
    def __init__(
        self,
        database: Any,
        collection: str,
        session: Any,
        cluster_time: Timestamp,
        position: Position,
        operation_timeout_s: float,
    ) -> None:
        self._database = database
        self._collection = collection
        self._session = session
        self._cluster_time = cluster_time
        self.position = position
        self._operation_timeout_s = operation_timeout_s

    async def aggregate(self, pipeline: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        with pymongo.timeout(self._operation_timeout_s):
            reply = await self._database.command(
                {
                    "aggregate": self._collection,
                    "pipeline": pipeline,
                    "cursor": {"batchSize": SNAPSHOT_BATCH},
                    "allowDiskUse": True,
                    "readConcern": {"level": "snapshot", "atClusterTime": self._cluster_time},
                },
                session=self._session,
            )
        for row in reply["cursor"]["firstBatch"]:
            yield row
        cursor_id = reply["cursor"]["id"]
        while cursor_id:
            with pymongo.timeout(self._operation_timeout_s):
                more = await self._database.command(
                    {
                        "getMore": cursor_id,
                        "collection": self._collection,
                        "batchSize": SNAPSHOT_BATCH,
                    },
                    session=self._session,
                )
            for row in more["cursor"]["nextBatch"]:
                yield row
            cursor_id = more["cursor"]["id"]


def describe_position(position: Mapping[str, Any]) -> str:
    """A short, log-safe description of a position."""
    if "sequence" in position:
        return f"sequence {position['sequence']}"
    if "startAtOperationTime" in position:
        return f"cluster time {position['startAtOperationTime']}"
    return "resume token"
