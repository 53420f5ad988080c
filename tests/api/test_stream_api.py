"""Live metrics over Server-Sent Events, through a real server socket.

Each HTTP test runs on both delivery paths of the stream hub: `direct` (our uvicorn protocol
offers the connection and the hub writes chunks to it, as `fanfinity serve` does) and `queued`
(uvicorn's own protocol: no connection offered, Litestar's streaming response drains a queue).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from fanfinity.api.app import create_app
from fanfinity.api.protocol import GuardedHttpToolsProtocol
from fanfinity.config import Settings
from tests.api.test_ingest_api import assert_problem
from tests.conftest import PRODUCER_KEY, serving, with_settings

MATCH = "stream-derby-2025"


def event(event_type: str, minute: int) -> dict[str, Any]:
    return {
        "eventId": str(uuid.uuid4()),
        "matchId": MATCH,
        "eventType": event_type,
        "timestamp": f"2025-05-10T18:{minute:02d}:00Z",
        "teamId": "al-hilal",
    }


async def read_events(response: httpx.Response) -> AsyncIterator[tuple[str, str, str]]:
    """Yield (event, id, data) for each SSE event in the response body."""
    name, event_id, data = "message", "", ""
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield name, event_id, data
            name, event_id, data = "message", "", ""
        elif line.startswith("event: "):
            name = line[7:]
        elif line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            data = line[6:]


@pytest.fixture
def stream_settings(settings: Settings) -> Settings:
    return with_settings(settings, stream_interval_ms=100.0, metrics_cache_ms=50.0)


PATHS = {"direct": {"http": GuardedHttpToolsProtocol}, "queued": {}}


@pytest.fixture(params=sorted(PATHS))
def server_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """uvicorn options of one delivery path (see the module docstring)."""
    return PATHS[request.param]


@pytest.fixture
async def live_app(
    stream_settings: Settings, server_config: dict[str, Any]
) -> AsyncIterator[Litestar]:
    """The app behind a real uvicorn socket on this event loop (streams need a real server)."""
    app = create_app(stream_settings)
    async with serving(app, **server_config) as base_url:
        app.state.base_url = base_url
        yield app


@pytest.fixture
async def stream_client(live_app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=live_app.state.base_url, headers={"X-API-Key": PRODUCER_KEY}
    ) as client:
        yield client


async def wait_counted(client: httpx.AsyncClient, total: int) -> None:
    for _ in range(100):
        response = await client.get(f"/api/matches/{MATCH}/metrics")
        if response.status_code == 200 and response.json()["totalEvents"] == total:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never counted {total} events")


async def test_stream_sends_current_metrics_then_each_change_then_ends_after_full_time(
    stream_client: httpx.AsyncClient,
) -> None:
    client = stream_client
    await client.post("/api/events", json=event("match_start", 0))
    await wait_counted(client, 1)
    seen: list[tuple[str, str, dict[str, Any]]] = []

    async def post_goal_then_full_time() -> None:
        await asyncio.sleep(0.3)
        await client.post("/api/events", json=event("goal", 10))
        await asyncio.sleep(0.4)
        await client.post("/api/events", json=event("match_end", 59))

    poster = asyncio.create_task(post_goal_then_full_time())
    async with client.stream("GET", f"/api/matches/{MATCH}/metrics/stream") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async with asyncio.timeout(10):
            async for name, event_id, data in read_events(response):
                seen.append((name, event_id, json.loads(data)))
                if name == "end":
                    break
    await poster
    metrics = [(event_id, body) for name, event_id, body in seen if name == "metrics"]
    totals = [body["totalEvents"] for _, body in metrics]
    assert totals[0] == 1
    assert totals[-1] == 3
    assert 2 in totals  # the goal arrived as its own update before full time
    assert totals == sorted(totals)
    assert [int(event_id) for event_id, _ in metrics] == sorted({int(i) for i, _ in metrics})
    assert metrics[-1][1]["status"] == "ended"
    assert seen[-1][0] == "end"


async def test_stream_of_unknown_match_is_404_problem(
    stream_client: httpx.AsyncClient,
) -> None:
    response = await stream_client.get("/api/matches/nobody-here/metrics/stream")
    assert_problem(response, 404)


async def test_head_of_a_stream_answers_its_headers_at_once_without_a_body(
    stream_client: httpx.AsyncClient, live_app: Litestar
) -> None:
    await stream_client.post("/api/events", json=event("match_start", 0))
    await wait_counted(stream_client, 1)
    async with asyncio.timeout(5):
        response = await stream_client.head(f"/api/matches/{MATCH}/metrics/stream")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.content == b""
    for _ in range(100):
        if live_app.state.services.streams.subscribers == 0:
            break
        await asyncio.sleep(0.02)
    assert live_app.state.services.streams.subscribers == 0


async def test_many_subscribers_cost_one_store_read_per_interval(
    stream_client: httpx.AsyncClient, live_app: Litestar
) -> None:
    client = stream_client
    await client.post("/api/events", json=event("match_start", 0))
    await wait_counted(client, 1)
    services = live_app.state.services
    hub = services.streams
    streams = [(await hub.open(MATCH)).frames() for _ in range(200)]
    firsts = await asyncio.gather(*(anext(stream) for stream in streams))
    assert all(b"event: metrics" in first for first in firsts)
    reads_before = services.reader.store_reads
    await client.post("/api/events", json=event("goal", 5))
    updates = await asyncio.wait_for(
        asyncio.gather(*(anext(stream) for stream in streams)), timeout=5
    )
    assert all(b'"totalEvents":2' in update for update in updates)
    reads = services.reader.store_reads - reads_before
    assert reads <= 10, f"{reads} store reads for 200 subscribers"
    assert hub.subscribers == 200
    for stream in streams:
        await stream.aclose()
    assert hub.subscribers == 0


async def test_a_subscriber_that_does_not_read_is_dropped(
    stream_client: httpx.AsyncClient, live_app: Litestar
) -> None:
    client = stream_client
    await client.post("/api/events", json=event("match_start", 0))
    await wait_counted(client, 1)
    hub = live_app.state.services.streams
    slow = (await hub.open(MATCH)).frames()
    await anext(slow)
    for minute in range(1, 40):
        await client.post("/api/events", json=event("corner", minute))
        await asyncio.sleep(0.12)
        if hub.dropped:
            break
    assert hub.dropped == 1
    assert hub.subscribers == 0


async def test_in_process_aggregator_pushes_changes_before_the_poll_interval(
    settings: Settings,
) -> None:
    """The poll interval is a fallback: with the aggregator in the same process, a goal reaches
    the stream as soon as it is counted (here well before the 10 s interval)."""
    slow_poll = with_settings(settings, stream_interval_ms=10_000.0, metrics_cache_ms=5_000.0)
    app = create_app(slow_poll)
    async with (
        serving(app) as base_url,
        httpx.AsyncClient(base_url=base_url, headers={"X-API-Key": PRODUCER_KEY}) as client,
    ):
        await client.post("/api/events", json=event("match_start", 0))
        await wait_counted(client, 1)
        hub = app.state.services.streams
        stream = (await hub.open(MATCH)).frames()
        assert b'"totalEvents":1' in await anext(stream)
        posted = asyncio.get_running_loop().time()
        await client.post("/api/events", json=event("goal", 3))
        update = await asyncio.wait_for(anext(stream), timeout=3)
        assert b'"totalEvents":2' in update
        assert asyncio.get_running_loop().time() - posted < 2.0
        await stream.aclose()


async def test_a_subscriber_whose_frames_wait_past_the_bound_is_dropped_before_its_queue_fills(
    settings: Settings,
) -> None:
    app = create_app(with_settings(settings, stream_interval_ms=100.0, stream_slow_s=1.0))
    async with (
        serving(app) as base_url,
        httpx.AsyncClient(base_url=base_url, headers={"X-API-Key": PRODUCER_KEY}) as client,
    ):
        await client.post("/api/events", json=event("match_start", 0))
        await wait_counted(client, 1)
        hub = app.state.services.streams
        slow = (await hub.open(MATCH, "198.51.100.7")).frames()
        await anext(slow)
        for minute in range(1, 20):  # about 4 updates a second; the queue holds 8
            await client.post("/api/events", json=event("corner", minute))
            await asyncio.sleep(0.3)
            if hub.dropped:
                break
        assert hub.dropped == 1
        assert minute < 8, f"dropped only after {minute} unread updates"
        assert hub.subscribers == 0
        assert hub.per_client == {}


@pytest.mark.parametrize("trailing", ["", "/"], ids=["path", "trailing-slash"])
async def test_one_address_gets_429_past_its_share_of_streams_and_sessions_are_measured(
    settings: Settings, server_config: dict[str, Any], trailing: str
) -> None:
    """The route answers with or without a trailing slash, and either way it is served and
    measured as a stream."""
    app = create_app(with_settings(settings, stream_interval_ms=100.0, stream_max_per_client=2))
    async with (
        serving(app, **server_config) as base_url,
        httpx.AsyncClient(base_url=base_url, headers={"X-API-Key": PRODUCER_KEY}) as client,
    ):
        await client.post("/api/events", json=event("match_start", 0))
        await wait_counted(client, 1)
        measured_before = stream_seconds_measured((await client.get("/metrics")).text)
        path = f"/api/matches/{MATCH}/metrics/stream{trailing}"
        async with client.stream("GET", path) as first, client.stream("GET", path) as second:
            assert first.status_code == second.status_code == 200
            third = await client.get(path)
            assert_problem(third, 429)
            assert int(third.headers["retry-after"]) >= 1
            text = (await client.get("/metrics")).text
            assert "fanfinity_stream_sessions_active 2.0" in text
            await asyncio.sleep(0.5)
        await asyncio.sleep(0.2)
        text = (await client.get("/metrics")).text
    assert "fanfinity_stream_sessions_active 0.0" in text
    measured = stream_seconds_measured(text) - measured_before  # the registry is the process's
    assert 0 < measured < 0.5  # time to headers, not the sessions' half second each


def stream_seconds_measured(metrics_text: str) -> float:
    """The request seconds recorded so far for answered stream requests (the route's 200s)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith("fanfinity_request_duration_seconds_sum")
        and 'path="/api/matches/{match_id}/metrics/stream"' in line
        and 'status_code="200"' in line
    )


async def test_through_the_test_client_an_ended_match_streams_its_final_metrics_then_end(
    client: AsyncTestClient[Litestar],
) -> None:
    """Litestar's test client offers no connection: the hub's queued path serves the stream."""
    await client.post("/api/events", json=event("match_start", 0))
    await client.post("/api/events", json=event("match_end", 59))
    await wait_counted(client, 2)
    response = await client.get(f"/api/matches/{MATCH}/metrics/stream")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-request-id"]
    assert response.text.startswith("retry: 2000\n\nid: 1\nevent: metrics\n")
    seen = [(name, data) async for name, _, data in read_events(response)]
    assert [name for name, _ in seen] == ["metrics", "end"]
    assert json.loads(seen[0][1])["status"] == "ended"
    assert live_streams(client.app) == 0


def live_streams(app: Litestar) -> int:
    subscribers: int = app.state.services.streams.subscribers
    return subscribers
