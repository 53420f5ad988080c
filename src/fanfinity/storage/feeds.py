"""The change feed seam: where the aggregator learns which events were inserted.

Two implementations deliver the same `ChangeBatch` shape: a MongoDB change stream on `events` and an
in-process log for the embedded engine. Positions are opaque dicts stored in the checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from bson import Timestamp
from pymongo.errors import OperationFailure

Position = dict[str, Any]
Document = Mapping[str, Any]

# MongoDB error codes meaning "the oplog no longer holds this resume point".
HISTORY_LOST_CODES = frozenset({136, 280, 286})


class HistoryLost(Exception):
    """The stored position is no longer available: rebuild the summaries, never skip ahead."""


@dataclass(frozen=True, slots=True)
class ChangeBatch:
    """Inserted events (full documents) and the position to resume after them."""

    events: Sequence[Document]
    position: Position


class ChangeFeed(Protocol):
    def changes(
        self, start: Position, max_batch: int, max_wait_s: float
    ) -> AsyncGenerator[ChangeBatch, None]:
        """Batches after `start`, empty ones included (they advance the position when idle)."""
        ...

    async def snapshot(
        self, pipeline: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], Position]:
        """Run an aggregation on `events` at one point in time, and the position right after it."""
        ...


class InProcessChangeFeed:
    """The embedded engine's change stream: an append-only log of inserted documents.

    The writer appends under `write_lock` right after its insert, and `snapshot` reads under the
    same lock, so a rebuild and the log agree on exactly which events it covered. Entries before
    the position of the batch the consumer has come back from are dropped (that batch is applied).
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
            self._trim(cursor)
            if self.end <= cursor:
                self._appended.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._appended.wait(), timeout=max_wait_s)
            taken = self._log[cursor - self._base : cursor - self._base + max_batch]
            cursor += len(taken)
            yield ChangeBatch(events=taken, position={"sequence": cursor})

    async def snapshot(
        self, pipeline: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], Position]:
        async with self.write_lock:
            rows: list[dict[str, Any]] = await self._events.aggregate(pipeline).to_list(None)
            return rows, {"sequence": self.end}

    def _trim(self, cursor: int) -> None:
        drop = cursor - self._base
        if drop > 0:
            del self._log[:drop]
            self._base = cursor


class MongoChangeFeed:
    """A change stream on `events` (inserts only), resumable from its post-batch resume token."""

    def __init__(self, client: Any, database: Any, events: Any) -> None:
        self._client = client
        self._database = database
        self._events = events

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
        pipeline = [{"$match": {"operationType": "insert"}}]
        try:
            async with self._events.watch(pipeline, **options) as stream:
                while True:
                    documents: list[Document] = []
                    while len(documents) < max_batch:
                        change = await stream.try_next()
                        if change is None:
                            break
                        documents.append(change["fullDocument"])
                    token = stream.resume_token
                    position = {"resumeToken": token} if token is not None else start
                    yield ChangeBatch(events=documents, position=position)
        except OperationFailure as exc:
            if exc.code in HISTORY_LOST_CODES:
                raise HistoryLost(str(exc)) from exc
            raise

    async def snapshot(
        self, pipeline: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], Position]:
        """Aggregate at one cluster time T (snapshot read concern); resume the stream after T."""
        async with await self._client.start_session() as session:
            ping = await self._database.command("ping", session=session)
            cluster_time: Timestamp = ping["operationTime"]
            reply = await self._database.command(
                {
                    "aggregate": self._events.name,
                    "pipeline": pipeline,
                    "cursor": {"batchSize": 1000},
                    "readConcern": {"level": "snapshot", "atClusterTime": cluster_time},
                },
                session=session,
            )
            rows: list[dict[str, Any]] = list(reply["cursor"]["firstBatch"])
            cursor_id = reply["cursor"]["id"]
            while cursor_id:
                more = await self._database.command(
                    {"getMore": cursor_id, "collection": self._events.name, "batchSize": 1000},
                    session=session,
                )
                rows.extend(more["cursor"]["nextBatch"])
                cursor_id = more["cursor"]["id"]
        after = Timestamp(cluster_time.time, cluster_time.inc + 1)
        return rows, {"startAtOperationTime": after}


def describe_position(position: Mapping[str, Any]) -> str:
    """A short, log-safe description of a position."""
    if "sequence" in position:
        return f"sequence {position['sequence']}"
    if "startAtOperationTime" in position:
        return f"cluster time {position['startAtOperationTime']}"
    return "resume token"
