"""Live-stream benchmark: N SSE subscribers on one worker, and how fast a goal reaches them.

Starts the service (embedded engine, one worker) unless --url is given, opens N raw SSE
connections to one match from load-client processes of their own (`scripts.bench.subscribers`),
waits until every subscriber has its first `metrics` frame, posts a goal, and measures when each
subscriber receives the update carrying it. Connect failures (by reason) are reported apart from
delivery latency; the server's RSS before and with the subscribers, and per subscriber. Then a
producer posts to the streamed match for a few seconds (every event is an update fanned out to all
subscribers) and its POST latency is compared with the same producer before any subscriber came.

    make bench-streams                                   # 18,000 subscribers
    uv run python -m scripts.bench.streams --subscribers 5000

Both the service and the clients hold one file per connection: the soft open-files limit is raised
to the hard one (20,000 per process on the machines this was built on, which is why one worker
tops out near 18,000 subscribers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import math
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fanfinity.__main__ import raise_open_files_limit
from scripts.helpers import (
    ROOT,
    free_port,
    http_request,
    percentile,
    rss_mib,
    running_process,
)

API_KEY = "bench-producer-key-0001"
LOG_DIR = Path(tempfile.mkdtemp(prefix="fanfinity-bench-streams-"))
PER_CLIENT = 9_000  # subscribers per load-client process
DELIVERY_WAIT_S = 15.0
TARGET_P99_MS = 500.0
TARGET_PRODUCER_P99_MS = 50.0
KERNEL_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPReqQFullDrop", "SyncookiesSent")


def post_event(base: str, match_id: str, event_type: str) -> None:
    event = {
        "eventId": str(uuid.uuid4()),
        "matchId": match_id,
        "eventType": event_type,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "teamId": "al-hilal",
    }
    status, body = http_request(f"{base}/api/events", event, API_KEY)
    if status != 202:
        raise SystemExit(f"event refused: {status} {body[:200]!r}")


def produce(
    base: str, match_id: str, seconds: float, rate: float
) -> tuple[list[float], Counter[int]]:
    """POST events to `match_id` at `rate` a second on one keep-alive connection, as a producer
    does; each POST's latency (ms) and the statuses."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"Content-Type": "application/json", "X-API-Key": API_KEY}
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    next_at = time.monotonic()
    deadline = next_at + seconds
    try:
        while next_at < deadline:
            event = {
                "eventId": str(uuid.uuid4()),
                "matchId": match_id,
                "eventType": "corner",
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "teamId": "al-nassr",
            }
            started = time.perf_counter()
            connection.request("POST", "/api/events", json.dumps(event).encode(), headers)
            response = connection.getresponse()
            response.read()
            latencies.append((time.perf_counter() - started) * 1000)
            statuses[response.status] += 1
            next_at += 1 / rate
            time.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        connection.close()
    return latencies, statuses


def server_p99_ms(base: str, match_id: str) -> float:
    """The service's own p99 from a POST's arrival to its durable 202 for this match (its
    `responseTimeMs`, from log-scale buckets): the producer's latency without the client's."""
    status, body = http_request(f"{base}/api/matches/{match_id}/metrics", timeout_s=5)
    p99 = json.loads(body)["responseTimeMs"]["p99"] if status == 200 else None
    return float(p99) if p99 is not None else math.nan


def wait_until_counted(base: str, match_id: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if http_request(f"{base}/api/matches/{match_id}/metrics", timeout_s=2)[0] == 200:
            return
        time.sleep(0.1)
    raise SystemExit(f"{match_id} was never counted")


def kernel_counters() -> dict[str, int]:
    """TCP listen-queue counters of this network namespace (/proc/net/netstat)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=False))
            return {name: table.get(name, 0) for name in KERNEL_COUNTERS}
    return {}


async def read_message(process: asyncio.subprocess.Process, timeout_s: float) -> dict[str, Any]:
    if process.stdout is None:
        raise SystemExit("a load client has no stdout pipe")
    line = await asyncio.wait_for(process.stdout.readline(), timeout_s)
    if not line:
        raise SystemExit(f"a load client exited with {await process.wait()} (see {LOG_DIR})")
    message: dict[str, Any] = json.loads(line)
    return message


async def measure(base: str, args: argparse.Namespace) -> dict[str, Any]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    match_id = f"stream-bench-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(post_event, base, match_id, "match_start")
    await asyncio.to_thread(wait_until_counted, base, match_id)
    alone, alone_statuses = await asyncio.to_thread(
        produce, base, f"{match_id}-alone", args.producer_s, args.producer_rate
    )
    shares = split(args.subscribers, args.clients)
    addresses = max(1, args.addresses // len(shares))
    kernel_before = kernel_counters()
    clients = []
    for index, count in enumerate(shares):
        log = (LOG_DIR / f"client-{index}.log").open("wb")
        clients.append(
            await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "scripts.bench.subscribers"),
                *("--host", host, "--port", port, "--count", str(count)),
                *("--path", f"/api/matches/{match_id}/metrics/stream", "--wanted", "2"),
                *("--first-address", str(2 + index * addresses), "--addresses", str(addresses)),
                *("--in-flight", str(max(1, args.in_flight // len(shares)))),
                *("--timeout", str(args.timeout)),
                cwd=ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                limit=1 << 24,  # the delivery report lists every subscriber
            )
        )
    try:
        connected = [await read_message(c, args.timeout * 3 + 60) for c in clients]
        kernel_after = kernel_counters()
        rss_with = rss_mib(args.service_pid) if args.service_pid else math.nan
        goal_at = time.monotonic()
        await asyncio.to_thread(post_event, base, match_id, "goal")
        posted_ms = (time.monotonic() - goal_at) * 1000
        deliveries = await collect_deliveries(clients)
        rss_delivered = rss_mib(args.service_pid) if args.service_pid else math.nan
        during, during_statuses = await asyncio.to_thread(
            produce, base, match_id, args.producer_s, args.producer_rate
        )
        after = await tell_all(clients, b"frames\n")
        rss_after = rss_mib(args.service_pid) if args.service_pid else math.nan
        await asyncio.sleep(1.5)  # the service adds its ingest latencies to the summary each second
        server_alone = await asyncio.to_thread(server_p99_ms, base, f"{match_id}-alone")
        server_during = await asyncio.to_thread(server_p99_ms, base, match_id)
    finally:
        for client in clients:
            with contextlib.suppress(ProcessLookupError):
                client.kill()
            await client.wait()
    latencies = [(at - goal_at) * 1000 for d in deliveries for at in d["update_at"]]
    failures: Counter[str] = Counter()
    for message in connected:
        failures.update(message["failures"])
    return {
        "connected": sum(m["connected"] for m in connected),
        "failures": dict(failures),
        "connect_s": max(m["connect_s"] for m in connected),
        "first_frame_p50_ms": max(m["first_frame_p50_ms"] for m in connected),
        "first_frame_p99_ms": max(m["first_frame_p99_ms"] for m in connected),
        "kernel": {k: kernel_after.get(k, 0) - v for k, v in kernel_before.items()},
        "rss_with_mib": rss_with,
        "goal_post_ms": posted_ms,
        "received": len(latencies),
        "closed_early": sum(d["closed_early"] for d in deliveries),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies, default=math.nan),
        "rss_delivered_mib": rss_delivered,
        "rss_after_mib": rss_after,
        "producer_alone": (percentile(alone, 50), percentile(alone, 99), dict(alone_statuses)),
        "producer_during": (percentile(during, 50), percentile(during, 99), dict(during_statuses)),
        "server_p99_ms": (server_alone, server_during),
        "fanned_frames": sum(a["frames"] for a in after) - sum(d["frames"] for d in deliveries),
        "open_after": sum(a["open"] for a in after),
    }


async def tell_all(clients: list[asyncio.subprocess.Process], line: bytes) -> list[dict[str, Any]]:
    for client in clients:
        if client.stdin is not None:
            client.stdin.write(line)
            await client.stdin.drain()
    return [await read_message(client, 60) for client in clients]


async def collect_deliveries(clients: list[asyncio.subprocess.Process]) -> list[dict[str, Any]]:
    """Each client reports once all its subscribers have the goal, or when told to (a line)."""
    deadline = time.monotonic() + DELIVERY_WAIT_S
    pending = {asyncio.ensure_future(read_message(c, DELIVERY_WAIT_S + 60)): c for c in clients}
    done, _ = await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
    for task, client in pending.items():
        if task not in done and client.stdin is not None:
            client.stdin.write(b"report\n")
            await client.stdin.drain()
    return [await task for task in pending]


def split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (index < extra) for index in range(parts) if base + (index < extra)]


def report(result: dict[str, Any], args: argparse.Namespace, rss_before: float) -> bool:
    wanted = args.subscribers
    failures = ", ".join(f"{n} {reason}" for reason, n in sorted(result["failures"].items()))
    kernel = ", ".join(f"{name} +{n}" for name, n in result["kernel"].items())
    print(
        f"subscribers: {result['connected']}/{wanted} connected and got their first frame in "
        f"{result['connect_s']:.1f}s (connect to first frame p50 "
        f"{result['first_frame_p50_ms']:.0f} ms, p99 {result['first_frame_p99_ms']:.0f} ms)"
    )
    print(f"connect failures: {failures or 'none'}")
    print(f"kernel (this network namespace, during the connects): {kernel or 'unavailable'}")
    print(
        f"goal delivered to {result['received']}/{result['connected']} connected subscribers: "
        f"p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, "
        f"max {result['max_ms']:.0f} ms after the POST (which took {result['goal_post_ms']:.0f} ms)"
        + (f"; {result['closed_early']} streams closed early" if result["closed_early"] else "")
    )
    rss_with = result["rss_with_mib"]
    per_subscriber = (rss_with - rss_before) * 1024 / max(1, result["connected"])
    print(
        f"service RSS: {rss_before:.0f} MiB before, {rss_with:.0f} MiB with the subscribers "
        f"({per_subscriber:.1f} KiB per subscriber)"
    )
    ok = bool(
        result["connected"] == wanted
        and result["received"] == wanted
        and result["p99_ms"] <= TARGET_P99_MS
    )
    alone_p50, alone_p99, alone_statuses = result["producer_alone"]
    during_p50, during_p99, during_statuses = result["producer_during"]
    print(
        f"producer POST ({args.producer_rate:g}/s for {args.producer_s:g} s): "
        f"p50 {alone_p50:.1f} ms, p99 {alone_p99:.1f} ms with no subscriber {alone_statuses}; "
        f"p50 {during_p50:.1f} ms, "
        f"p99 {during_p99:.1f} ms on the streamed match {during_statuses}, its updates fanned "
        f"out as {result['fanned_frames']} subscriber-frames; "
        f"{result['open_after']}/{result['connected']} streams still open"
    )
    server_alone, server_during = result["server_p99_ms"]
    print(
        f"  the service's own p99 (arrival to durable 202): {server_alone:.1f} ms with no "
        f"subscriber, {server_during:.1f} ms on the streamed match"
    )
    print(
        f"service RSS after the producer: {result['rss_after_mib']:.0f} MiB "
        f"({result['rss_delivered_mib']:.0f} MiB right after the goal)"
    )
    producer_ok = during_p99 <= TARGET_PRODUCER_P99_MS and set(during_statuses) == {202}
    ok = ok and producer_ok
    verdict = "OK" if ok else "MISSED"
    print(
        f"verdict: {verdict} (every subscriber connected and got the goal, p99 <= "
        f"{TARGET_P99_MS:.0f} ms; producer p99 during fan-out <= {TARGET_PRODUCER_P99_MS:.0f} ms)"
    )
    return ok


@contextlib.contextmanager
def service(args: argparse.Namespace) -> Iterator[str]:
    """The base URL to measure: --url, or a service started here (and stopped at the end)."""
    if args.url:
        args.service_pid = None
        yield args.url.rstrip("/")
        return
    port = free_port()
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "FANFINITY_HOST": "127.0.0.1",
        "FANFINITY_PORT": str(port),
        "FANFINITY_API_KEYS": API_KEY,
        "FANFINITY_MONGODB_URL": "memory://",
        # Derived from the connection budget (18,000 with 20,000 open files), and no per-address
        # cap: this one load client plays every fan, from 32 source addresses.
        "FANFINITY_STREAM_MAX_SUBSCRIBERS": "0",
        "FANFINITY_STREAM_MAX_PER_CLIENT": "0",
    }
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "fanfinity", "serve"]
    with running_process(command, env, f"{base}/health/ready", LOG_DIR / "service.log") as proc:
        args.service_pid = proc.pid
        yield base


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=18_000)
    parser.add_argument("--url", help="an already running service (default: start one)")
    parser.add_argument(
        "--clients", type=int, help=f"load-client processes (default: one per {PER_CLIENT:,})"
    )
    parser.add_argument(
        "--in-flight", type=int, default=1000, help="subscribers connecting at once, in all"
    )
    parser.add_argument("--addresses", type=int, default=32, help="127.0.0.N source addresses")
    parser.add_argument("--timeout", type=float, default=60.0, help="s to connect + first frame")
    parser.add_argument("--producer-s", type=float, default=6.0, help="s of producer, each phase")
    parser.add_argument("--producer-rate", type=float, default=50.0, help="producer POSTs a second")
    args = parser.parse_args()
    if not 1 <= args.subscribers <= 100_000 or not 1 <= args.addresses <= 250:
        parser.error("--subscribers must be 1 to 100,000 and --addresses 1 to 250")
    if not (0 < args.producer_s <= 60 and 0 < args.producer_rate <= 500):
        parser.error("--producer-s must be 0-60 and --producer-rate 0-500")
    args.clients = args.clients or math.ceil(args.subscribers / PER_CLIENT)
    limit = raise_open_files_limit()  # the service started below inherits it
    print(
        f"{args.subscribers} subscribers from {args.clients} client process(es) over "
        f"{args.addresses} source addresses, at most {args.in_flight} connecting at once; "
        f"open files per process: {limit}; logs: {LOG_DIR}"
    )
    with service(args) as base:
        rss_before = rss_mib(args.service_pid) if args.service_pid else math.nan
        result = asyncio.run(measure(base, args))
    return 0 if report(result, args, rss_before) else 1


if __name__ == "__main__":
    sys.exit(main())
