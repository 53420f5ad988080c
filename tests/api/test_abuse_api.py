"""What an abusive client without a key meets at the HTTP layer: every answer carries the
security headers and a request id, no-route answers are counted under a fixed label, 401 storms
and list sweeps are throttled per address, unknown ids cost one read per interval, and logs stay
one escaped line per request, sampled."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from loguru import logger

from fanfinity.api.app import create_app
from fanfinity.api.logsampling import LINES_PER_WINDOW
from fanfinity.api.middleware import printable_path
from fanfinity.api.protocol import ConnectionLimits, GuardedHttpToolsProtocol
from fanfinity.config import Settings
from tests.api.test_ingest_api import assert_problem
from tests.conftest import PRODUCER_KEY, serving, with_settings

METRICS_KEY = "metrics-scrape-key-0001"


def counter(text: str, name: str, **labels: str) -> float:
    """A labelled sample's value in Prometheus text (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and all(part in line for part in wanted.split(",")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def assert_security_headers(response: Any) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])


@pytest.fixture
def request_lines() -> Iterator[list[str]]:
    """Every request log line (as text) written while the test runs."""
    lines: list[str] = []
    sink = logger.add(
        lambda message: lines.append(str(message.record["message"])),
        level="DEBUG",
        filter=lambda record: "route" in record["extra"],
    )
    yield lines
    logger.remove(sink)


@pytest.fixture
async def app_with(settings: Settings) -> AsyncIterator[Any]:
    """`await app_with(**settings)`: a client of an app built with those settings."""
    clients: list[AsyncTestClient[Litestar]] = []

    async def make(**changes: Any) -> AsyncTestClient[Litestar]:
        client = AsyncTestClient(app=create_app(with_settings(settings, **changes)))
        await client.__aenter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.__aexit__(None, None, None)


async def test_no_route_404_and_405_carry_headers_and_are_counted_under_a_fixed_label(
    client: AsyncTestClient[Litestar],
) -> None:
    before = (await client.get("/metrics")).text
    missing = await client.get("/no/such/route-7f3a")
    wrong_method = await client.delete("/health/live")
    assert_problem(missing, 404)
    assert_problem(wrong_method, 405)
    assert_security_headers(missing)
    assert_security_headers(wrong_method)
    after = (await client.get("/metrics")).text
    assert "route-7f3a" not in after
    labels = {"method": "GET", "path": "unmatched", "status_code": "404"}
    assert counter(after, "fanfinity_requests_total", **labels) == (
        counter(before, "fanfinity_requests_total", **labels) + 1
    )
    assert counter(after, "fanfinity_requests_total", method="DELETE", status_code="405") >= 1


async def test_head_is_answered_wherever_get_is(client: AsyncTestClient[Litestar]) -> None:
    get = await client.get("/health/live")
    head = await client.head("/health/live")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == get.headers["content-length"]
    assert_security_headers(head)
    assert (await client.head("/api/matches")).status_code == 200
    assert (await client.head("/api/matches/nobody/metrics")).status_code == 404


async def test_metrics_send_one_content_type_and_no_fd_gauges_when_open(
    client: AsyncTestClient[Litestar],
) -> None:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers.get_list("content-type") == ["text/plain; version=0.0.4; charset=utf-8"]
    assert "fanfinity_requests_total" in response.text
    assert "process_open_fds" not in response.text
    assert "process_max_fds" not in response.text


async def test_metrics_with_a_key_need_it_and_then_show_everything(app_with: Any) -> None:
    client = await app_with(metrics_key=METRICS_KEY)
    assert_problem(await client.get("/metrics"), 401)
    assert_problem(await client.get("/metrics", headers={"X-API-Key": "wrong-key-wrong-key"}), 401)
    bearer = await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"})
    by_header = await client.get("/metrics", headers={"X-API-Key": METRICS_KEY})
    assert bearer.status_code == by_header.status_code == 200
    assert "fanfinity_requests_total" in bearer.text
    assert "process_open_fds" in bearer.text  # the process collector, for the key holder only


async def test_a_401_storm_from_one_address_turns_into_429_with_retry_after(
    app_with: Any,
) -> None:
    client = await app_with(auth_failures_burst=5, auth_failures_per_s=0.01)
    body = {"matchId": "m"}
    statuses = [
        (await client.post("/api/events", json=body, headers={"X-API-Key": f"guess-{n:012d}"}))
        for n in range(8)
    ]
    assert [response.status_code for response in statuses] == [401] * 5 + [429] * 3
    refused = assert_problem(statuses[-1], 429)
    assert "failed authentications" in refused["detail"]
    assert int(statuses[-1].headers["retry-after"]) >= 1
    assert_security_headers(statuses[-1])
    # the throttle is checked before any key: even the right key waits out the address's bucket
    assert (
        await client.post("/api/events", json=body, headers={"X-API-Key": PRODUCER_KEY})
    ).status_code == 429


async def test_match_list_is_cached_and_rate_limited_per_address(app_with: Any) -> None:
    client = await app_with(match_list_burst=3, match_list_rate_per_s=0.01)
    answers = [await client.get("/api/matches") for _ in range(5)]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 429, 429]
    assert int(answers[-1].headers["retry-after"]) >= 1
    assert_problem(answers[-1], 429)
    reads = client.app.state["match_list_reads"]
    assert reads.cache.store_reads == 1  # three answers, one read of the store


async def test_unknown_match_ids_are_cached_as_misses(app_with: Any) -> None:
    client = await app_with(metrics_cache_ms=5_000.0)
    reader = client.app.state.services.reader
    for _ in range(20):
        assert_problem(await client.get("/api/matches/swept-id-1/metrics"), 404)
    assert reader.store_reads == 1


async def test_log_lines_escape_control_characters(
    client: AsyncTestClient[Litestar], request_lines: list[str]
) -> None:
    await client.get("/api/matches/x%0D%0AINFO%20forged%1B%5B31m/metrics")
    assert request_lines
    assert all(
        "\r" not in line and "\n" not in line and "\x1b" not in line for line in request_lines
    )
    assert "\\r\\nINFO forged\\x1b[31m" in request_lines[-1]


async def test_a_sweep_of_random_ids_writes_a_bounded_number_of_lines(
    client: AsyncTestClient[Litestar], request_lines: list[str]
) -> None:
    for n in range(LINES_PER_WINDOW * 3):
        await client.get(f"/api/events/00000000-0000-4000-8000-{n:012d}")
    assert LINES_PER_WINDOW <= len(request_lines) <= LINES_PER_WINDOW + 1


def test_printable_path_cuts_long_paths() -> None:
    assert printable_path("/a" * 500).endswith("...")
    assert len(printable_path("/a" * 500)) < 210


@pytest.fixture
async def guarded(settings: Settings) -> AsyncIterator[tuple[Litestar, int]]:
    """The app behind uvicorn with the service's own protocol and small limits, in-process."""
    limits = ConnectionLimits(
        max_connections=8, reserve=2, head_timeout_s=0.5, body_timeout_s=0.5, write_timeout_s=1
    )
    previous = GuardedHttpToolsProtocol.limits
    GuardedHttpToolsProtocol.configure(limits)
    app = create_app(settings)
    try:
        async with serving(app, http=GuardedHttpToolsProtocol) as base_url:
            yield app, int(base_url.rsplit(":", 1)[1])
    finally:
        GuardedHttpToolsProtocol.configure(previous)


async def exchange(port: int, data: bytes, then: bytes = b"") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    if then:
        await asyncio.sleep(0.05)
        writer.write(then)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return answer


async def test_the_protocol_answers_oversized_slow_and_stalled_requests_itself(
    guarded: tuple[Litestar, int],
) -> None:
    _, port = guarded
    ok = await exchange(port, b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 ")
    too_large = await exchange(port, b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20_000, b"b" * 10)
    assert too_large.startswith(b"HTTP/1.1 431 ")
    split = await exchange(port, b"GET / HTTP/1.1\r\nX-A: " + b"a" * 8_000, b"b" * 9_000)
    assert split.startswith(b"HTTP/1.1 431 ")  # the limit holds across reads
    slow_head = await exchange(port, b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
    assert slow_head.startswith(b"HTTP/1.1 408 ")
    idle = await exchange(port, b"")
    assert idle == b""  # an idle connection is closed quietly
    head = b"POST /api/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    stalled_body = await exchange(
        port, head + b"X-API-Key: " + PRODUCER_KEY.encode() + b"\r\nContent-Length: 100\r\n\r\n{"
    )
    assert stalled_body.startswith(b"HTTP/1.1 408 ")
    answered = await exchange(port, head + b"Content-Length: 100\r\n\r\n{")
    assert answered.startswith(b"HTTP/1.1 401 ")  # answered before its body: closed, no 408
    assert b"408" not in answered


async def test_a_full_process_closes_its_longest_idle_connection_for_a_new_one(
    guarded: tuple[Litestar, int],
) -> None:
    _, port = guarded
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(8)]
    await asyncio.sleep(0.05)
    answer = await exchange(
        port, b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 200 ")
    first_reader, _ = idle[0]
    assert await asyncio.wait_for(first_reader.read(), 2) == b""
    for _, writer in idle:
        writer.close()


async def test_repeated_header_lines_first_key_wins_and_if_none_match_is_one_list(
    guarded: tuple[Litestar, int],
) -> None:
    """Over a real socket (the test client joins repeated headers before the app sees them)."""
    _, port = guarded
    match_id = "repeated-headers"
    body = (
        b'{"matchId":"%s","eventType":"goal","timestamp":"2025-05-11T12:00:00Z","teamId":"a"}'
        % match_id.encode()
    )

    def post(*lines: bytes) -> bytes:
        head = b"POST /api/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + b"".join(
            line + b"\r\n" for line in lines
        )
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    key, wrong = b"X-API-Key: " + PRODUCER_KEY.encode(), b"X-API-Key: not-the-producer-key"
    json_type, text_type = b"Content-Type: application/json", b"Content-Type: text/plain"
    assert (await exchange(port, post(wrong, key, json_type))).startswith(b"HTTP/1.1 401 ")
    assert (await exchange(port, post(key, json_type, text_type))).startswith(b"HTTP/1.1 202 ")
    assert (await exchange(port, post(key, text_type, json_type))).startswith(b"HTTP/1.1 415 ")

    def get(*lines: bytes) -> bytes:
        return (
            b"GET /api/matches/%s/metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            % match_id.encode()
            + b"".join(line + b"\r\n" for line in lines)
            + b"\r\n"
        )

    answer = b""
    for _ in range(100):  # counted a moment after the 202
        answer = await exchange(port, get())
        if answer.startswith(b"HTTP/1.1 200 "):
            break
        await asyncio.sleep(0.02)
    etag = re.search(rb"(?im)^etag: (.+?)\r$", answer)
    assert etag is not None
    two_lines = get(b'If-None-Match: W/"other"', b"If-None-Match: " + etag.group(1))
    assert (await exchange(port, two_lines)).startswith(b"HTTP/1.1 304 ")
    stale = get(b'If-None-Match: W/"other"', b'If-None-Match: W/"stale"')
    assert (await exchange(port, stale)).startswith(b"HTTP/1.1 200 ")
