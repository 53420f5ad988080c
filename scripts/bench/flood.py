"""One match flooded by a hostile producer: its body size, its read latency, and how fast the
other matches are still counted meanwhile (issue 14's figures).

Starts its own service on the embedded engine, posts 60 batches of 500 events on distinct minutes
and team ids to one match (30,000 events), and while they land posts one event a second to other
matches and times each until its metrics count it. Then reads the flooded match N times.

    python -m scripts.bench.flood [--reads 300]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from scripts.helpers import free_port, http_request, percentile, running_process

API_KEY = "local-dev-producer-key"
FLOODED = "flooded-match"
BATCHES, BATCH_SIZE = 60, 500


def event(match_id: str, minute: datetime, team: str) -> dict[str, str]:
    return {
        "eventId": str(uuid.uuid4()),
        "matchId": match_id,
        "eventType": "corner",
        "timestamp": minute.isoformat().replace("+00:00", "Z"),
        "teamId": team,
    }


def flood(base: str) -> float:
    """Post the flood; the seconds it took."""
    start = datetime.now(UTC) - timedelta(minutes=BATCHES * BATCH_SIZE)
    began = time.perf_counter()
    for batch in range(BATCHES):
        items = [
            event(FLOODED, start + timedelta(minutes=n), f"team-{n}")
            for n in range(batch * BATCH_SIZE, (batch + 1) * BATCH_SIZE)
        ]
        status, body = http_request(f"{base}/api/events/batch", items, API_KEY, timeout_s=30)
        if status != 200 or json.loads(body)["accepted"] != BATCH_SIZE:
            raise SystemExit(f"batch {batch} answered {status}: {body[:200]!r}")
    return time.perf_counter() - began


def time_to_count(base: str, match_id: str, deadline_s: float = 30.0) -> float:
    """Post one event to `match_id` and poll until its metrics count it; seconds."""
    posted = time.perf_counter()
    status, body = http_request(
        f"{base}/api/events", event(match_id, datetime.now(UTC), "home"), API_KEY
    )
    if status != 202:
        raise SystemExit(f"POST for {match_id} answered {status}: {body[:200]!r}")
    while time.perf_counter() - posted < deadline_s:
        status, _ = http_request(f"{base}/api/matches/{match_id}/metrics")
        if status == 200:
            return time.perf_counter() - posted
        time.sleep(0.02)
    return float("inf")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reads", type=int, default=300, help="sequential reads of the flooded match"
    )
    args = parser.parse_args()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "FANFINITY_PORT": str(port),
        "FANFINITY_API_KEYS": API_KEY,
        "FANFINITY_MONGODB_URL": "memory://",
    }
    log = Path(tempfile.mkdtemp(prefix="fanfinity-flood-")) / "service.log"
    command = [sys.executable, "-m", "fanfinity", "serve"]
    with running_process(command, env, f"{base}/health/ready", log):
        others: list[float] = []
        done = threading.Event()

        def other_matches() -> None:
            n = 0
            while not done.is_set():
                others.append(time_to_count(base, f"other-match-{n}"))
                n += 1
                done.wait(1.0)

        watcher = threading.Thread(target=other_matches)
        watcher.start()
        took = flood(base)
        done.set()
        watcher.join()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, body = http_request(f"{base}/api/matches/{FLOODED}/metrics")
            if status == 200 and json.loads(body)["totalEvents"] == BATCHES * BATCH_SIZE:
                break
            time.sleep(0.2)
        metrics = json.loads(body)
        reads = []
        for _ in range(args.reads):
            began = time.perf_counter()
            http_request(f"{base}/api/matches/{FLOODED}/metrics")
            reads.append((time.perf_counter() - began) * 1000)
    print(f"flood: {BATCHES * BATCH_SIZE} events in {BATCHES} batches, posted in {took:.1f} s")
    print(
        f"flooded match: body {len(body)} bytes, {len(metrics['eventsByTeam'])} teams, "
        f"{len(metrics['eventsPerMinute'])} minutes, overflow {metrics['overflow']}"
    )
    print(
        f"reads of it: n={len(reads)} p50 {percentile(reads, 50):.2f} ms, "
        f"p95 {percentile(reads, 95):.2f} ms, max {max(reads):.2f} ms"
    )
    print(
        f"other matches during the flood: n={len(others)}, counted after p50 "
        f"{percentile(others, 50) * 1000:.0f} ms, max {max(others) * 1000:.0f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
