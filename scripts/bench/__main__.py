"""Benchmark: the service against a bare Litestar app on the same server settings, on loopback.

Starts both with uvicorn (1 worker, uvloop, httptools), drives them with wrk, and prints for ingest,
metric reads and reads during ingest: requests/s, p50/p99, errors and the service/bare ratio, the
bare app's figures being the mean of a run just before and one just after the service's, and each
server's CPU per request over the same runs. Then
checks zero loss (acknowledged <= stored == counted, at one settled moment), read latency against
match size, and RSS.

    make bench                       # defaults finish in about two minutes
    uv run python -m scripts.bench --duration 20 --connections 64
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from scripts.bench.wrk import WrkResult, id_prefix, mean_of, mixed, run_wrk
from scripts.bench.zero_loss import Reading, judge, wait_until_settled
from scripts.helpers import (
    counted_events,
    cpu_seconds,
    free_port,
    http_request,
    metric_total,
    rss_mib,
    running_process,
    scrape,
)

API_KEY = "bench-producer-key-0001"
MATCHES = 20  # ingest.lua spreads its events over this many matches
SIZES = (10, 10_000, 100_000)
LOG_DIR = Path(tempfile.mkdtemp(prefix="fanfinity-bench-"))
UVICORN_OPTIONS = [
    *("--loop", "uvloop", "--http", "httptools", "--no-access-log"),
    *("--log-level", "warning", "--workers", "1"),
]


def minute_timestamp(minute: int) -> str:
    return f"2025-05-10T{18 + minute // 60:02d}:{minute % 60:02d}:00Z"


def load_match(base: str, match_id: str, size: int) -> None:
    """Post `size` events for one match through the batch endpoint, spread over 120 minutes."""
    sent = 0
    while sent < size:
        chunk = min(500, size - sent)
        events = [
            {
                "eventId": str(uuid.uuid4()),
                "matchId": match_id,
                "eventType": "corner",
                "timestamp": minute_timestamp((sent + i) % 120),
                "teamId": f"team-{(sent + i) % 2}",
            }
            for i in range(chunk)
        ]
        status, body = http_request(f"{base}/api/events/batch", events, API_KEY, timeout_s=30)
        answer = json.loads(body) if body else None
        if status != 200 or not isinstance(answer, dict) or answer.get("accepted") != chunk:
            raise SystemExit(f"batch not fully accepted: {status} {body[:300]!r}")
        sent += chunk


def wait_for_total(base: str, match_ids: list[str], at_least: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and counted_events(base, match_ids) < at_least:
        time.sleep(0.2)


def run_match_ids(run_id: str) -> list[str]:
    """Every match a run's wrk scripts post to: warm-up, ingest and ingest during reads."""
    return [
        f"bench-{prefix}{run_id}{suffix}-{match}"
        for prefix, suffix in (("warm", ""), ("", ""), ("", "m"))
        for match in range(MATCHES)
    ]


def zero_loss_check(base: str, run_id: str, acknowledged: int) -> str:
    """acknowledged (wrk saw 202) <= stored (durable inserts) == counted (summaries)."""
    match_ids = run_match_ids(run_id)

    def read() -> Reading:
        stored = metric_total(scrape(base), "fanfinity_events_ingested_total")
        return Reading(stored=round(stored), counted=counted_events(base, match_ids))

    verdict = judge(acknowledged, wait_until_settled(read))
    return f"zero loss (stored and counted include the warm-up): {verdict.text}"


def with_server_cpu(pid: int, run: Callable[[], tuple[WrkResult, ...]]) -> tuple[WrkResult, ...]:
    """`run`'s results, each with the CPU the server (`pid`) spent per request during the run
    (for loads run at once, per request of all of them together)."""
    before = cpu_seconds(pid)
    results = run()
    requests = max(sum(result.requests for result in results), 1)
    per_request = (cpu_seconds(pid) - before) * 1e6 / requests
    return tuple(replace(result, server_cpu_us=per_request) for result in results)


HEADER = (
    "| run                        | service/s | p50/p99 ms    | errors "
    "|    bare/s | bare p50/p99  | ratio | CPU us/req service, bare, ratio |"
)
RULE = (
    "|----------------------------|-----------|---------------|--------"
    "|-----------|---------------|-------|---------------------------------|"
)


def row(name: str, service: WrkResult, bare: WrkResult | None, same_mix: bool = True) -> str:
    """One table line. `same_mix` is false when the service and bare answered different mixes of
    requests (reads during ingest: the service's reads are faster than its writes, bare's are
    not), so their CPU per request cannot be compared."""
    ratio = f"{service.requests_per_s / bare.requests_per_s:.2f}" if bare else "-"
    bare_rate = f"{bare.requests_per_s:>9.0f}" if bare else f"{'-':>9}"
    bare_lat = f"{bare.p50_ms:>6.2f}/{bare.p99_ms:<6.2f}" if bare else f"{'-':>13}"
    if bare:  # the ratio: the service's throughput against bare's at equal CPU
        cpu = f"{service.server_cpu_us:.0f}, {bare.server_cpu_us:.0f}, "
        cpu += f"{bare.server_cpu_us / service.server_cpu_us:.2f}" if same_mix else "-"
    else:
        cpu = f"{service.server_cpu_us:.0f}, -, -"
    return (
        f"| {name:<26} | {service.requests_per_s:>9.0f} "
        f"| {service.p50_ms:>6.2f}/{service.p99_ms:<6.2f}"
        f" | {service.errors:>6} | {bare_rate} | {bare_lat} | {ratio:>5} | {cpu:<31} |"
    )


def size_scaling(base: str, run_id: str, threads: int) -> list[str]:
    lines = ["\nmetric reads against match size (64 connections, 5 s each):"]
    baseline = None
    for size in SIZES:
        match_id = f"size-{run_id}-{size}"
        load_match(base, match_id, size)
        wait_for_total(base, [match_id], size, timeout_s=120)
        result = run_wrk(base, "read.lua", [f"/api/matches/{match_id}/metrics"], 5, 64, threads)
        baseline = baseline or result.p50_ms
        lines.append(
            f"  {size:>7} events: {result.requests_per_s:>7.0f} req/s, p50 {result.p50_ms:.2f} ms, "
            f"p99 {result.p99_ms:.2f} ms, errors {result.errors}, p50 vs 10 events "
            f"{result.p50_ms / baseline:.2f}x"
        )
    return lines


def platform_summary() -> str:
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = "unknown CPU"
    return f"{model}, Python {sys.version.split()[0]}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (1 leaves a core)")
    parser.add_argument("--skip-sizes", action="store_true", help="skip the 10/10^4/10^5 reads")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (make bench does it)")
    run_id = uuid.uuid4().hex[:8]
    base_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    bare_port, service_port = free_port(), free_port()
    bare_command = [
        *(sys.executable, "-m", "uvicorn", "scripts.bench.bare_app:app"),
        *("--port", str(bare_port), *UVICORN_OPTIONS),
    ]
    service_env = {
        **base_env,
        "FANFINITY_PORT": str(service_port),
        "FANFINITY_API_KEYS": API_KEY,
        "FANFINITY_MONGODB_URL": "memory://",
    }
    service_command = [sys.executable, "-m", "fanfinity", "serve"]
    duration, connections, threads = args.duration, args.connections, args.threads
    bare_url, service_url = f"http://127.0.0.1:{bare_port}", f"http://127.0.0.1:{service_port}"
    read_path = f"/api/matches/bench-{run_id}-1/metrics"
    results: dict[str, tuple[WrkResult, WrkResult | None]] = {}

    def ingest_args(run: str) -> list[str]:
        return [run, API_KEY, id_prefix()]

    print(f"machine: {os.cpu_count()} cores, {platform_summary()}")
    print(f"wrk: {threads} thread(s), {connections} connections, {duration:g}s per run")
    print(f"server logs: {LOG_DIR}\n")
    bare_ready = f"{bare_url}/api/matches/m-1/metrics"
    service_ready = f"{service_url}/health/ready"
    with (
        running_process(bare_command, base_env, bare_ready, LOG_DIR / "bare.log") as bare_process,
        running_process(
            service_command, service_env, service_ready, LOG_DIR / "service.log"
        ) as process,
    ):
        rss_start = rss_mib(process.pid)

        def measured(pid: int, url: str, script: str, wrk_args: list[str]) -> WrkResult:
            return with_server_cpu(
                pid, lambda: (run_wrk(url, script, wrk_args, duration, connections, threads),)
            )[0]

        def measured_mixed(pid: int, url: str, wrk_args: list[str]) -> tuple[WrkResult, ...]:
            return with_server_cpu(
                pid, lambda: mixed(url, wrk_args, read_path, duration, connections, threads)
            )

        def bare_ingest() -> WrkResult:
            return measured(bare_process.pid, bare_url, "ingest.lua", ingest_args(run_id))

        def bare_read() -> WrkResult:
            return measured(bare_process.pid, bare_url, "read.lua", [read_path])

        def bare_mixed_read() -> WrkResult:
            return measured_mixed(bare_process.pid, bare_url, ingest_args(run_id + "x"))[1]

        # The bare app runs just before and just after each service run, and the ratio is to the
        # mean of the two: this VM's speed drifts by tens of per cent within a minute, and a
        # baseline measured a minute earlier compared the drift, not the service.
        run_wrk(bare_url, "ingest.lua", ingest_args("warm"), 2, connections, threads)
        run_wrk(service_url, "ingest.lua", ingest_args("warm" + run_id), 2, connections, threads)
        bare_ingest_runs = [bare_ingest()]
        service_ingest = measured(process.pid, service_url, "ingest.lua", ingest_args(run_id))
        bare_ingest_runs.append(bare_ingest())
        wait_for_total(service_url, run_match_ids(run_id), service_ingest.ok, timeout_s=60)
        bare_read_runs = [bare_read()]
        service_read = measured(process.pid, service_url, "read.lua", [read_path])
        bare_read_runs.append(bare_read())
        bare_mixed_runs = [bare_mixed_read()]
        mixed_ingest, service_mixed_read = measured_mixed(
            process.pid, service_url, ingest_args(run_id + "m")
        )
        bare_mixed_runs.append(bare_mixed_read())
        rss_after_load = rss_mib(process.pid)
        loss = zero_loss_check(service_url, run_id, service_ingest.ok + mixed_ingest.ok)
        size_rows = [] if args.skip_sizes else size_scaling(service_url, run_id, threads)
        rss_end = rss_mib(process.pid)

    results["ingest POST /api/events"] = (service_ingest, mean_of(bare_ingest_runs))
    results["read GET .../metrics"] = (service_read, mean_of(bare_read_runs))
    results["read during ingest"] = (service_mixed_read, mean_of(bare_mixed_runs))
    results["ingest during reads"] = (mixed_ingest, None)
    print(HEADER)
    print(RULE)
    for name, (service, bare) in results.items():
        print(row(name, service, bare, same_mix=name != "read during ingest"))
    drift = ", ".join(
        f"{name} {runs[0].requests_per_s:.0f} / {runs[1].requests_per_s:.0f}"
        for name, runs in (
            ("ingest", bare_ingest_runs),
            ("read", bare_read_runs),
            ("during ingest", bare_mixed_runs),
        )
    )
    print(f"bare/s is the mean of a run just before and one just after the service's: {drift}")
    print(
        "CPU us/req: each server's user + system CPU over the run (/proc/<pid>/stat) per request;"
        " bare's over the service's is their throughput ratio at equal CPU"
    )
    print()
    print(loss)
    for line in size_rows:
        print(line)
    print(
        f"\nservice RSS: {rss_start:.0f} MiB at start, "
        f"{rss_after_load:.0f} MiB after the load runs, "
        f"{rss_end:.0f} MiB at the end (the embedded engine keeps every event in memory)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
