"""Recount match summaries from `events`, in chunks small enough for any store, exactly once.

Sized for 10^7 events and 10^5 matches on MongoDB: every read is one aggregation over a range
of match ids (an index range on `match_time`, streamed by cursor, `allowDiskUse`, bounded per
operation), every write is one unit of work over a chunk of summaries (far under the 60 s
transaction limit and the 16 MB command limit), and no command lists every match id.

Why chunking keeps it exactly-once:

1. All reads run at one point in time T (one snapshot: `atClusterTime` on MongoDB, the write lock
   on the embedded engine), so the chunks together count exactly the events stored up to T, each
   once, and the feed continues from right after T.
2. Before writing anything the rebuild *fences* the checkpoint: it moves it by compare-and-set to
   a new generation marked "rebuilding" (with position T). From then on no other aggregator can
   commit a batch (its compare-and-set fails), so no `$inc` lands on a half-rebuilt summary.
3. Each chunk's unit of work first writes the checkpoint again, conditioned on that generation
   and rebuild id. A competing rebuild that fenced in between makes this chunk fail (and, on
   MongoDB, the two transactions meet as a write conflict on the checkpoint document), so two
   rebuilds never interleave their chunks.
4. Each chunk `$set`s absolute counts, so redoing it is harmless. A rebuild that dies part way
   leaves the marker in the checkpoint, and whoever loads a marked checkpoint rebuilds again from
   scratch instead of following the feed (after `lease_s` without progress, if it is not its own).
5. The last unit of work advances the checkpoint to T and removes the marker: the feed resumes.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fanfinity.pipeline.fold import SummaryBounds, rebuild_pipeline, summaries_from_rebuild_rows
from fanfinity.storage.engine import Engine
from fanfinity.storage.feeds import Position

MATCH_CHUNK = 500


@dataclass(frozen=True, slots=True)
class RebuildReport:
    matches: int
    events: int
    position: Position


def match_ids_pipeline() -> list[dict[str, Any]]:
    """Every match id with stored events (an index scan on `match_time`), in order."""
    return [{"$group": {"_id": "$matchId"}}, {"$sort": {"_id": 1}}]


def chunk_pipeline(match_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The fold's rebuild aggregation restricted to a chunk of matches.

    The ids come sorted, so the chunk is exactly the range from its first to its last id: one
    index range scan on `match_time`, and no list of ids in the command."""
    _all_events, *grouping = rebuild_pipeline(None)
    in_range = {"matchId": {"$gte": match_ids[0], "$lte": match_ids[-1]}}
    return [{"$match": in_range}, *grouping]


def new_rebuild_id() -> str:
    return uuid.uuid4().hex


async def rebuild_all(
    engine: Engine,
    chunk_size: int = MATCH_CHUNK,
    rebuild_id: str | None = None,
    bounds: SummaryBounds | None = None,
) -> RebuildReport:
    """Recount every summary at one point in time and move the checkpoint there."""
    rebuild_id = rebuild_id or new_rebuild_id()
    async with engine.feed.snapshot_reader() as snapshot:
        checkpoint = await engine.checkpoints.load()
        generation = None if checkpoint is None else int(checkpoint["generation"])

        async def fence(session: Any) -> int:
            return await engine.checkpoints.fence(
                generation, snapshot.position, rebuild_id, datetime.now(UTC), session
            )

        fenced = await engine.unit_of_work.run(fence)
        writer = _FencedWriter(engine, fenced, rebuild_id)
        match_ids = [str(row["_id"]) async for row in snapshot.aggregate(match_ids_pipeline())]
        events = 0
        for start in range(0, len(match_ids), chunk_size):
            chunk = match_ids[start : start + chunk_size]
            rows = [row async for row in snapshot.aggregate(chunk_pipeline(chunk))]
            summaries = summaries_from_rebuild_rows(rows, bounds)
            events += sum(int(summary["total"]) for summary in summaries.values())
            await writer.write(functools.partial(engine.summaries.replace_counts, summaries))
        counted = set(match_ids)
        stale = [match_id async for match_id in engine.summaries.ids() if match_id not in counted]
        for start in range(0, len(stale), chunk_size):
            chunk = stale[start : start + chunk_size]
            await writer.write(functools.partial(engine.summaries.reset_counts, chunk))

        async def finish(session: Any) -> None:
            await engine.checkpoints.advance(fenced, snapshot.position, datetime.now(UTC), session)
            await engine.dead_letters.clear(None, session)  # every parked event is counted now

        await engine.unit_of_work.run(finish)
    return RebuildReport(matches=len(match_ids), events=events, position=snapshot.position)


async def rebuild_match(
    engine: Engine, match_id: str, bounds: SummaryBounds | None = None
) -> RebuildReport:
    """Recount one match and bring its parked events back (they are in `events`: counted now).

    The checkpoint is left alone, so this is exact when that match has nothing in flight in the
    feed (for example after it ended, or while its updates were being refused and parked)."""
    async with engine.feed.snapshot_reader() as snapshot:
        rows = [row async for row in snapshot.aggregate(rebuild_pipeline(match_id))]
    summaries = summaries_from_rebuild_rows(rows, bounds)

    async def work(session: Any) -> None:
        rebuilt_at = datetime.now(UTC)
        if summaries:
            await engine.summaries.replace_counts(summaries, rebuilt_at, session)
        else:
            await engine.summaries.reset_counts([match_id], rebuilt_at, session)
        await engine.dead_letters.clear(match_id, session)

    await engine.unit_of_work.run(work)
    events = sum(int(summary["total"]) for summary in summaries.values())
    return RebuildReport(matches=len(summaries), events=events, position=snapshot.position)


class _FencedWriter:
    """Runs each chunk's writes in a unit of work that first proves the fence still holds."""

    def __init__(self, engine: Engine, generation: int, rebuild_id: str) -> None:
        self._engine = engine
        self._generation = generation
        self._rebuild_id = rebuild_id

    async def write(self, writes: Callable[[datetime, Any], Coroutine[Any, Any, None]]) -> None:
        """`writes(rebuilt_at, session)` is one chunk's writes."""

        async def work(session: Any) -> None:
            at = datetime.now(UTC)
            await self._engine.checkpoints.hold(self._generation, self._rebuild_id, at, session)
            await writes(at, session)

        await self._engine.unit_of_work.run(work)
