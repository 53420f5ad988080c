"""The aggregator loop: change feed -> fold -> summaries and checkpoint in one unit of work.

Exactly-once counting rests on two things. The checkpoint is advanced in the same transaction as
the summary ``$inc`` documents, so a crash leaves either both or neither. And the checkpoint only
moves by compare-and-set on its generation, so a second aggregator (or a rebuild) that moved it
first makes this one's transaction fail instead of counting a batch twice; the loser reloads the
checkpoint and carries on from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from loguru import logger
from opentelemetry.trace import Tracer

from fanfinity import metrics
from fanfinity.pipeline.fold import (
    SummaryBounds,
    SummaryIncrement,
    as_utc,
    bound_increments,
    fold_events,
    overflowed,
    rebuild_pipeline,
    summaries_from_rebuild_rows,
)
from fanfinity.storage.engine import Engine
from fanfinity.storage.feeds import ChangeBatch, HistoryLost, Position, describe_position
from fanfinity.storage.repositories import CheckpointConflict
from fanfinity.tracing import commit_span

FEED_WAIT_S = 0.2
# Apply at most ~10 batches a second: under load each batch then carries more events, so the
# per-batch costs (one update per match, the checkpoint, the transaction) are paid less often,
# and events are still counted well within a second.
MIN_BATCH_INTERVAL_S = 0.1
IDLE_CHECKPOINT_S = 10.0
ACTIVE_REFRESH_S = 5.0
MAX_BACKOFF_S = 30.0


@dataclass(frozen=True, slots=True)
class RebuildReport:
    matches: int
    events: int
    position: Position


class Aggregator:
    """Folds inserted events into match summaries, one checkpointed batch at a time."""

    def __init__(
        self,
        engine: Engine,
        *,
        batch_size: int,
        stall_after_s: float,
        active_window: timedelta,
        tracer: Tracer | None = None,
        on_applied: Callable[[Collection[str]], None] | None = None,
        bounds: SummaryBounds | None = None,
    ) -> None:
        self._engine = engine
        self._batch_size = batch_size
        self._stall_after_s = stall_after_s
        self._active_window = active_window
        self._tracer = tracer
        # Told which matches a committed batch changed (the live streams of this process).
        self._on_applied = on_applied
        self._bounds = bounds or SummaryBounds()
        self._stopping = asyncio.Event()
        self._running = False
        self._last_progress = time.monotonic()
        self._last_checkpoint_write = time.monotonic()
        self.events_processed = 0

    @property
    def running(self) -> bool:
        return self._running

    def stalled_for(self) -> float:
        """Seconds since the loop last heard from the feed (it hears at least every 0.2 s)."""
        return time.monotonic() - self._last_progress

    def healthy(self) -> bool:
        return self._running and self.stalled_for() <= self._stall_after_s

    def stop(self) -> None:
        """Finish the batch in hand, then leave the loop."""
        self._stopping.set()

    async def run(self) -> None:
        """Run until `stop()`, restarting from the checkpoint after conflicts and store failures."""
        self._running = True
        self._last_progress = time.monotonic()
        refresher = asyncio.create_task(self._refresh_active_matches(), name="matches-active")
        backoff = 0.5
        try:
            while not self._stopping.is_set():
                try:
                    await self._follow_feed()
                    backoff = 0.5
                except CheckpointConflict as exc:
                    logger.warning("checkpoint moved by someone else ({}); reloading it", exc)
                except HistoryLost as exc:
                    logger.warning("change feed history lost ({}); rebuilding summaries", exc)
                    await self._rebuild_after_history_lost()
                except Exception as exc:  # store down, election, network: retry from checkpoint
                    logger.error("aggregator failed, retrying in {:.1f}s: {!r}", backoff, exc)
                    await self._sleep_unless_stopping(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
        finally:
            self._running = False
            refresher.cancel()
            await asyncio.gather(refresher, return_exceptions=True)
            logger.info("aggregator stopped after {} events", self.events_processed)

    async def _follow_feed(self) -> None:
        checkpoint = await self._engine.checkpoints.load()
        if checkpoint is None:
            logger.info("no checkpoint: rebuilding summaries from events before following the feed")
            await self.rebuild()
            checkpoint = await self._engine.checkpoints.load()
            if checkpoint is None:
                raise CheckpointConflict("checkpoint vanished after the rebuild")
        generation: int = checkpoint["generation"]
        position: Position = checkpoint["position"]
        logger.info("following the change feed from {}", describe_position(position))
        feed = self._engine.feed.changes(position, self._batch_size, FEED_WAIT_S)
        async with contextlib.aclosing(feed):  # close the change stream on stop or conflict
            await self._apply_batches(feed, generation, position)

    async def _apply_batches(
        self, feed: AsyncGenerator[ChangeBatch, None], generation: int, position: Position
    ) -> None:
        async for batch in feed:
            self._last_progress = time.monotonic()
            if batch.events:
                started = time.monotonic()
                await self._engine.match_events.copy(batch.events)
                generation = await self._commit(batch.events, batch.position, generation)
                await asyncio.sleep(max(0.0, MIN_BATCH_INTERVAL_S - (time.monotonic() - started)))
            elif batch.position != position and self._idle_checkpoint_due():
                generation = await self._commit((), batch.position, generation)
            else:
                metrics.AGGREGATOR_LAG.set(0)
            position = batch.position
            self._last_progress = time.monotonic()
            if self._stopping.is_set():
                return

    async def _commit(
        self, events: Sequence[Mapping[str, Any]], position: Position, generation: int
    ) -> int:
        applied_at = datetime.now(UTC)
        increments = fold_events(events, applied_at)
        bounded: list[SummaryIncrement] = []  # what the last (committed) attempt applied

        async def work(session: Any) -> int:
            new_generation = await self._engine.checkpoints.advance(
                generation, position, applied_at, session
            )
            admitted = await self._engine.summaries.admitted_keys(increments, session)
            bounded[:] = bound_increments(increments.values(), admitted, self._bounds)
            await self._engine.summaries.apply(bounded, applied_at, session)
            return new_generation

        if self._tracer is None:
            new_generation = await self._engine.unit_of_work.run(work)
        else:
            with commit_span(self._tracer, len(events), len(increments), generation):
                new_generation = await self._engine.unit_of_work.run(work)
        self._last_checkpoint_write = time.monotonic()
        metrics.count_overflow(*overflowed(bounded))
        if events:
            oldest = min(as_utc(event["receivedAt"]) for event in events)
            metrics.AGGREGATOR_LAG.set(max(0.0, (applied_at - oldest).total_seconds()))
            metrics.AGGREGATOR_BATCH_SIZE.observe(len(events))
            metrics.EVENTS_PROCESSED.inc(len(events))
            self.events_processed += len(events)
            if self._on_applied is not None:
                self._on_applied(increments.keys())
        return new_generation

    async def rebuild(self, match_id: str | None = None) -> RebuildReport:
        """Recount summaries from `events` at one point in time.

        A full rebuild moves the checkpoint to that point in the same unit of work, so the feed
        continues exactly after what was counted, and a running aggregator sees its generation
        change and reloads. A single-match rebuild leaves the checkpoint alone: it is exact when
        that match has nothing in flight (for example after it ended).
        """
        rows, position = await self._engine.feed.snapshot(rebuild_pipeline(match_id))
        summaries = summaries_from_rebuild_rows(rows, self._bounds)
        rebuilt_at = datetime.now(UTC)
        checkpoint = await self._engine.checkpoints.load()
        generation = None if checkpoint is None else int(checkpoint["generation"])

        async def work(session: Any) -> None:
            if match_id is None:
                await self._engine.checkpoints.advance(generation, position, rebuilt_at, session)
            await self._engine.summaries.replace_counts(summaries, rebuilt_at, session, match_id)

        await self._engine.unit_of_work.run(work)
        events = sum(summary["total"] for summary in summaries.values())
        copied = await self._engine.match_events.backfill(self._engine.events, match_id)
        logger.info(
            "rebuilt {} match summaries from {} events ({} copied to match_events); "
            "feed continues from {}",
            len(summaries),
            events,
            copied,
            describe_position(position),
        )
        return RebuildReport(matches=len(summaries), events=events, position=position)

    async def _rebuild_after_history_lost(self) -> None:
        try:
            await self.rebuild()
        except CheckpointConflict as exc:
            logger.warning("rebuild lost the checkpoint race ({}); reloading", exc)

    def _idle_checkpoint_due(self) -> bool:
        return time.monotonic() - self._last_checkpoint_write >= IDLE_CHECKPOINT_S

    async def _refresh_active_matches(self) -> None:
        while True:
            try:
                since = datetime.now(UTC) - self._active_window
                metrics.MATCHES_ACTIVE.set(await self._engine.summaries.count_active(since))
            except Exception as exc:  # a gauge must never take the aggregator down
                logger.debug("could not refresh matches_active: {}", exc)
            await asyncio.sleep(ACTIVE_REFRESH_S)

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
