"""The producer: posts each planned event until the service has stored it, and reads the count.

Every event carries a client-made UUID eventId and is retried with the same eventId and the same
bytes after 429/503 (honouring Retry-After), other 5xx, timeouts and connection errors, so a retry
can never be counted twice; a 409 is reported as a bug.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from scripts.helpers import retry_after_s
from scripts.simulator.plan import PlannedEvent

LATENCY_SETTLE_S = 1.5


class FatalError(Exception):
    """The run cannot go on: the service is unreachable or refuses the API key."""


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    match_id: str
    api_key: str
    speed: float = 60.0
    readers: int = 10
    spike_factor: float = 10.0
    max_attempts: int = 8
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    max_retry_after_s: float = 30.0
    verify_wait_s: float = 5.0
    read_concurrency: int = 32


@dataclass(slots=True)
class EventStats:
    sent: int = 0  # events posted at least once
    accepted: int = 0  # events the service confirmed stored (202), replays included
    duplicates: int = 0  # of those, 202 with Idempotent-Replayed: true
    retries: int = 0  # extra POST attempts
    failures: list[str] = field(default_factory=list)


def _backoff_s(config: SimulationConfig, attempt: int) -> float:
    ceiling = min(config.max_backoff_s, config.backoff_s * 2.0 ** (attempt - 1))
    return ceiling * random.uniform(0.5, 1.0)


def _problem_detail(response: httpx.Response) -> str:
    try:
        problem = response.json()
    except ValueError:
        return response.text[:200]
    if not isinstance(problem, dict):
        return str(problem)[:200]
    detail = str(problem.get("detail") or problem.get("title") or "")
    errors = problem.get("errors")
    if errors:
        detail += " " + "; ".join(f"{e.get('field')}: {e.get('message')}" for e in errors)
    return detail


async def post_event(
    client: httpx.AsyncClient,
    event: PlannedEvent,
    config: SimulationConfig,
    stats: EventStats,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> bool:
    """Post one event until it is stored; every attempt sends the same eventId and bytes."""
    event_id = str(uuid.uuid4())
    body = json.dumps(event.body(config.match_id, event_id, datetime.now(UTC))).encode()
    headers = {"X-API-Key": config.api_key, "Content-Type": "application/json"}
    stats.sent += 1
    attempt, reason = 0, ""
    while attempt < config.max_attempts:
        attempt += 1
        if attempt > 1:
            stats.retries += 1
        try:
            response = await client.post("/api/events", content=body, headers=headers)
        except httpx.TransportError as exc:  # a timeout or a lost connection: maybe stored
            reason = f"{type(exc).__name__}: {exc}"
            wait = _backoff_s(config, attempt)
        else:
            status = response.status_code
            if status == 202:
                stats.accepted += 1
                if response.headers.get("Idempotent-Replayed", "").lower() == "true":
                    stats.duplicates += 1
                return True
            reason = f"{status} {_problem_detail(response)}"
            if status in (401, 403):
                raise FatalError(f"the service refused the API key: {reason}")
            if status == 409:
                stats.failures.append(
                    f"BUG: 409 for eventId {event_id} ({event.event_type} {event.clock}), which "
                    f"this run only ever sent with one payload: {reason}"
                )
                return False
            if status not in (429, 503) and status < 500:
                break  # the service will never take this body: retrying cannot help
            after = retry_after_s(response.headers.get("Retry-After"))
            wait = _backoff_s(config, attempt) if after is None else after
        if attempt < config.max_attempts:
            await sleep(min(wait, config.max_retry_after_s))
    stats.failures.append(
        f"{event.event_type} {event.clock} eventId {event_id}: not stored after "
        f"{attempt} attempt(s): {reason}"
    )
    return False


async def fetch_metrics(
    client: httpx.AsyncClient, config: SimulationConfig
) -> dict[str, Any] | None:
    """The match's metrics, or None when nothing is counted for it yet (404)."""
    try:
        response = await client.get(
            f"/api/matches/{config.match_id}/metrics", headers={"X-API-Key": config.api_key}
        )
    except httpx.TransportError as exc:
        raise FatalError(f"cannot reach the service: {type(exc).__name__}: {exc}") from None
    if response.status_code == 404:
        return None
    if response.status_code in (401, 403):
        raise FatalError(f"the service refused the API key: {_problem_detail(response)}")
    if response.status_code != 200:
        raise FatalError(f"GET metrics answered {response.status_code}: {response.text[:200]}")
    metrics: dict[str, Any] = response.json()
    return metrics


async def wait_for_count(
    client: httpx.AsyncClient, config: SimulationConfig, expected: int
) -> dict[str, Any] | None:
    """Poll the metrics until they count `expected` events or `verify_wait_s` has passed.

    Once the count is right, wait a little longer (at most `LATENCY_SETTLE_S`) for the ingest
    latencies, which the service adds to the summary about once a second.
    """
    deadline = time.monotonic() + config.verify_wait_s
    counted_at: float | None = None
    while True:
        metrics = await fetch_metrics(client, config)
        now = time.monotonic()
        if metrics is not None and metrics["totalEvents"] == expected:
            counted_at = counted_at or now
            samples = metrics.get("responseTimeMs", {}).get("samples", expected)
            if samples >= expected or now - counted_at >= LATENCY_SETTLE_S:
                return metrics
        if now >= deadline:
            return metrics
        await asyncio.sleep(0.1)
