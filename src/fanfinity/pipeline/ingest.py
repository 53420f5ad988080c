"""Group commit: concurrent requests share one unordered ``insert_many`` per batch.

A request hands its event to `IngestBatcher.submit` and waits for the batch that carries it to be
durably written (majority + journal on MongoDB). It gets its own outcome back: accepted, an
idempotent duplicate, a conflict, or `StoreUnavailable` when nothing could be confirmed in time.
The queue is bounded; a full queue answers at once instead of letting latency and memory grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections import Counter, defaultdict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from loguru import logger
from opentelemetry.trace import SpanContext, Tracer

from fanfinity import metrics
from fanfinity.errors import IngestOverloaded, ShuttingDown, StoreUnavailable
from fanfinity.pipeline.fold import latency_bucket
from fanfinity.schemas import BatchItemResult, BatchResult, FieldError, ItemOutcome, ValidEvent
from fanfinity.storage.models import event_document
from fanfinity.storage.repositories import EventRepository, InsertReport, SummaryRepository
from fanfinity.tracing import current_span_context, flush_span, record_failure


class WriteOutcome(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    FAILED = "failed"


def resolve_outcomes(
    documents: Sequence[Mapping[str, Any]],
    report: InsertReport,
    stored_fingerprints: Mapping[str, str],
) -> list[WriteOutcome]:
    """Each document's outcome: a duplicate `_id` is a retry if the payloads match, else a clash."""
    outcomes: list[WriteOutcome] = []
    for index, document in enumerate(documents):
        if index in report.failed_indexes:
            outcomes.append(WriteOutcome.FAILED)
        elif index not in report.duplicate_indexes:
            outcomes.append(WriteOutcome.ACCEPTED)
        else:
            stored = stored_fingerprints.get(document["_id"])
            if stored is None:
                outcomes.append(WriteOutcome.FAILED)
            elif stored == document["fingerprint"]:
                outcomes.append(WriteOutcome.DUPLICATE)
            else:
                outcomes.append(WriteOutcome.CONFLICT)
    return outcomes


@dataclass(slots=True)
class _Pending:
    document: dict[str, Any]
    future: asyncio.Future[WriteOutcome]
    received_at: float
    request_span: SpanContext | None = None  # only when tracing: the flush span links to it


class IngestLatencyRecorder:
    """Buckets ingest response times per match and adds them to the summaries once a second.

    Latencies are known only after the write, so they cannot ride in the event document; one
    ``$inc`` per active match per interval keeps their cost off the request path.
    """

    def __init__(self, summaries: SummaryRepository, interval_s: float = 1.0) -> None:
        self._summaries = summaries
        self._interval_s = interval_s
        self._pending: defaultdict[str, Counter[int]] = defaultdict(Counter)

    def record(self, match_id: str, milliseconds: float) -> None:
        self._pending[match_id][latency_bucket(milliseconds)] += 1

    async def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, defaultdict(Counter)
        try:
            await self._summaries.add_ingest_latency(pending)
        except Exception as exc:  # keep the samples for the next attempt
            logger.warning("could not record ingest latencies, will retry: {}", exc)
            for match_id, buckets in pending.items():
                self._pending[match_id].update(buckets)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.flush()


# Items of batch requests one group commit takes at most. The batcher writes one group at a time,
# so an event posted on its own waits for the group being written: a whole 500-item batch of
# deep events held it ~130 ms on the embedded engine (issue 18). Single events go first, and
# batch items join each group at most this many at a time.
BULK_PER_FLUSH = 64


class IngestBatcher:
    """The in-process group-commit queue in front of `EventRepository.insert_many`.

    Two lanes: events posted one per request, and the items of batch requests. Each group takes
    every waiting single event (up to `max_batch`), then at most `BULK_PER_FLUSH` batch items,
    so a producer of single events never waits behind a whole batch."""

    def __init__(
        self,
        events: EventRepository,
        latency: IngestLatencyRecorder,
        *,
        max_batch: int,
        linger_s: float,
        queue_max: int,
        store_timeout_s: float,
        tracer: Tracer | None = None,
    ) -> None:
        self._events = events
        self._latency = latency
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._queue_max = queue_max
        self._store_timeout_s = store_timeout_s
        self._tracer = tracer
        self._queue: deque[_Pending] = deque()  # single events
        self._bulk: deque[_Pending] = deque()  # items of batch requests
        self._deadlines = WriteDeadlines(store_timeout_s)
        self._wakeup = asyncio.Event()
        self._batch_full = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.acknowledged = 0

    @property
    def queued(self) -> int:
        return len(self._queue) + len(self._bulk)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingest-batcher")

    async def close(self, timeout_s: float) -> None:
        """Stop taking events, write everything queued, and wait (bounded) for the last flush."""
        self._closing = True
        self._wakeup.set()
        self._batch_full.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout=timeout_s)
            except TimeoutError:
                logger.error("ingest batcher did not drain within {}s", timeout_s)
                self._task.cancel()
        logger.info(
            "ingest batcher stopped: {} events acknowledged by this process", self.acknowledged
        )

    async def submit(self, document: dict[str, Any], received_at: float) -> WriteOutcome:
        """Queue one event and wait until its batch is durable (or the time bound passes)."""
        future = self._enqueue(document, received_at, self._queue)
        return await future

    def submit_nowait(
        self, document: dict[str, Any], received_at: float
    ) -> asyncio.Future[WriteOutcome]:
        """Queue one item of a batch request and return its future (the batch endpoint)."""
        return self._enqueue(document, received_at, self._bulk)

    def _enqueue(
        self, document: dict[str, Any], received_at: float, lane: deque[_Pending]
    ) -> asyncio.Future[WriteOutcome]:
        event_id = str(document["_id"])
        if self._closing:
            metrics.INGEST_REJECTED.labels("shutting_down").inc()
            raise ShuttingDown(
                "the service is shutting down; retry on another replica", 1, event_id
            )
        if self.queued >= self._queue_max:
            metrics.INGEST_REJECTED.labels("overloaded").inc()
            raise IngestOverloaded(
                f"{self.queued} events are already waiting to be written; retry shortly",
                1,
                event_id,
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[WriteOutcome] = loop.create_future()
        request_span = None if self._tracer is None else current_span_context()
        lane.append(_Pending(document, future, received_at, request_span))
        self._deadlines.watch(loop, future, event_id)
        if not self._wakeup.is_set():
            self._wakeup.set()
        if self.queued >= self._max_batch:
            self._batch_full.set()
        return future

    async def _run(self) -> None:
        while True:
            if not self.queued:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                await self._linger()
            batch = self._take_batch()
            metrics.INGEST_QUEUE_DEPTH.set(self.queued)
            if batch and self._tracer is not None:
                requests = (pending.request_span for pending in batch)
                with flush_span(self._tracer, requests, len(batch)):
                    await self._flush(batch)
            elif batch:
                await self._flush(batch)

    async def _linger(self) -> None:
        """Give concurrent requests `linger_s` to join the batch, unless it is already full."""
        if self._linger_s <= 0 or self.queued >= self._max_batch or self._closing:
            return
        self._batch_full.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._batch_full.wait(), timeout=self._linger_s)

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        self._take(self._queue, batch, self._max_batch)
        self._take(self._bulk, batch, min(self._max_batch, len(batch) + BULK_PER_FLUSH))
        return batch

    @staticmethod
    def _take(lane: deque[_Pending], batch: list[_Pending], up_to: int) -> None:
        while lane and len(batch) < up_to:
            pending = lane.popleft()
            if not pending.future.done():  # expired while queued: never written, never acked
                batch.append(pending)

    async def _flush(self, batch: list[_Pending]) -> None:
        documents = [pending.document for pending in batch]
        try:
            report = await asyncio.wait_for(
                self._events.insert_many(documents), timeout=self._store_timeout_s
            )
            duplicate_ids = [documents[index]["_id"] for index in report.duplicate_indexes]
            stored = (
                await asyncio.wait_for(
                    self._events.fingerprints(duplicate_ids), timeout=self._store_timeout_s
                )
                if duplicate_ids
                else {}
            )
        except Exception as exc:  # every failure of the store means: not confirmed durable
            logger.warning("group commit of {} events failed: {!r}", len(batch), exc)
            if self._tracer is not None:
                record_failure(exc)
            unanswered = [pending for pending in batch if not pending.future.done()]
            metrics.INGEST_REJECTED.labels("unavailable").inc(len(unanswered))
            for pending in unanswered:  # the others were already told 503 (and counted) on expiry
                _fail(pending.future, str(pending.document["_id"]))
            return
        metrics.INGEST_BATCH_SIZE.observe(len(batch))
        finished = time.perf_counter()
        outcomes = resolve_outcomes(documents, report, stored)
        for pending, outcome in zip(batch, outcomes, strict=True):
            if outcome is WriteOutcome.ACCEPTED:
                metrics.events_ingested(pending.document["eventType"]).inc()
            if not pending.future.done():  # else the request was already told 503
                pending.future.set_result(outcome)
                self._answered(pending, outcome, finished)

    def _answered(self, pending: _Pending, outcome: WriteOutcome, finished: float) -> None:
        document = pending.document
        if outcome is WriteOutcome.ACCEPTED:
            self.acknowledged += 1
        elif outcome is WriteOutcome.DUPLICATE:
            metrics.EVENTS_DUPLICATE.inc()
        elif outcome is WriteOutcome.CONFLICT:
            metrics.INGEST_REJECTED.labels("conflict").inc()
            return
        else:
            metrics.INGEST_REJECTED.labels("unavailable").inc()
            return
        self._latency.record(document["matchId"], (finished - pending.received_at) * 1000)


# How late after its deadline a write may be answered 503 at most: the sweep's period.
DEADLINE_SWEEP_S = 0.05


class WriteDeadlines:
    """Answers 503 to every queued write not confirmed within `timeout_s` of being queued.

    One timer for all of them, not one per request (arming and firing a timer costs ~4 us on
    these machines, ~1 % of an event's CPU): writes are watched in the order they are queued and
    all wait the same `timeout_s`, so their deadlines come in that order too, and a sweep takes
    the expired and the answered ones off the front. A sweep runs at most every
    `DEADLINE_SWEEP_S`, so a write is answered at most that much after its deadline."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._waiting: deque[tuple[float, asyncio.Future[WriteOutcome], str]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def watch(
        self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[WriteOutcome], event_id: str
    ) -> None:
        deadline = loop.time() + self._timeout_s
        self._waiting.append((deadline, future, event_id))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        waiting = self._waiting
        while waiting and (waiting[0][0] <= now or waiting[0][1].done()):
            _, future, event_id = waiting.popleft()
            _expire(future, event_id, self._timeout_s)
        self._timer = None
        if waiting:
            next_sweep = max(waiting[0][0], now + DEADLINE_SWEEP_S)
            self._timer = loop.call_at(next_sweep, self._sweep, loop)


def _expire(future: asyncio.Future[WriteOutcome], event_id: str, timeout_s: float) -> None:
    if not future.done():
        metrics.INGEST_REJECTED.labels("timeout").inc()
        future.set_exception(
            StoreUnavailable(
                f"the event was not confirmed durable within {timeout_s:g}s; "
                "retry with the same eventId (retries are idempotent)",
                1,
                event_id,
            )
        )


def _fail(future: asyncio.Future[WriteOutcome], event_id: str) -> None:
    if not future.done():
        future.set_exception(
            StoreUnavailable(
                "the event store did not accept the write; retry with the same eventId",
                1,
                event_id,
            )
        )


@dataclass(frozen=True, slots=True)
class BatchIngest:
    """What became of a batch: one result per item, and whether some items should be retried."""

    result: BatchResult
    retry_later: bool


async def ingest_batch(
    batcher: IngestBatcher,
    items: Sequence[ValidEvent | list[FieldError]],
    now: datetime,
    received: float,
) -> BatchIngest:
    """Queue every valid item of a batch at once, wait for all their writes, and say what became
    of each, in order. Raises `StoreUnavailable` when no item at all could be stored."""
    results: list[BatchItemResult | None] = [None] * len(items)
    waiting: list[tuple[int, str, asyncio.Future[WriteOutcome]]] = []
    unavailable = False
    for index, item in enumerate(items):
        if not isinstance(item, ValidEvent):
            results[index] = BatchItemResult(index, ItemOutcome.INVALID, errors=item)
            continue
        try:
            future = batcher.submit_nowait(event_document(item, now), received)
        except StoreUnavailable:
            unavailable = True
            results[index] = BatchItemResult(index, ItemOutcome.UNAVAILABLE, item.event_id)
            continue
        waiting.append((index, item.event_id, future))
    outcomes = await asyncio.gather(*(future for _, _, future in waiting), return_exceptions=True)
    for (index, event_id, _), outcome in zip(waiting, outcomes, strict=True):
        unavailable |= isinstance(outcome, StoreUnavailable)
        results[index] = BatchItemResult(index, _item_outcome(outcome), event_id)
    final = [result for result in results if result is not None]
    stored = [r for r in final if r.status in (ItemOutcome.ACCEPTED, ItemOutcome.DUPLICATE)]
    if unavailable and not stored:
        raise StoreUnavailable("no event of the batch could be stored; retry the batch", 1)
    return BatchIngest(
        BatchResult(
            accepted=sum(1 for r in final if r.status is ItemOutcome.ACCEPTED),
            duplicates=sum(1 for r in final if r.status is ItemOutcome.DUPLICATE),
            rejected=len(final) - len(stored),
            items=final,
        ),
        retry_later=unavailable,
    )


def _item_outcome(outcome: WriteOutcome | BaseException) -> ItemOutcome:
    if isinstance(outcome, BaseException):
        return ItemOutcome.UNAVAILABLE
    return _ITEM_OUTCOMES[outcome]


_ITEM_OUTCOMES = {
    WriteOutcome.ACCEPTED: ItemOutcome.ACCEPTED,
    WriteOutcome.DUPLICATE: ItemOutcome.DUPLICATE,
    WriteOutcome.CONFLICT: ItemOutcome.CONFLICT,
    WriteOutcome.FAILED: ItemOutcome.UNAVAILABLE,
}
