"""A whole simulated match: the producer and the dashboards against one service, then the count."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from scripts.simulator.plan import PlannedEvent, live_clock, plan_reads, score_after
from scripts.simulator.producer import (
    EventStats,
    SimulationConfig,
    fetch_metrics,
    post_event,
    wait_for_count,
)
from scripts.simulator.readers import ReadStats, run_readers, wait_until
from scripts.simulator.report import Progress, render_progress


@dataclass(slots=True)
class SimulationResult:
    match_id: str
    home_name: str
    away_name: str
    score: tuple[int, int]
    full_time: str
    planned: int
    events: EventStats
    reads: ReadStats
    already_counted: int  # events the match had before this run (a reused --match-id)
    metrics: dict[str, Any] | None
    elapsed_s: float
    speed: float
    spike_factor: float

    @property
    def expected_total(self) -> int:
        return self.already_counted + self.events.accepted

    @property
    def counted(self) -> int | None:
        return None if self.metrics is None else int(self.metrics["totalEvents"])

    @property
    def ok(self) -> bool:
        return not self.events.failures and self.counted == self.expected_total


@dataclass(slots=True)
class _MatchState:
    clock: str = "0'"
    score: tuple[int, int] = (0, 0)
    done: int = 0


async def run_simulation(
    client: httpx.AsyncClient,
    plan: Sequence[PlannedEvent],
    config: SimulationConfig,
    progress: Progress | None = None,
) -> SimulationResult:
    """Play `plan` against the service behind `client` (any httpx.AsyncClient with a base URL)."""
    progress = progress or Progress(None)
    before = await fetch_metrics(client, config)
    already_counted = 0 if before is None else int(before["totalEvents"])
    events, reads = EventStats(), ReadStats()
    started = time.monotonic()
    state = _MatchState()

    def line() -> str:
        clock = state.clock
        if config.speed > 0:  # the live match clock, quiet spells and half-time included
            clock = live_clock(plan, (time.monotonic() - started) * config.speed)
        return render_progress(
            state.done, len(plan), clock, state.score, events.retries, reads.sent
        )

    async def tick() -> None:
        while True:
            progress.show(line())
            await asyncio.sleep(0.2)

    schedule = plan_reads(plan, config.readers, config.spike_factor)
    readers = asyncio.create_task(run_readers(client, schedule, config, reads, started))
    ticker = asyncio.create_task(tick())
    try:
        for index, event in enumerate(plan):
            await wait_until(started, event.at_s, config.speed)
            await post_event(client, event, config, events)
            state.clock, state.done = event.clock, index + 1
            state.score = score_after(plan[: index + 1])
            progress.show(line())
        await readers
    finally:
        for task in (readers, ticker):
            task.cancel()
        await asyncio.gather(readers, ticker, return_exceptions=True)
    progress.finish(line())
    elapsed = time.monotonic() - started
    metrics = await wait_for_count(client, config, already_counted + events.accepted)
    start, end = plan[0].metadata, plan[-1]
    return SimulationResult(
        match_id=config.match_id,
        home_name=str(start["homeTeamName"]),
        away_name=str(start["awayTeamName"]),
        score=score_after(plan),
        full_time=end.clock,
        planned=len(plan),
        events=events,
        reads=reads,
        already_counted=already_counted,
        metrics=metrics,
        elapsed_s=elapsed,
        speed=config.speed,
        spike_factor=config.spike_factor,
    )
