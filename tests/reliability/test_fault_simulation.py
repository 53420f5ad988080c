"""A fault simulation of our own failure handling, on the embedded engine.

No MongoDB server can run here, but the aggregator loop, its retries and backoff, the checkpoint
compare-and-set, the fenced rebuild and the ingest batcher are our code, and the embedded engine
runs the same code over the same seams. Hypothesis generates schedules of ingest (producers that
retry each event until it is acknowledged, as the API asks them to), faults injected at the seams
(tests/faults.py: before and after the events insert, between the checkpoint advance and the
summary update, after a commit, in the middle of a rebuild, `HistoryLost` at any position, the
store down for N calls) and aggregator restarts (a new `Aggregator` over the same store, after a
graceful stop or a crash). After each schedule, once the faults stop:

- every acknowledged event is stored once, and every sent event was acknowledged;
- every stored event is counted exactly once: each event has a minute of its own, so a summary's
  per-minute series shows a lost event (0) and a double count (2) individually, not only as a
  total that could balance out;
- the aggregator is running, ready, and did not end unexpectedly.

CI (`CI=true`) loads the derandomized hypothesis profile (tests/conftest.py): the same 200
schedules every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loguru import logger

from fanfinity.config import Settings
from fanfinity.errors import StoreUnavailable
from fanfinity.pipeline import aggregator as aggregator_module
from fanfinity.pipeline.aggregator import Aggregator, Backoff
from fanfinity.pipeline.fold import minute_key
from fanfinity.pipeline.ingest import IngestBatcher, IngestLatencyRecorder, WriteOutcome
from fanfinity.storage.engine import Engine, open_engine
from tests.faults import POINTS, Faults, history_lost, with_faults

KICK_OFF = datetime(2025, 5, 10, 19, 0, tzinfo=UTC)
MATCHES = ("alhilal-vs-alnassr", "ittihad-vs-ahli", "shabab-vs-taawoun")
SETTLE_DEADLINE_S = 10.0
PRODUCER_ATTEMPTS = 2_000

ingest = st.tuples(st.just("ingest"), st.integers(min_value=1, max_value=6))
fault = st.tuples(st.just("fault"), st.sampled_from(POINTS), st.integers(min_value=1, max_value=3))
lost = st.tuples(st.just("history_lost"))
restart = st.tuples(st.just("restart"), st.sampled_from(("stop", "crash")))
pause = st.tuples(st.just("wait"), st.integers(min_value=0, max_value=3))
schedules = st.lists(st.one_of(ingest, fault, lost, restart, pause), min_size=1, max_size=10)


@contextlib.contextmanager
def fast_aggregator_timing() -> Iterator[None]:
    """The loop's pacing constants shrunk so that a schedule takes tens of milliseconds."""
    with (
        mock.patch.object(aggregator_module, "FEED_WAIT_S", 0.005),
        mock.patch.object(aggregator_module, "MIN_BATCH_INTERVAL_S", 0.0),
    ):
        yield


class Simulation:
    def __init__(self, engine: Engine, faults: Faults) -> None:
        self.store = engine
        self.faulty = with_faults(engine, faults)
        self.faults = faults
        self.batcher = IngestBatcher(
            self.faulty.events,
            IngestLatencyRecorder(self.faulty.summaries),
            max_batch=8,
            linger_s=0.0,
            queue_max=10_000,
            store_timeout_s=1.0,
        )
        self.sent: dict[str, dict[str, Any]] = {}
        self.acknowledged: set[str] = set()
        self.producers: list[asyncio.Task[None]] = []
        self.aggregator, self.task = self._start_aggregator()

    def _start_aggregator(self) -> tuple[Aggregator, asyncio.Task[None]]:
        aggregator = Aggregator(
            self.faulty,
            batch_size=4,
            stall_after_s=30.0,
            active_window=timedelta(minutes=10),
            backoff=Backoff(first_s=0.001, max_s=0.01, current_s=0.001),
            rebuild_lease_s=0.0,
        )
        return aggregator, asyncio.create_task(aggregator.run())

    async def step(self, step: tuple[Any, ...]) -> None:
        kind = step[0]
        if kind == "ingest":
            for _ in range(step[1]):
                self._produce()
        elif kind == "fault":
            self.faults.arm(step[1], times=step[2])
        elif kind == "history_lost":
            self.faults.arm("feed.next", error=history_lost())
        elif kind == "restart":
            await self._restart(crash=step[1] == "crash")
        await asyncio.sleep(0.002 * (step[1] if kind == "wait" else 1))

    def _produce(self) -> None:
        number = len(self.sent)
        event_id = f"sim-{number:05d}"
        document = {
            "_id": event_id,
            "matchId": MATCHES[number % len(MATCHES)],
            "eventType": "goal",
            "timestamp": KICK_OFF + timedelta(minutes=number),  # a minute of its own
            "teamId": "al-hilal",
            "receivedAt": KICK_OFF,
            "fingerprint": f"fp-{event_id}",
        }
        self.sent[event_id] = document
        self.producers.append(asyncio.create_task(self._deliver(document)))

    async def _deliver(self, document: dict[str, Any]) -> None:
        """A producer: the same eventId again after every 503, until it is acknowledged."""
        for _ in range(PRODUCER_ATTEMPTS):
            try:
                outcome = await self.batcher.submit(dict(document), time.perf_counter())
            except StoreUnavailable:
                await asyncio.sleep(0.001)
                continue
            assert outcome in (WriteOutcome.ACCEPTED, WriteOutcome.DUPLICATE), outcome
            self.acknowledged.add(document["_id"])
            return

    async def _restart(self, crash: bool) -> None:
        if crash:
            self.task.cancel()
        else:
            self.aggregator.stop()
        await asyncio.gather(self.task, return_exceptions=True)
        self.aggregator, self.task = self._start_aggregator()

    async def settle(self) -> None:
        """Faults stop; producers finish; the aggregator catches up (or the deadline fails)."""
        self.faults.clear()
        await asyncio.wait_for(asyncio.gather(*self.producers), timeout=SETTLE_DEADLINE_S)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_DEADLINE_S
        while await self.counted() != self.expected():
            assert loop.time() < deadline, (await self.counted(), self.expected())
            await asyncio.sleep(0.005)

    def expected(self) -> dict[str, dict[str, int]]:
        series: dict[str, dict[str, int]] = {}
        for document in self.sent.values():
            minutes = series.setdefault(document["matchId"], {})
            minutes[minute_key(document["timestamp"])] = 1
        return series

    async def counted(self) -> dict[str, dict[str, int]]:
        series: dict[str, dict[str, int]] = {}
        for match_id in MATCHES:
            summary = await self.store.summaries.get(match_id)
            if summary is not None and summary.get("perMinute"):
                series[match_id] = {k: v for k, v in summary["perMinute"].items() if v}
        return series

    async def close(self) -> None:
        self.aggregator.stop()
        await asyncio.wait_for(asyncio.gather(self.task, return_exceptions=True), timeout=5.0)
        await self.batcher.close(timeout_s=1.0)


async def run_schedule(schedule: list[tuple[Any, ...]]) -> None:
    engine = await open_engine(Settings(store_timeout_s=1.0, log_level="ERROR"))
    simulation = Simulation(engine, Faults())
    simulation.batcher.start()
    try:
        for step in schedule:
            await simulation.step(step)
        await simulation.settle()

        stored = {doc["_id"] async for doc in engine.database["events"].find({})}
        assert simulation.acknowledged == set(simulation.sent)
        assert stored == simulation.acknowledged
        assert await engine.events.count() == len(stored)  # stored once: `_id` is the eventId
        for match_id, minutes in (await simulation.counted()).items():
            summary = await engine.summaries.get(match_id)
            assert summary is not None
            assert set(minutes.values()) == {1}  # no minute counted twice
            assert summary["total"] == len(minutes)
        assert not simulation.task.done()
        assert simulation.aggregator.running
        assert simulation.aggregator.healthy()
        assert not simulation.aggregator.ended_unexpectedly
        assert await engine.dead_letters.count() == 0
    finally:
        await simulation.close()
        engine.close()


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(schedule=schedules)
def test_acknowledged_events_are_stored_once_and_counted_once_whatever_fails(
    schedule: list[tuple[Any, ...]],
) -> None:
    logger.disable("fanfinity")
    try:
        with fast_aggregator_timing():
            asyncio.run(run_schedule(schedule))
    finally:
        logger.enable("fanfinity")


def test_a_schedule_with_every_fault_at_once_settles() -> None:
    """One fixed worst case, so a failure here names no hypothesis example to decode."""
    schedule: list[tuple[Any, ...]] = [("ingest", 5)]
    schedule += [("fault", point, 2) for point in POINTS]
    schedule += [("history_lost",), ("ingest", 6), ("restart", "crash"), ("ingest", 3)]
    schedule += [("restart", "stop"), ("wait", 3)]
    with fast_aggregator_timing():
        asyncio.run(run_schedule(schedule))
