"""Abuse probes for docs/security.md: each attack runs against a service on loopback while a
producer in another process measures what it costs the producers. Bounded in count and time.

    python -m scripts.abuse_probe serve --port 8800 [--http guarded|httptools|h11]
    python -m scripts.abuse_probe produce --port 8800 --seconds 10 --rate 50 [--match ID]
    python -m scripts.abuse_probe endless --port 8800 --seconds 8
    python -m scripts.abuse_probe slowloris --port 8800 --connections 3000 --seconds 40
    python -m scripts.abuse_probe subscribers --port 8800 --count 5000 --match ID --seconds 30
    python -m scripts.abuse_probe storm --port 8800 --connections 50 --seconds 10 [--fresh]
    python -m scripts.abuse_probe batches --port 8800 --connections 1 --seconds 10
    python -m scripts.abuse_probe usage --pid PID   # RSS and CPU seconds of a process

Run the load side (subscribers, slowloris) in its own process: each process may hold 20,000
files here, and its source addresses are spread over 127.0.0.2-254 to avoid port exhaustion.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import time
import uuid
from datetime import UTC, datetime

from scripts.helpers import cpu_seconds, percentile, rss_mib

KEY = os.environ.get("FANFINITY_PROBE_KEY", "local-dev-producer-key")
HTTP = {
    "guarded": "fanfinity.api.protocol:GuardedHttpToolsProtocol",
    "httptools": "httptools",
    "h11": "h11",
}


def source(index: int) -> str:
    return f"127.0.0.{2 + index % 253}"


def serve(port: int, http: str) -> None:
    import uvicorn

    os.environ.setdefault("FANFINITY_API_KEYS", KEY)
    os.environ["FANFINITY_PORT"] = str(port)
    os.environ.setdefault("FANFINITY_LOG_LEVEL", "WARNING")
    uvicorn.run(
        "fanfinity.__main__:app_factory",
        factory=True,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http=HTTP[http],
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_keep_alive=5,
        server_header=False,
    )


def event_fields(match_id: str, event_type: str = "goal") -> dict[str, object]:
    return {
        "eventId": str(uuid.uuid4()),
        "matchId": match_id,
        "eventType": event_type,
        "timestamp": datetime.now(UTC).isoformat(),
        "teamId": "al-hilal",
    }


def event(match_id: str, event_type: str = "goal") -> bytes:
    return json.dumps(event_fields(match_id, event_type)).encode()


async def http_request(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    method: str,
    path: str,
    body: bytes = b"",
    key: str = KEY,
) -> int:
    """One keep-alive request on a raw connection; its status."""
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: probe\r\nX-API-Key: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status


async def produce(port: int, seconds: float, rate: float, match_id: str) -> None:
    """Post one event every 1/rate s; print statuses and latency percentiles."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            status = await asyncio.wait_for(
                http_request(reader, writer, "POST", "/api/events", event(match_id)), 10
            )
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            status = 0
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        latencies.append((time.perf_counter() - started) * 1000)
        statuses[status] = statuses.get(status, 0) + 1
        await asyncio.sleep(max(0.0, 1 / rate - (time.perf_counter() - started)))
    writer.close()
    print(
        f"producer: {len(latencies)} posts {statuses} p50 {percentile(latencies, 50):.1f} ms "
        f"p99 {percentile(latencies, 99):.1f} ms max {max(latencies):.1f} ms"
    )


def deep_metadata(seed: int) -> dict[str, object]:
    """Metadata as heavy as validation allows to nest: 7 levels of dicts around lists of ints."""
    inner: dict[str, object] = {"values": list(range(seed % 7, seed % 7 + 60))}
    for level in range(6):
        inner = {f"level{level}": inner, "tag": f"t{seed}-{level}", "n": level}
    return inner


def deep_batch(match_id: str, items: int) -> bytes:
    """One batch of `items` events, each with `deep_metadata` (500 items: about 450 KB)."""
    events = [
        {**event_fields(f"{match_id}-{index % 20}", "corner"), "metadata": deep_metadata(index)}
        for index in range(items)
    ]
    return json.dumps(events, separators=(",", ":")).encode()


async def batches(port: int, connections: int, seconds: float, items: int = 500) -> None:
    """`connections` producers posting batches of deep events back to back; each batch is new."""
    deadline = time.monotonic() + seconds
    statuses: dict[int, int] = {}
    sizes: list[int] = []

    async def sender(index: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < deadline:
            body = deep_batch(f"batches-{index}", items)
            sizes.append(len(body))
            status = await asyncio.wait_for(
                http_request(reader, writer, "POST", "/api/events/batch", body), 30
            )
            statuses[status] = statuses.get(status, 0) + 1
        writer.close()

    await asyncio.gather(*(sender(index) for index in range(connections)))
    print(
        f"batches: {sum(statuses.values())} of {items} items, {statistics.mean(sizes) / 1024:.0f} "
        f"KiB each, statuses {statuses}"
    )


async def endless(port: int, seconds: float) -> None:
    """One connection sending a header that never ends."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /anything HTTP/1.1\r\nHost: probe\r\nX-Endless: ")
    answer = asyncio.create_task(reader.read(200))
    sent, started = 0, time.monotonic()
    with contextlib.suppress(ConnectionError):
        while time.monotonic() - started < seconds and not answer.done():
            writer.write(b"a" * 65536)
            await writer.drain()
            sent += 65536
    got = await asyncio.wait_for(answer, 5) if not answer.done() else answer.result()
    status_line = got.split(b"\r\n", 1)[0]
    print(
        f"endless header: {sent / 1e6:.2f} MB written by the client in "
        f"{time.monotonic() - started:.2f} s; answer {status_line!r}"
    )


async def slowloris(port: int, connections: int, seconds: float) -> None:
    """`connections` heads sent one byte a second; how long the server keeps them."""
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
    for index in range(connections):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(source(index), 0)
        )
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: probe\r\n")
        opened.append((reader, writer, time.monotonic()))
    print(f"slowloris: {connections} connections open")
    lifetimes: list[float] = []

    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, at: float) -> None:
        answer = asyncio.create_task(reader.read(100))
        with contextlib.suppress(ConnectionError):
            while time.monotonic() - at < seconds and not answer.done():
                writer.write(b"X")
                await writer.drain()
                await asyncio.sleep(1)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(answer, 2)
        lifetimes.append(time.monotonic() - at)
        writer.close()

    await asyncio.gather(*(drip(*entry) for entry in opened))
    print(
        f"slowloris: closed after p50 {percentile(lifetimes, 50):.1f} s, "
        f"max {max(lifetimes):.1f} s (probe gave up at {seconds:.0f} s)"
    )


async def subscribers(port: int, count: int, match_id: str, seconds: float) -> None:
    """`count` live streams that read and discard; frames received per stream."""
    frames = [0] * count
    path = f"/api/matches/{match_id}/metrics/stream"
    refused: dict[str, int] = {}

    async def subscribe(index: int) -> None:
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(source(index), 0)
            )
            writer.write(f"GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if b" 200 " not in head.split(b"\r\n", 1)[0]:
                key = head.split(b"\r\n", 1)[0].decode()
                refused[key] = refused.get(key, 0) + 1
                writer.close()
                return
            deadline = time.monotonic() + seconds
            with contextlib.suppress(TimeoutError):  # the end of the probe, not a failure
                while time.monotonic() < deadline:
                    chunk = await asyncio.wait_for(reader.read(65536), deadline - time.monotonic())
                    if not chunk:
                        break
                    frames[index] += chunk.count(b"event: metrics")
            writer.close()
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            refused[type(exc).__name__] = refused.get(type(exc).__name__, 0) + 1

    tasks = []
    for index in range(count):
        tasks.append(asyncio.create_task(subscribe(index)))
        if index % 200 == 199:
            await asyncio.sleep(0.05)
    print(f"subscribers: {count} opening")
    await asyncio.gather(*tasks)
    got = [n for n in frames if n]
    print(
        f"subscribers: {len(got)} streamed, frames per stream median "
        f"{statistics.median(got) if got else 0}, refused {refused}"
    )


async def storm(port: int, connections: int, seconds: float, fresh: bool = False) -> None:
    """Wrong keys as fast as `connections` connections can send them (`fresh`: a new connection
    for every guess, as a client that answers a hold by reconnecting would)."""
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + seconds

    async def guess(index: int) -> None:
        """One keep-alive connection guessing keys; when the server closes it, a new one."""
        while time.monotonic() < deadline:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(source(index), 0)
            )
            try:
                while time.monotonic() < deadline:
                    key = f"guess-{uuid.uuid4().hex}"
                    status = await asyncio.wait_for(
                        http_request(reader, writer, "POST", "/api/events", b"{}", key=key),
                        max(deadline - time.monotonic(), 0.01),
                    )
                    statuses[status] = statuses.get(status, 0) + 1
                    if fresh:
                        break
            except (ConnectionError, asyncio.IncompleteReadError):
                statuses[0] = statuses.get(0, 0) + 1  # 0: closed by the server
            except TimeoutError:
                pass
            finally:
                writer.close()

    await asyncio.gather(*(guess(index) for index in range(connections)))
    total = sum(statuses.values())
    rate = total / seconds
    print(f"storm: {total} outcomes in {seconds:.0f} s ({rate:.0f}/s): {statuses} (0: closed)")


def usage(pid: int) -> None:
    print(f"pid {pid}: RSS {rss_mib(pid):.0f} MiB, CPU {cpu_seconds(pid):.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("probe")
    parser.add_argument("--port", type=int, default=8800)
    parser.add_argument("--http", default="guarded", choices=sorted(HTTP))
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--match", default="probe-match")
    parser.add_argument("--pid", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="storm: a new connection per guess")
    args = parser.parse_args()
    if args.probe == "serve":
        serve(args.port, args.http)
    elif args.probe == "usage":
        usage(args.pid)
    elif args.probe == "produce":
        asyncio.run(produce(args.port, args.seconds, args.rate, args.match))
    elif args.probe == "endless":
        asyncio.run(endless(args.port, args.seconds))
    elif args.probe == "slowloris":
        asyncio.run(slowloris(args.port, args.connections, args.seconds))
    elif args.probe == "subscribers":
        asyncio.run(subscribers(args.port, args.count, args.match, args.seconds))
    elif args.probe == "batches":
        asyncio.run(batches(args.port, args.connections, args.seconds))
    elif args.probe == "storm":
        asyncio.run(storm(args.port, args.connections, args.seconds, args.fresh))
    else:
        parser.error(f"unknown probe {args.probe!r}")


if __name__ == "__main__":
    main()
