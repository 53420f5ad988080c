"""The read path: posted events become exact per-match metrics within a second."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from litestar import Litestar
from litestar.testing import AsyncTestClient

from fanfinity.api.app import create_app
from fanfinity.config import Settings
from tests.api.test_ingest_api import assert_problem
from tests.conftest import PRODUCER_KEY, with_settings

DERBY = "derby-2025-05-10"
FRIENDLY = "friendly-2025-05-11"


def event(match_id: str, event_type: str, team: str, at: str, **extra: Any) -> dict[str, Any]:
    return {
        "eventId": str(uuid.uuid4()),
        "matchId": match_id,
        "eventType": event_type,
        "timestamp": at,
        "teamId": team,
        **extra,
    }


DERBY_EVENTS = [
    event(DERBY, "match_start", "al-hilal", "2025-05-10T18:00:05Z"),
    event(DERBY, "goal", "al-hilal", "2025-05-10T18:10:01Z"),
    event(DERBY, "goal", "al-nassr", "2025-05-10T18:10:30Z"),
    event(DERBY, "yellow_card", "al-nassr", "2025-05-10T18:10:59Z"),
    event(DERBY, "corner", "al-hilal", "2025-05-10T18:20:00Z"),
    event(DERBY, "goal", "al-hilal", "2025-05-10T21:20:30+03:00"),  # 18:20 UTC
    event(DERBY, "foul", "al-nassr", "2025-05-10T18:45:00Z"),
    event(DERBY, "match_end", "al-hilal", "2025-05-10T19:50:00Z"),
]
FRIENDLY_EVENTS = [
    event(FRIENDLY, "corner", "team-a", f"2025-05-11T12:0{minute}:00Z") for minute in range(4)
]


async def wait_for_metrics(
    client: AsyncTestClient[Litestar], match_id: str, total: int, samples: int
) -> dict[str, Any]:
    """Poll like a dashboard until the match shows `total` events and `samples` latencies."""
    deadline = time.monotonic() + 3.0
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = await client.get(f"/api/matches/{match_id}/metrics")
        if response.status_code == 200:
            body = response.json()
            if body["totalEvents"] == total and body["responseTimeMs"]["samples"] == samples:
                return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"metrics of {match_id} never reached {total} events: {body}")


async def post_all(client: AsyncTestClient[Litestar], events: list[dict[str, Any]]) -> None:
    for item in events:
        response = await client.post("/api/events", json=item)
        assert response.status_code == 202, response.text


async def test_known_distribution_gives_exact_metrics(client: AsyncTestClient[Litestar]) -> None:
    await post_all(client, DERBY_EVENTS + FRIENDLY_EVENTS)
    await post_all(client, DERBY_EVENTS[1:3])  # producer retries: must not count twice
    started = time.monotonic()
    first_count = await client.get(f"/api/matches/{DERBY}/metrics")
    while first_count.status_code != 200 or first_count.json()["totalEvents"] < 8:
        await asyncio.sleep(0.02)
        first_count = await client.get(f"/api/matches/{DERBY}/metrics")
    assert time.monotonic() - started < 1.0, "events must be counted within a second"

    derby = await wait_for_metrics(client, DERBY, total=8, samples=10)
    assert derby["status"] == "ended"
    assert derby["eventsByType"] == {
        "match_start": 1,
        "goal": 3,
        "yellow_card": 1,
        "corner": 1,
        "foul": 1,
        "match_end": 1,
    }
    assert derby["eventsByTeam"] == {"al-hilal": 5, "al-nassr": 3}
    assert derby["firstEventAt"] == "2025-05-10T18:00:05Z"
    assert derby["lastEventAt"] == "2025-05-10T19:50:00Z"
    assert derby["kickoffAt"] == "2025-05-10T18:00:05Z"
    assert derby["score"] == {"al-hilal": 2, "al-nassr": 1}
    assert derby["eventsPerMinute"] == [
        {"minute": "2025-05-10T18:00:00Z", "matchMinute": 1, "events": 1},
        {"minute": "2025-05-10T18:10:00Z", "matchMinute": 11, "events": 3},
        {"minute": "2025-05-10T18:20:00Z", "matchMinute": 21, "events": 2},
        {"minute": "2025-05-10T18:45:00Z", "matchMinute": 46, "events": 1},
        {"minute": "2025-05-10T19:50:00Z", "matchMinute": 111, "events": 1},
    ]
    assert [(p["minute"][11:16], p["matchMinute"]) for p in derby["peakEngagementPeriods"]] == [
        ("18:10", 11),
        ("18:20", 21),
        ("18:00", 1),
        ("18:45", 46),
        ("19:50", 111),
    ]
    assert derby["busiestWindow"] == {
        "start": "2025-05-10T18:10:00Z",
        "end": "2025-05-10T18:15:00Z",
        "matchMinute": 11,
        "lastMatchMinute": 15,
        "events": 3,
    }
    assert derby["overflow"] == {"teams": 0, "minutes": 0}
    response_time = derby["responseTimeMs"]
    assert 0 < response_time["p50"] <= response_time["p95"] <= response_time["p99"]
    assert derby["processingLagMs"]["samples"] == 8

    friendly = await wait_for_metrics(client, FRIENDLY, total=4, samples=4)
    assert friendly["status"] == "scheduled"
    assert friendly["eventsByType"] == {"corner": 4}
    assert [p["minute"] for p in friendly["peakEngagementPeriods"]] == [
        "2025-05-11T12:00:00Z",
        "2025-05-11T12:01:00Z",
        "2025-05-11T12:02:00Z",
        "2025-05-11T12:03:00Z",
    ]
    assert friendly["busiestWindow"]["events"] == 4


async def test_match_without_events_is_404(client: AsyncTestClient[Litestar]) -> None:
    body = assert_problem(await client.get("/api/matches/no-such-match/metrics"), 404)
    assert "no-such-match" in body["detail"]
    assert_problem(await client.get("/api/matches/bad%20id/metrics"), 404)


async def test_matches_are_listed_filtered_and_paginated(
    client: AsyncTestClient[Litestar],
) -> None:
    await post_all(client, DERBY_EVENTS + FRIENDLY_EVENTS)
    await wait_for_metrics(client, DERBY, total=8, samples=8)
    await wait_for_metrics(client, FRIENDLY, total=4, samples=4)

    everything = (await client.get("/api/matches")).json()
    assert everything["total"] == 2
    assert {item["matchId"] for item in everything["items"]} == {DERBY, FRIENDLY}
    ended = (await client.get("/api/matches", params={"status": "ended"})).json()
    assert [item["matchId"] for item in ended["items"]] == [DERBY]
    assert ended["items"][0]["teams"] == ["al-hilal", "al-nassr"]
    assert ended["items"][0]["totalEvents"] == 8
    page = (await client.get("/api/matches", params={"limit": 1, "offset": 1})).json()
    assert len(page["items"]) == 1
    assert page["total"] == 2
    assert_problem(await client.get("/api/matches", params={"status": "postponed"}), 400)
    assert_problem(await client.get("/api/matches", params={"limit": 1000}), 400)


async def test_prometheus_shows_business_metrics_moving(
    client: AsyncTestClient[Litestar],
) -> None:
    await post_all(client, FRIENDLY_EVENTS)
    await post_all(client, FRIENDLY_EVENTS[:1])
    await wait_for_metrics(client, FRIENDLY, total=4, samples=5)
    text = (await client.get("/metrics")).text
    assert 'fanfinity_events_ingested_total{event_type="corner"}' in text
    assert "fanfinity_events_duplicate_total" in text
    assert "fanfinity_events_processed_total" in text
    assert "fanfinity_ingest_batch_size_bucket" in text
    assert "fanfinity_aggregator_batch_size_bucket" in text
    assert 'path="/api/events"' in text
    assert 'path="/api/matches/{match_id}/metrics"' in text
    assert FRIENDLY not in text  # no match ids as labels


async def test_health_and_openapi(client: AsyncTestClient[Litestar]) -> None:
    assert (await client.get("/health/live")).json()["status"] == "ok"
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"store": "ok", "accepting": "ok", "aggregator": "ok"}

    schema = (await client.get("/schema/openapi.json")).json()
    assert schema["openapi"].startswith("3.1")
    ingest = schema["paths"]["/api/events"]["post"]
    body_schema = ingest["requestBody"]["content"]["application/json"]
    assert "goal" in body_schema["schema"]["properties"]["eventType"]["enum"]
    assert body_schema["example"]["eventType"] == "goal"
    assert {"202", "400", "401", "409", "413", "415", "422", "503"} <= set(ingest["responses"])
    metrics = schema["paths"]["/api/matches/{match_id}/metrics"]["get"]
    assert {"200", "404"} <= set(metrics["responses"])
    assert (await client.get("/schema/swagger")).status_code == 200


async def test_metrics_carry_an_etag_and_answer_304_while_it_is_current(
    client: AsyncTestClient[Litestar],
) -> None:
    await post_all(client, FRIENDLY_EVENTS)
    await wait_for_metrics(client, FRIENDLY, total=4, samples=4)
    path = f"/api/matches/{FRIENDLY}/metrics"
    first = await client.get(path)
    etag = first.headers["etag"]
    assert etag.startswith('W/"')
    assert first.headers["cache-control"] == "public, max-age=1, stale-while-revalidate=5"

    again = await client.get(path)  # recomputed (no cache in tests): same summary, same tag
    assert again.headers["etag"] == etag

    not_modified = await client.get(path, headers={"If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert not_modified.headers["etag"] == etag
    assert "max-age=1" in not_modified.headers["cache-control"]
    listed = await client.get(path, headers={"If-None-Match": f'W/"other", {etag}'})
    assert listed.status_code == 304
    assert (await client.get(path, headers={"If-None-Match": 'W/"stale"'})).status_code == 200

    await post_all(client, [event(FRIENDLY, "goal", "team-a", "2025-05-11T12:05:00Z")])
    await wait_for_metrics(client, FRIENDLY, total=5, samples=5)
    changed = await client.get(path, headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    assert changed.json()["score"] == {"team-a": 1}


async def test_metrics_behind_read_keys_are_not_shared_by_caches(settings: Settings) -> None:
    app = create_app(with_settings(settings, read_api_keys=frozenset({"reader-key-000001"})))
    async with AsyncTestClient(app=app) as keyed:
        keyed.headers["X-API-Key"] = "reader-key-000001"
        producer = {"X-API-Key": PRODUCER_KEY}
        for item in FRIENDLY_EVENTS:
            assert (await keyed.post("/api/events", json=item, headers=producer)).status_code == 202
        await wait_for_metrics(keyed, FRIENDLY, total=4, samples=4)
        response = await keyed.get(f"/api/matches/{FRIENDLY}/metrics")
        assert response.headers["cache-control"] == "private, max-age=1"


async def test_cross_origin_reads_carry_one_allow_origin_header_each_time(
    settings: Settings,
) -> None:
    origin = "https://fans.example"
    app = create_app(with_settings(settings, cors_origins=(origin,)))
    async with AsyncTestClient(app=app) as browser:
        producer = {"X-API-Key": PRODUCER_KEY}
        for item in FRIENDLY_EVENTS:
            assert (
                await browser.post("/api/events", json=item, headers=producer)
            ).status_code == 202
        await wait_for_metrics(browser, FRIENDLY, total=4, samples=4)
        for _ in range(3):  # the cached body's header fields are not added to request after request
            response = await browser.get(
                f"/api/matches/{FRIENDLY}/metrics", headers={"Origin": origin}
            )
            assert response.status_code == 200
            assert response.headers.get_list("access-control-allow-origin") == [origin]
            assert len(response.headers.get_list("etag")) == 1
            assert len(response.headers.get_list("x-request-id")) == 1


async def test_openapi_documents_the_conditional_read_and_the_stream_events(
    client: AsyncTestClient[Litestar],
) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    read = schema["paths"]["/api/matches/{match_id}/metrics"]["get"]
    assert "304" in read["responses"]
    assert {"ETag", "Cache-Control"} <= set(read["responses"]["200"]["headers"])
    assert any(p["name"] == "If-None-Match" for p in read["parameters"])
    metrics_schema = schema["components"]["schemas"]["MatchMetrics"]["properties"]
    assert "own_goal" in metrics_schema["score"]["description"]
    assert {"kickoffAt", "score", "overflow"} <= set(metrics_schema)

    stream = schema["paths"]["/api/matches/{match_id}/metrics/stream"]["get"]
    event_schema = stream["responses"]["200"]["content"]["text/event-stream"]["schema"]
    metrics_event = event_schema["oneOf"][0]["properties"]
    assert metrics_event["event"] == {"const": "metrics"}
    assert metrics_event["data"]["contentMediaType"] == "application/json"
    assert metrics_event["data"]["contentSchema"] == {"$ref": "#/components/schemas/MatchMetrics"}
