"""Liveness through HTTP: an aggregator task that ended without being stopped fails it."""

from __future__ import annotations

import asyncio

from litestar import Litestar
from litestar.testing import AsyncTestClient


def _end_the_aggregator_task() -> None:
    """What an escaped error or a stray cancel does: the task ends with no `stop()` called."""
    for task in asyncio.all_tasks():
        if task.get_name() == "aggregator":
            task.cancel()


async def test_live_is_ok_while_the_aggregator_runs(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/health/live")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {}}


async def test_live_fails_once_the_aggregator_task_ended_unexpectedly(
    client: AsyncTestClient[Litestar],
) -> None:
    """Before, /health/live stayed green while /health/ready said "stopped", so no orchestrator
    ever restarted a process whose counting had died."""
    await asyncio.to_thread(client.blocking_portal.call, _end_the_aggregator_task)
    for _ in range(100):
        response = await client.get("/health/live")
        if response.status_code != 200:
            break
        await asyncio.sleep(0.01)

    assert response.status_code == 503
    assert response.json()["checks"] == {"aggregator": "ended unexpectedly"}
    ready = await client.get("/health/ready")
    assert ready.json()["checks"]["aggregator"] == "stopped"
