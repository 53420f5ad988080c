"""Sockets against a real process: heads are bounded in size and time, bodies in time,
connections in number, and producers and health checks still get in while all of it happens.

What an abusive client without a key tried before (issue 18): an endless header accepted for
8 s (81 MB) while producers got no 202; 3,000 slowloris connections kept open 35-40 s and more;
nothing capped connections below the open-file limit. Each test starts its own service with
small limits so that it runs in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx

from tests.reliability.service import (
    PRODUCER_KEY,
    ServiceProcess,
    event_body,
    new_match_id,
    problem_of,
    retry_after_s,
    running_service,
)

HEAD_TIMEOUT_S = 1.0
QUICK = {"FANFINITY_HEAD_TIMEOUT_S": "1", "FANFINITY_BODY_TIMEOUT_S": "1"}
SLOWLORIS = 200


async def raw_connection(
    service: ServiceProcess, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", service.port, local_addr=(source, 0))


async def answer_or_eof(reader: asyncio.StreamReader, deadline_s: float) -> bytes:
    """Whatever the server sends before it closes the connection (b"" if it just closes)."""
    chunks = []
    with contextlib.suppress(ConnectionError):
        while chunk := await asyncio.wait_for(reader.read(65536), deadline_s):
            chunks.append(chunk)
    return b"".join(chunks)


async def produce(service: ServiceProcess, count: int, pause_s: float = 0.02) -> list[int]:
    """A producer posting `count` events one after another; the statuses it got."""
    match_id = new_match_id("limits")
    statuses = []
    async with httpx.AsyncClient(
        base_url=service.base_url, headers={"X-API-Key": PRODUCER_KEY}, timeout=5.0
    ) as client:
        for index in range(count):
            statuses.append(
                (await client.post("/api/events", json=event_body(match_id, index))).status_code
            )
            await asyncio.sleep(pause_s)
    return statuses


async def test_an_endless_header_gets_431_at_16_kib_and_producers_keep_getting_202(
    tmp_path: Path,
) -> None:
    async with running_service(tmp_path / "service.log", **QUICK) as service:
        reader, writer = await raw_connection(service)
        writer.write(b"GET /anything HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        producer = asyncio.create_task(produce(service, 20))
        answer_task = asyncio.create_task(answer_or_eof(reader, 10.0))
        sent = 0
        with contextlib.suppress(ConnectionError):
            for _ in range(2_000):  # at most 8 MB, stopped by the server long before
                if answer_task.done():
                    break
                writer.write(b"a" * 4096)
                await writer.drain()
                sent += 4096
                await asyncio.sleep(0)
        answer = await answer_task
        writer.close()
        assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
        assert b"x-request-id: " in answer
        assert b"x-content-type-options: nosniff" in answer
        assert sent < 4 * 1024 * 1024, f"the server kept reading a header: {sent} bytes"
        assert await producer == [202] * 20


async def test_slowloris_connections_are_closed_after_the_head_timeout(tmp_path: Path) -> None:
    async with running_service(tmp_path / "service.log", **QUICK) as service:
        started = time.monotonic()

        async def drip() -> float:
            """One slowloris connection: a header byte every 0.25 s, never a whole head;
            returns how long the server let it live."""
            reader, writer = await raw_connection(service)
            opened = time.monotonic()
            writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
            answer = asyncio.create_task(answer_or_eof(reader, 20.0))
            with contextlib.suppress(ConnectionError):
                for _ in range(80):
                    if answer.done():
                        break
                    writer.write(b"X")
                    await writer.drain()
                    await asyncio.sleep(0.25)
            assert (await answer).startswith(b"HTTP/1.1 408 ")
            writer.close()
            return time.monotonic() - opened

        producer = asyncio.create_task(produce(service, 20))
        lifetimes = await asyncio.gather(*(drip() for _ in range(SLOWLORIS)))
        assert max(lifetimes) < HEAD_TIMEOUT_S + 3, f"a slowloris lived {max(lifetimes):.1f}s"
        assert time.monotonic() - started < 15
        assert await producer == [202] * 20


async def test_a_body_that_stops_arriving_is_closed_with_408(tmp_path: Path) -> None:
    async with running_service(tmp_path / "service.log", **QUICK) as service:
        reader, writer = await raw_connection(service)
        writer.write(
            b"POST /api/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-API-Key: " + PRODUCER_KEY.encode() + b'\r\nContent-Length: 1000\r\n\r\n{"a":'
        )
        await writer.drain()
        answer = await answer_or_eof(reader, 5.0)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]


async def test_when_connections_are_full_the_longest_idle_one_makes_room(tmp_path: Path) -> None:
    async with running_service(
        tmp_path / "service.log",
        FANFINITY_MAX_CONNECTIONS="40",
        FANFINITY_CONNECTION_RESERVE="10",
        FANFINITY_HEAD_TIMEOUT_S="30",
    ) as service:
        idle = [await raw_connection(service) for _ in range(40)]
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=service.base_url, timeout=5.0) as client:
            assert (await client.get("/health/live")).status_code == 200
        first_reader, _ = idle[0]
        assert await answer_or_eof(first_reader, 2.0) == b""  # closed quietly to make room
        async with httpx.AsyncClient(base_url=service.base_url, timeout=5.0) as client:
            metrics = (await client.get("/metrics")).text
        assert 'fanfinity_connections_closed_total{reason="evicted_idle"}' in metrics
        for _, writer in idle:
            writer.close()


async def test_streams_leave_the_reserve_to_producers_and_one_address_gets_its_share(
    tmp_path: Path,
) -> None:
    async with running_service(
        tmp_path / "service.log",
        FANFINITY_MAX_CONNECTIONS="60",
        FANFINITY_CONNECTION_RESERVE="20",  # 40 stream slots
        FANFINITY_STREAM_MAX_PER_CLIENT="30",
    ) as service:
        match_id = new_match_id("streams")
        async with httpx.AsyncClient(
            base_url=service.base_url, headers={"X-API-Key": PRODUCER_KEY}, timeout=5.0
        ) as client:
            assert (
                await client.post("/api/events", json=event_body(match_id, 0))
            ).status_code == 202
            for _ in range(100):
                if (await client.get(f"/api/matches/{match_id}/metrics")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
        path = f"/api/matches/{match_id}/metrics/stream"
        async with contextlib.AsyncExitStack() as stack:
            one = await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=service.base_url,
                    timeout=5.0,
                    limits=httpx.Limits(max_connections=100),
                    transport=httpx.AsyncHTTPTransport(local_address="127.0.0.1"),
                )
            )
            other = await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=service.base_url,
                    timeout=5.0,
                    transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2"),
                )
            )
            statuses = []
            for _ in range(31):
                response = await stack.enter_async_context(one.stream("GET", path))
                statuses.append(response.status_code)
            assert statuses == [200] * 30 + [429]
            retry_after_s(response)
            await response.aread()
            assert problem_of(response)["status"] == 429
            for _ in range(10):
                response = await stack.enter_async_context(other.stream("GET", path))
                assert response.status_code == 200
            full = await stack.enter_async_context(other.stream("GET", path))
            assert full.status_code == 503  # 40 slots: the replica is full of streams
            await full.aread()
            retry_after_s(full)
            assert await produce(service, 10) == [202] * 10  # the reserve serves producers
            async with httpx.AsyncClient(base_url=service.base_url, timeout=5.0) as probe:
                assert (await probe.get("/health/live")).status_code == 200


async def post_guess(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """A POST with a wrong key on a keep-alive connection; the answer's head."""
    writer.write(
        b"POST /api/events HTTP/1.1\r\nHost: x\r\nX-API-Key: wrong-key-wrong-key\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await reader.readexactly(length)
    return head


def open_connections(metrics_text: str) -> float:
    line = next(line for line in metrics_text.splitlines() if line.startswith("fanfinity_conn"))
    assert line.startswith("fanfinity_connections_open "), line
    return float(line.split()[1])


async def test_a_throttled_address_gets_one_answer_per_wait_and_producers_are_not_slowed(
    tmp_path: Path,
) -> None:
    """An address out of failed authentications that keeps guessing on keep-alive connections
    is held for its Retry-After (half the head timeout at most) after each 429: a handful of
    answers, not thousands, while a producer elsewhere keeps its pace; a held connection whose
    client hangs up is let go at once, not when its hold ends."""
    async with running_service(
        tmp_path / "service.log",
        FANFINITY_HEAD_TIMEOUT_S="2",
        FANFINITY_AUTH_FAILURES_BURST="2",
        FANFINITY_AUTH_FAILURES_PER_S="0.01",
    ) as service:
        guesser = "127.0.0.7"
        reader, writer = await raw_connection(service, guesser)
        assert [(await post_guess(reader, writer)).split(b" ")[1] for _ in range(3)] == [
            b"401",
            b"401",
            b"429",
        ]
        producer = asyncio.create_task(produce(service, 40, pause_s=0.05))
        answers, started = 0, time.monotonic()
        while time.monotonic() - started < 3.0:  # guess again at once, whatever Retry-After says
            head = await post_guess(reader, writer)
            assert head.startswith(b"HTTP/1.1 429 ")
            assert b"retry-after: " in head
            answers += 1
        assert answers <= 4, f"{answers} answers in 3 s with holds of 1 s"
        assert await producer == [202] * 40
        writer.close()

        held = [await raw_connection(service, guesser) for _ in range(20)]
        for held_reader, held_writer in held:
            await post_guess(held_reader, held_writer)  # a 429, then a hold of 1 s
        async with httpx.AsyncClient(base_url=service.base_url, timeout=5.0) as client:
            before = open_connections((await client.get("/metrics")).text)
            for _, held_writer in held:
                held_writer.close()
            await asyncio.sleep(0.3)
            after = open_connections((await client.get("/metrics")).text)
        assert before - after >= 20, (before, after)


async def test_an_upgrade_request_is_answered_as_plain_http_and_never_held(tmp_path: Path) -> None:
    """No route speaks WebSocket: a handshake gets the plain answer of its route, and one that
    carries a body (which a WebSocket server would wait on for ever, and which the parser would
    drop) is told to come back without Upgrade; neither connection is held."""
    handshake = (
        b"GET /health/live HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    )
    async with running_service(tmp_path / "service.log", **QUICK) as service:
        reader, writer = await raw_connection(service)
        writer.write(handshake + b"\r\n")
        answer = await answer_or_eof(reader, HEAD_TIMEOUT_S + 3)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        assert answer.endswith(b'{"status":"ok","checks":{}}')

        reader, writer = await raw_connection(service)
        writer.write(handshake + b"Content-Length: 1\r\n\r\nx")
        answer = await answer_or_eof(reader, HEAD_TIMEOUT_S + 3)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
        assert b"urn:fanfinity:problem:upgrade-not-supported" in answer
