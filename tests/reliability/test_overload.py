"""Overload: a burst far larger than the ingest queue is shed with 503 + Retry-After, not lost.

The service runs as a real process with a queue of 5 and a 50 ms linger, and 200 producers post
at the same moment over their own connections. What a producer may rely on: a 202 means stored
and (soon) counted; a 503 means not stored, retry with the same eventId; nothing else. The test
then checks the store and the metrics agree with what the clients were told, exactly.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests.reliability.service import (
    PRODUCER_KEY,
    event_body,
    new_match_id,
    problem_of,
    retry_after_s,
    running_service,
)

PRODUCERS = 200
QUEUE_MAX = 5
RETRY_CONCURRENCY = QUEUE_MAX - 1
RETRY_ROUNDS = 20
COUNT_DEADLINE_S = 15.0

OVERLOAD_SETTINGS = {
    "FANFINITY_INGEST_QUEUE_MAX": str(QUEUE_MAX),
    "FANFINITY_BATCH_LINGER_MS": "50",
    # Long enough that every 503 here is a refusal at the door, never a timed-out write.
    "FANFINITY_STORE_TIMEOUT_S": "20",
    # The warmed-up connections must outlive a slow warm-up of 200 connections (a loaded CI
    # machine took ~6 s once): idle keep-alive connections close after the head timeout.
    "FANFINITY_HEAD_TIMEOUT_S": "30",
}


async def post_event(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/api/events", json=body)


async def metrics_total(client: httpx.AsyncClient, match_id: str) -> int | None:
    response = await client.get(f"/api/matches/{match_id}/metrics")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    total: int = response.json()["totalEvents"]
    return total


async def wait_for_count(client: httpx.AsyncClient, match_id: str, expected: int) -> int | None:
    """Poll the metrics until they count `expected` events; return the last count seen."""
    deadline = time.monotonic() + COUNT_DEADLINE_S
    counted = await metrics_total(client, match_id)
    while counted != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        counted = await metrics_total(client, match_id)
    return counted


def assert_refusal(response: httpx.Response, event_id: str) -> None:
    """A 503 a producer can act on: Retry-After, and a problem naming the event to retry."""
    retry_after_s(response)
    problem = problem_of(response)
    assert problem["eventId"] == event_id, problem
    assert problem["type"] == "urn:fanfinity:problem:ingest-overloaded", problem


async def test_burst_beyond_the_queue_is_shed_with_503_and_every_202_is_counted_exactly(
    tmp_path: Path,
) -> None:
    match_id = new_match_id("overload")
    bodies = {body["eventId"]: body for body in (event_body(match_id, i) for i in range(PRODUCERS))}
    limits = httpx.Limits(max_connections=PRODUCERS, max_keepalive_connections=PRODUCERS)
    async with (
        running_service(tmp_path / "serve.log", **OVERLOAD_SETTINGS) as service,
        httpx.AsyncClient(
            base_url=service.base_url,
            headers={"X-API-Key": PRODUCER_KEY},
            limits=limits,
            timeout=30.0,
        ) as client,
    ):
        # Open every connection first, so that the posts below really arrive together.
        warm_up = await asyncio.gather(*(client.get("/health/live") for _ in range(PRODUCERS)))
        assert {response.status_code for response in warm_up} == {200}

        responses = await asyncio.gather(*(post_event(client, body) for body in bodies.values()))
        by_id = dict(zip(bodies, responses, strict=True))
        statuses = Counter(response.status_code for response in responses)
        assert set(statuses) <= {202, 503}, f"{statuses}; log:\n{service.log_tail()}"
        accepted = {event_id for event_id, r in by_id.items() if r.status_code == 202}
        refused = {event_id for event_id, r in by_id.items() if r.status_code == 503}
        assert accepted, f"no event was accepted: {statuses}"
        assert refused, f"a queue of {QUEUE_MAX} took {PRODUCERS} concurrent posts: {statuses}"
        for event_id in refused:
            assert_refusal(by_id[event_id], event_id)
        for event_id in accepted:
            assert by_id[event_id].json() == {"eventId": event_id, "status": "accepted"}

        # Every 202 is stored and readable; no 503'd event was stored behind the client's back.
        for event_id in accepted:
            stored = await client.get(f"/api/events/{event_id}")
            assert stored.status_code == 200, stored.text
            assert stored.json()["matchId"] == match_id
        for event_id in refused:
            missing = await client.get(f"/api/events/{event_id}")
            assert missing.status_code == 404, f"{event_id} was refused with 503 but is stored"

        counted = await wait_for_count(client, match_id, len(accepted))
        assert counted == len(accepted), f"{len(accepted)} acknowledged, {counted} counted"

        # The producers' retry: same eventId, same payload, honouring Retry-After.
        gate = asyncio.Semaphore(RETRY_CONCURRENCY)
        still_refused: set[str] = set()
        wait_s: list[int] = []

        async def retry(event_id: str) -> None:
            async with gate:
                response = await post_event(client, bodies[event_id])
            if response.status_code == 503:
                assert_refusal(response, event_id)
                still_refused.add(event_id)
                wait_s.append(retry_after_s(response))
            else:
                assert response.status_code == 202, response.text
                assert "idempotent-replayed" not in response.headers, event_id

        pending = set(refused)
        for _ in range(RETRY_ROUNDS):
            still_refused.clear()
            wait_s.clear()
            await asyncio.gather(*(retry(event_id) for event_id in pending))
            pending = set(still_refused)
            if not pending:
                break
            await asyncio.sleep(max(wait_s))  # as Retry-After tells a producer to
        assert not pending, f"{len(pending)} events still refused after {RETRY_ROUNDS} retries"

        counted = await wait_for_count(client, match_id, PRODUCERS)
        assert counted == PRODUCERS, f"{PRODUCERS} acknowledged after retries, {counted} counted"

        # A retry of an event that was already stored is acknowledged again, and not recounted.
        replay = await post_event(client, bodies[next(iter(accepted))])
        assert replay.status_code == 202
        assert replay.headers.get("idempotent-replayed") == "true"
        listing = await client.get("/api/matches", params={"limit": 100})
        totals = {item["matchId"]: item["totalEvents"] for item in listing.json()["items"]}
        assert totals[match_id] == PRODUCERS
        assert "Traceback" not in service.log()
