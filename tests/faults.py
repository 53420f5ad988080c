"""A fault-injecting layer over the embedded engine: repositories, change feed, unit of work.

`with_faults(engine, faults)` returns the same engine with every seam wrapped. A test arms a named
point (`faults.arm("checkpoint.after_advance", times=2)`) and the next calls through that point
raise, by default a `StoreDown` (PyMongo's `AutoReconnect`, what a dropped connection raises).
`faults.refuse_match(id)` makes the store refuse that match's summary updates for good, as
MongoDB does for a document that would pass 16 MB (a `WriteError` with code 10334).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, cast

from pymongo.errors import AutoReconnect, WriteError

from fanfinity.storage.engine import Engine
from fanfinity.storage.feeds import ChangeBatch, ChangeFeed, HistoryLost, Position, SnapshotReader
from fanfinity.storage.repositories import (
    CheckpointRepository,
    EventRepository,
    InsertReport,
    SummaryRepository,
)
from fanfinity.storage.transactions import UnitOfWork

T = TypeVar("T")

POINTS = (
    "events.before_insert",  # nothing stored, the producer gets a 503
    "events.after_insert",  # stored, but the producer gets a 503 (and retries)
    "checkpoint.load",
    "checkpoint.after_advance",  # inside the unit of work: between checkpoint and summaries
    "summaries.update",  # one summary update fails (transiently)
    "unit_of_work.after_commit",  # committed, but the caller sees an error
    "feed.next",  # the change feed fails before handing over a batch
    "rebuild.read",  # an aggregation of a rebuild fails, part way through
    "rebuild.chunk",  # a rebuild's chunk write fails, part way through
)


class StoreDown(AutoReconnect):
    """An injected outage: transient by PyMongo's classes (a `ConnectionFailure`)."""


@dataclass
class Faults:
    armed: dict[str, list[BaseException]] = field(default_factory=dict)
    refused_matches: set[str] = field(default_factory=set)
    fired: Counter[str] = field(default_factory=Counter)

    def arm(self, point: str, times: int = 1, error: BaseException | None = None) -> None:
        assert point in POINTS, point
        made = error if error is not None else StoreDown(f"injected at {point}")
        self.armed.setdefault(point, []).extend([made] * times)

    def refuse_match(self, match_id: str) -> None:
        self.refused_matches.add(match_id)

    def clear(self) -> None:
        self.armed.clear()
        self.refused_matches.clear()

    def check(self, point: str) -> None:
        pending = self.armed.get(point)
        if pending:
            self.fired[point] += 1
            raise pending.pop(0)


def with_faults(engine: Engine, faults: Faults) -> Engine:
    summaries = cast(Any, engine.summaries)
    return replace(
        engine,
        events=cast(EventRepository, _FaultyEvents(engine.events, faults)),
        summaries=SummaryRepository(
            _FaultySummaryCollection(summaries._collection, faults),
            summaries._operation_timeout_s,
        ),
        checkpoints=cast(CheckpointRepository, _FaultyCheckpoints(engine.checkpoints, faults)),
        feed=cast(ChangeFeed, _FaultyFeed(engine.feed, faults)),
        unit_of_work=cast(UnitOfWork, _FaultyUnitOfWork(engine.unit_of_work, faults)),
    )


class _Delegate:
    def __init__(self, inner: Any, faults: Faults) -> None:
        self._inner = inner
        self._faults = faults

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _FaultyEvents(_Delegate):
    async def insert_many(self, documents: Sequence[Mapping[str, Any]]) -> InsertReport:
        self._faults.check("events.before_insert")
        report: InsertReport = await self._inner.insert_many(documents)
        self._faults.check("events.after_insert")
        return report


class _FaultyCheckpoints(_Delegate):
    async def load(self) -> dict[str, Any] | None:
        self._faults.check("checkpoint.load")
        loaded: dict[str, Any] | None = await self._inner.load()
        return loaded

    async def advance(self, *args: Any, **kwargs: Any) -> int:
        generation: int = await self._inner.advance(*args, **kwargs)
        self._faults.check("checkpoint.after_advance")
        return generation

    async def hold(self, *args: Any, **kwargs: Any) -> None:
        self._faults.check("rebuild.chunk")
        await self._inner.hold(*args, **kwargs)


class _FaultySummaryCollection(_Delegate):
    async def update_one(self, filter: Mapping[str, Any], update: Any, **kwargs: Any) -> Any:
        if filter.get("_id") in self._faults.refused_matches and "$inc" in update:
            raise WriteError(
                "Resulting document after update is larger than 16777216", 10334, {"code": 10334}
            )
        if "$inc" in update and "total" in update["$inc"]:  # the aggregator's, not ingest's
            self._faults.check("summaries.update")
        return await self._inner.update_one(filter, update, **kwargs)


class _FaultyUnitOfWork(_Delegate):
    async def run(self, work: Callable[[Any], Awaitable[T]]) -> T:
        result: T = await self._inner.run(work)
        self._faults.check("unit_of_work.after_commit")
        return result


class _FaultySnapshot:
    def __init__(self, inner: SnapshotReader, faults: Faults) -> None:
        self._inner = inner
        self._faults = faults
        self.position = inner.position

    async def aggregate(self, pipeline: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        self._faults.check("rebuild.read")
        async for row in self._inner.aggregate(pipeline):
            yield row


class _FaultyFeed(_Delegate):
    async def changes(
        self, start: Position, max_batch: int, max_wait_s: float
    ) -> AsyncGenerator[ChangeBatch, None]:
        inner = self._inner.changes(start, max_batch, max_wait_s)
        async with contextlib.aclosing(inner):
            async for batch in inner:
                self._faults.check("feed.next")
                yield batch

    @contextlib.asynccontextmanager
    async def snapshot_reader(self) -> AsyncIterator[SnapshotReader]:
        async with self._inner.snapshot_reader() as snapshot:
            yield _FaultySnapshot(snapshot, self._faults)

    async def snapshot(
        self, pipeline: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], Position]:
        async with self.snapshot_reader() as reader:
            return [row async for row in reader.aggregate(pipeline)], reader.position


def history_lost() -> HistoryLost:
    return HistoryLost("injected: the resume point is no longer in the oplog")
