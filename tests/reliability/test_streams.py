"""Live streams against a real process, where the hub writes frames straight to each connection:
a subscriber that stops reading is dropped while readers and producers carry on, and SIGTERM ends
every stream with its last chunk before the process exits."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
import uuid
from datetime import timedelta
from pathlib import Path

import httpx

from tests.reliability.service import (
    BASE_TIME,
    PRODUCER_KEY,
    ServiceProcess,
    new_match_id,
    prometheus_value,
    running_service,
    start_service,
)

DEADLINE_S = 30.0
GRACE_S = 5.0
TERMINATING_CHUNK = b"0\r\n\r\n"


def minute_event(match_id: str, index: int) -> dict[str, str]:
    """An event in its own minute: every one makes the match's frames longer (one more minute)."""
    return {
        "eventId": str(uuid.uuid4()),
        "matchId": match_id,
        "eventType": "corner",
        "timestamp": (BASE_TIME - timedelta(hours=3) + timedelta(minutes=index)).isoformat(),
        "teamId": "al-hilal",
    }


async def counted_match(service: ServiceProcess, client: httpx.AsyncClient) -> str:
    match_id = new_match_id("live")
    assert (await client.post("/api/events", json=minute_event(match_id, 0))).status_code == 202
    for _ in range(200):
        if (await client.get(f"/api/matches/{match_id}/metrics")).status_code == 200:
            return match_id
        await asyncio.sleep(0.05)
    raise AssertionError(f"{match_id} was never counted; log:\n{service.log_tail()}")


def stream_request(service: ServiceProcess, match_id: str) -> bytes:
    return (
        f"GET /api/matches/{match_id}/metrics/stream HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{service.port}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()


async def open_stream(
    service: ServiceProcess, match_id: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw SSE request whose response head has arrived."""
    reader, writer = await asyncio.open_connection("127.0.0.1", service.port, limit=1 << 20)
    writer.write(stream_request(service, match_id))
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert b"transfer-encoding: chunked" in head.lower()
    return reader, writer


async def open_stuck_stream(service: ServiceProcess, match_id: str) -> socket.socket:
    """A stream whose client never reads from its (small) socket buffer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", service.port))
    await loop.sock_sendall(sock, stream_request(service, match_id))
    return sock


async def metric(service: ServiceProcess, name: str) -> float:
    async with httpx.AsyncClient(base_url=service.base_url, timeout=5.0) as client:
        return prometheus_value((await client.get("/metrics")).text, name) or 0.0


async def test_a_subscriber_that_stops_reading_is_dropped_while_readers_and_producers_carry_on(
    tmp_path: Path,
) -> None:
    async with (
        running_service(
            tmp_path / "service.log",
            FANFINITY_STREAM_SLOW_S="1",
            FANFINITY_STREAM_INTERVAL_MS="100",
        ) as service,
        httpx.AsyncClient(
            base_url=service.base_url, headers={"X-API-Key": PRODUCER_KEY}, timeout=5.0
        ) as client,
    ):
        match_id = await counted_match(service, client)
        stuck = await open_stuck_stream(service, match_id)
        reader, writer = await open_stream(service, match_id)
        received = bytearray()

        async def read() -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(65536):
                    received.extend(chunk)

        reading = asyncio.create_task(read())
        statuses = []
        deadline = time.monotonic() + DEADLINE_S
        index = 1
        while not await metric(service, "fanfinity_stream_subscribers_dropped_total"):
            assert time.monotonic() < deadline, f"never dropped; log:\n{service.log_tail()}"
            for _ in range(5):  # about 25 updates a second: the stuck socket fills in seconds
                statuses.append(
                    (
                        await client.post("/api/events", json=minute_event(match_id, index))
                    ).status_code
                )
                index += 1
            await asyncio.sleep(0.1)
        assert set(statuses) == {202}
        assert await metric(service, "fanfinity_stream_sessions_active") == 1  # the reader
        with contextlib.suppress(ConnectionResetError):  # closed by the server: recv ends
            while await asyncio.wait_for(asyncio.get_running_loop().sock_recv(stuck, 1 << 16), 5):
                pass
        total = f'"totalEvents":{index}'.encode()
        for _ in range(100):  # the reader still gets every update, the last one included
            if total in received:
                break
            await asyncio.sleep(0.05)
        assert total in received
        assert received.count(b"event: metrics") >= 3  # updates all along, not only the last
        reading.cancel()
        writer.close()
        stuck.close()


async def test_sigterm_ends_every_live_stream_with_its_last_chunk_then_exits_cleanly(
    tmp_path: Path,
) -> None:
    service = start_service(tmp_path / "service.log", FANFINITY_SHUTDOWN_GRACE_S=str(GRACE_S))
    try:
        await service.wait_ready()
        async with httpx.AsyncClient(
            base_url=service.base_url, headers={"X-API-Key": PRODUCER_KEY}, timeout=5.0
        ) as client:
            match_id = await counted_match(service, client)
        streams = [await open_stream(service, match_id) for _ in range(20)]
        for reader, _ in streams:
            await asyncio.wait_for(reader.readuntil(b"event: metrics"), 5)
        signalled = time.monotonic()
        service.send(signal.SIGTERM)
        endings = [await asyncio.wait_for(reader.read(), GRACE_S + 5) for reader, _ in streams]
        assert all(ending.endswith(TERMINATING_CHUNK) for ending in endings), endings[:2]
        assert await service.wait_exit(GRACE_S + 5) == 0
        assert time.monotonic() - signalled < GRACE_S + 3
        for _, writer in streams:
            writer.close()
    finally:
        service.kill()
