"""The whole service on MongoDB through HTTP: ingest, aggregation, metrics and readiness."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from fanfinity.api.app import create_app
from fanfinity.config import Settings
from tests.conftest import PRODUCER_KEY
from tests.integration.conftest import BASE_TIME, EVENT_TYPES, TEAMS, eventually, new_match_id

pytestmark = pytest.mark.integration

EVENTS_POSTED = 300


def event_body(match_id: str, index: int) -> dict[str, Any]:
    return {
        "eventId": str(uuid.uuid4()),
        "matchId": match_id,
        "eventType": EVENT_TYPES[index % len(EVENT_TYPES)],
        "timestamp": (BASE_TIME + timedelta(seconds=17 * index)).isoformat(),
        "teamId": TEAMS[index % len(TEAMS)],
        "playerId": f"player-{index % 11 + 1}",
        "metadata": {"sequence": index},
    }


async def test_events_posted_one_by_one_are_counted_and_served_as_metrics(
    settings: Settings,
) -> None:
    match_id = new_match_id("app")
    bodies = [event_body(match_id, index) for index in range(EVENTS_POSTED)]

    async with AsyncTestClient(app=create_app(settings)) as client:
        client.headers["X-API-Key"] = PRODUCER_KEY
        ready = await eventually(
            lambda: client.get("/health/ready"),
            lambda response: response.status_code == 200,
            what="/health/ready to answer 200",
        )
        assert ready.json()["checks"] == {"store": "ok", "accepting": "ok", "aggregator": "ok"}

        for body in bodies:
            response = await client.post("/api/events", json=body)
            assert response.status_code == 202, response.text
            assert response.json() == {"eventId": body["eventId"], "status": "accepted"}

        replay = await client.post("/api/events", json=bodies[0])  # a producer's retry
        assert replay.status_code == 202
        assert replay.headers["idempotent-replayed"] == "true"

        metrics = await eventually(
            lambda: client.get(f"/api/matches/{match_id}/metrics"),
            lambda response: (
                response.status_code == 200 and response.json()["totalEvents"] == EVENTS_POSTED
            ),
            what=f"the metrics of {match_id} to count {EVENTS_POSTED} events",
        )
        counted = metrics.json()
        assert counted["eventsByType"] == dict(Counter(body["eventType"] for body in bodies))
        assert counted["eventsByTeam"] == dict(Counter(body["teamId"] for body in bodies))
        assert counted["processingLagMs"]["samples"] == EVENTS_POSTED
        assert sum(minute["events"] for minute in counted["eventsPerMinute"]) == EVENTS_POSTED

        # Response times are $inc'ed into the summary about once a second, one sample per 202.
        latencies = await eventually(
            lambda: client.get(f"/api/matches/{match_id}/metrics"),
            lambda response: response.json()["responseTimeMs"]["samples"] >= EVENTS_POSTED,
            what="the ingest latency samples of every accepted event",
        )
        assert latencies.json()["totalEvents"] == EVENTS_POSTED  # the retry was not counted

        assert (await client.get("/health/ready")).status_code == 200
