"""The dashboards: GET the match's metrics on the plan's read schedule, a bounded number at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from scripts.simulator.producer import SimulationConfig


@dataclass(slots=True)
class ReadStats:
    sent: int = 0
    spike: int = 0
    ok: int = 0
    not_found: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)


async def _read_once(
    client: httpx.AsyncClient, config: SimulationConfig, stats: ReadStats, spike: bool
) -> None:
    stats.sent += 1
    stats.spike += spike
    started = time.perf_counter()
    try:
        response = await client.get(
            f"/api/matches/{config.match_id}/metrics", headers={"X-API-Key": config.api_key}
        )
    except httpx.TransportError:
        stats.errors += 1
        return
    if response.status_code == 200:
        stats.ok += 1
        stats.latencies_ms.append((time.perf_counter() - started) * 1000)
    elif response.status_code == 404:  # nothing counted yet, right after kick-off
        stats.not_found += 1
    else:
        stats.errors += 1


async def wait_until(started: float, at_s: float, speed: float) -> None:
    if speed <= 0:
        await asyncio.sleep(0)
        return
    delay = started + at_s / speed - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def run_readers(
    client: httpx.AsyncClient,
    schedule: Sequence[tuple[float, bool]],
    config: SimulationConfig,
    stats: ReadStats,
    started: float,
) -> None:
    slots = asyncio.Semaphore(config.read_concurrency)
    tasks: set[asyncio.Task[None]] = set()

    async def read(spike: bool) -> None:
        try:
            await _read_once(client, config, stats, spike)
        finally:
            slots.release()

    try:
        for at_s, spike in schedule:
            await wait_until(started, at_s, config.speed)
            await slots.acquire()
            task = asyncio.create_task(read(spike))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
