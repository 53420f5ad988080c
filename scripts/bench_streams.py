"""Live-stream benchmark: N SSE subscribers on one worker, and how fast a goal reaches them.

Starts the service (embedded engine, one worker) unless --url is given, opens N raw SSE
connections to one match (asyncio sockets, no HTTP client overhead), waits until every subscriber
has its first `metrics` event, posts a goal, and measures when each subscriber receives the
update carrying it. Prints subscribers connected, delivery latency p50/p99/max, misses and the
server's RSS.

    uv run python scripts/bench_streams.py --subscribers 5000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from bench import LOG_DIR, free_port, rss_mib, server  # scripts/ is this script's path

API_KEY = "bench-producer-key-0001"
ROOT = Path(__file__).resolve().parent.parent


def post_event(base: str, match_id: str, event_type: str) -> None:
    body = json.dumps(
        {
            "eventId": str(uuid.uuid4()),
            "matchId": match_id,
            "eventType": event_type,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "teamId": "al-hilal",
        }
    ).encode()
    request = urllib.request.Request(  # noqa: S310
        f"{base}/api/events",
        data=body,
        headers={"Content-Type": "application/json", "X-API-Key": API_KEY},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        if response.status != 202:
            raise SystemExit(f"event refused: {response.status}")


class Subscriber:
    """One raw SSE connection that records when it saw `wanted` events in the metrics."""

    def __init__(self) -> None:
        self.first_at: float | None = None
        self.update_at: float | None = None
        self.wanted: int | None = None

    async def run(self, host: str, port: int, path: str) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        await writer.drain()
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                if line.startswith(b"data: {") and b'"totalEvents"' in line:
                    found = re.search(rb'"totalEvents":(\d+)', line)
                    total = int(found.group(1)) if found else 0
                    now = time.perf_counter()
                    if self.first_at is None:
                        self.first_at = now
                    if self.wanted is not None and total >= self.wanted and self.update_at is None:
                        self.update_at = now
                        return
        finally:
            writer.close()


def wait_until_counted(base: str, match_id: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/api/matches/{match_id}/metrics", timeout=2):  # noqa: S310
                return
        except OSError:
            time.sleep(0.1)


def percentile(values: list[float], rank: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(rank / 100 * len(ordered)) - 1))]


async def measure(base: str, subscribers: int, connect_rate: int) -> dict[str, float]:
    host, port = base.removeprefix("http://").split(":")
    match_id = f"stream-bench-{uuid.uuid4().hex[:8]}"
    post_event(base, match_id, "match_start")
    path = f"/api/matches/{match_id}/metrics/stream"
    await asyncio.to_thread(wait_until_counted, base, match_id)
    clients = [Subscriber() for _ in range(subscribers)]
    tasks = []
    connect_started = time.perf_counter()
    for index, client in enumerate(clients):
        tasks.append(asyncio.create_task(client.run(host, int(port), path)))
        if index % connect_rate == connect_rate - 1:
            await asyncio.sleep(0.05)
    deadline = time.monotonic() + 120
    connected = 0
    while connected < subscribers and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        connected = sum(c.first_at is not None for c in clients)
    connect_s = time.perf_counter() - connect_started
    for client in clients:
        client.wanted = 2
    goal_at = time.perf_counter()
    await asyncio.to_thread(post_event, base, match_id, "goal")
    await asyncio.wait(tasks, timeout=15)
    latencies = [c.update_at - goal_at for c in clients if c.update_at is not None]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "connected": connected,
        "connect_s": connect_s,
        "received": len(latencies),
        "p50_ms": percentile(latencies, 50) * 1000 if latencies else float("nan"),
        "p99_ms": percentile(latencies, 99) * 1000 if latencies else float("nan"),
        "max_ms": max(latencies) * 1000 if latencies else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=5000)
    parser.add_argument("--url", help="an already running service (default: start one)")
    parser.add_argument("--connect-batch", type=int, default=250, help="connections per 50 ms")
    args = parser.parse_args()
    base = args.url
    service: contextlib.AbstractContextManager[int | None] = contextlib.nullcontext()
    if base is None:
        port = free_port()
        env = {
            **os.environ,
            "FANFINITY_PORT": str(port),
            "FANFINITY_API_KEYS": API_KEY,
            "FANFINITY_MONGODB_URL": "memory://",
        }
        service = server([sys.executable, "-m", "fanfinity", "serve"], env, port, "/health/ready")
        base = f"http://127.0.0.1:{port}"
        print(f"service log: {LOG_DIR}")
    with service as pid:
        rss_before = rss_mib(pid) if pid else float("nan")
        result = asyncio.run(measure(base, args.subscribers, args.connect_batch))
        rss_after = rss_mib(pid) if pid else float("nan")
    print(
        f"subscribers: {result['connected']:.0f}/{args.subscribers} connected "
        f"in {result['connect_s']:.1f}s, each got the current metrics first"
    )
    print(
        f"goal delivered to {result['received']:.0f}/{args.subscribers}: "
        f"p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, "
        f"max {result['max_ms']:.0f} ms after the POST"
    )
    print(f"service RSS: {rss_before:.0f} MiB before, {rss_after:.0f} MiB with the subscribers")
    within_a_second = result["received"] == args.subscribers and result["max_ms"] <= 1000
    print("verdict:", "OK" if within_a_second else "MISSED (not every subscriber within 1 s)")
    return 0 if within_a_second else 1


if __name__ == "__main__":
    sys.exit(main())
