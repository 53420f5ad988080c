"""Benchmark: the service against a bare Litestar app on the same server settings, on loopback.

Starts both with uvicorn (1 worker, uvloop, httptools), drives them with wrk, and prints for ingest,
metric reads and reads during ingest: requests/s, p50/p99, errors and the service/bare ratio. Then
checks zero loss (acknowledged <= stored == counted), read latency against match size, and RSS.

    make bench                       # defaults finish in about a minute
    uv run python scripts/bench.py --duration 20 --connections 64
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WRK_DIR = ROOT / "scripts" / "wrk"
API_KEY = "bench-producer-key-0001"
MATCHES = 20
SIZES = (10, 10_000, 100_000)
LOG_DIR = Path(tempfile.mkdtemp(prefix="fanfinity-bench-"))


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    ok: int
    errors: int


def id_prefix() -> str:
    """Eight hex digits that make every wrk run's eventIds unique."""
    return uuid.uuid4().hex[:8]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(port: int, path: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):  # HTTPError too: not ready
            time.sleep(0.1)
    raise SystemExit(f"server on port {port} did not come up")


@contextmanager
def server(command: list[str], env: dict[str, str], port: int, probe: str) -> Iterator[int]:
    log = open(LOG_DIR / f"server-{port}.log", "w")  # noqa: SIM115
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=log)
    try:
        wait_until_up(port, probe)
        yield process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else float("nan")


def run_wrk(
    url: str, script: str, args: list[str], duration: float, connections: int, threads: int
) -> WrkResult:
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{int(duration)}s",
        "--latency",
        "--timeout",
        "5s",
        "-s",
        str(WRK_DIR / script),
        url,
        "--",
        *args,
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return parse_wrk(output)


def parse_wrk(output: str) -> WrkResult:
    """Read the RESULT line our Lua scripts print, and wrk's own rate and socket errors."""
    result = re.search(
        r"RESULT accepted=(\d+) failed=(\d+) p50_us=(\d+) p99_us=(\d+) requests=(\d+)", output
    )
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if result is None or rate is None:
        raise SystemExit(f"could not parse wrk output:\n{output}")
    socket_errors = sum(int(value) for value in errors.groups()) if errors else 0
    return WrkResult(
        requests_per_s=float(rate.group(1)),
        p50_ms=int(result.group(3)) / 1000,
        p99_ms=int(result.group(4)) / 1000,
        ok=int(result.group(1)),
        errors=int(result.group(2)) + socket_errors,
    )


def http_json(url: str, body: object | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310
        url,
        data=data,
        headers={"Content-Type": "application/json", "X-API-Key": API_KEY},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return json.loads(response.read())


def prometheus_value(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def counted_events(port: int, run_id: str) -> int:
    total = 0
    for match in range(MATCHES):
        try:
            body = http_json(f"http://127.0.0.1:{port}/api/matches/bench-{run_id}-{match}/metrics")
        except urllib.error.HTTPError:
            continue
        if not isinstance(body, dict):
            raise SystemExit(f"unexpected metrics body: {body!r}")
        total += int(body["totalEvents"])
    return total


def minute_timestamp(minute: int) -> str:
    return f"2025-05-10T{18 + minute // 60:02d}:{minute % 60:02d}:00Z"


def load_match(port: int, match_id: str, size: int) -> None:
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
        body = http_json(f"http://127.0.0.1:{port}/api/events/batch", events)
        if not isinstance(body, dict) or body.get("accepted") != chunk:
            raise SystemExit(f"batch not fully accepted: {body!r}")
        sent += chunk


def wait_for_total(port: int, match_id: str, total: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            body = http_json(f"http://127.0.0.1:{port}/api/matches/{match_id}/metrics")
            if isinstance(body, dict) and body["totalEvents"] == total:
                return
        except urllib.error.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{match_id} never reached {total} counted events")


def row(name: str, service: WrkResult, bare: WrkResult | None) -> str:
    ratio = f"{service.requests_per_s / bare.requests_per_s:.2f}" if bare else "-"
    bare_rate = f"{bare.requests_per_s:>9.0f}" if bare else f"{'-':>9}"
    bare_lat = f"{bare.p50_ms:>6.2f}/{bare.p99_ms:<6.2f}" if bare else f"{'-':>13}"
    return (
        f"| {name:<26} | {service.requests_per_s:>9.0f} "
        f"| {service.p50_ms:>6.2f}/{service.p99_ms:<6.2f}"
        f" | {service.errors:>6} | {bare_rate} | {bare_lat} | {ratio:>5} |"
    )


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
    uvicorn_options = [
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
        "--workers",
        "1",
    ]
    bare_command = [
        sys.executable,
        "-m",
        "uvicorn",
        "bare_app:app",
        "--app-dir",
        "scripts",
        "--port",
        str(bare_port),
        *uvicorn_options,
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

    print(f"machine: {os.cpu_count()} cores, {platform_summary()}")
    print(f"wrk: {threads} thread(s), {connections} connections, {duration:g}s per run")
    print(f"server logs: {LOG_DIR}\n")
    with server(bare_command, base_env, bare_port, "/api/matches/m-1/metrics"):
        run_wrk(bare_url, "ingest.lua", ["warm", API_KEY, id_prefix()], 2, connections, threads)
        bare_ingest = run_wrk(
            bare_url, "ingest.lua", [run_id, API_KEY, id_prefix()], duration, connections, threads
        )
        bare_read = run_wrk(bare_url, "read.lua", [read_path], duration, connections, threads)
        bare_mixed_read = mixed(bare_url, run_id + "x", read_path, duration, connections, threads)[
            1
        ]

    with server(service_command, service_env, service_port, "/health/ready") as pid:
        rss_start = rss_mib(pid)
        run_wrk(
            service_url,
            "ingest.lua",
            ["warm" + run_id, API_KEY, id_prefix()],
            2,
            connections,
            threads,
        )
        service_ingest = run_wrk(
            service_url,
            "ingest.lua",
            [run_id, API_KEY, id_prefix()],
            duration,
            connections,
            threads,
        )
        wait_for_total_sum(service_port, run_id, service_ingest.ok)
        service_read = run_wrk(service_url, "read.lua", [read_path], duration, connections, threads)
        mixed_ingest, service_mixed_read = mixed(
            service_url, run_id + "m", read_path, duration, connections, threads
        )
        rss_after_load = rss_mib(pid)
        loss = zero_loss_check(service_port, run_id, service_ingest.ok, mixed_ingest.ok)
        size_rows = (
            [] if args.skip_sizes else size_scaling(service_port, service_url, run_id, threads)
        )
        rss_end = rss_mib(pid)

    results["ingest POST /api/events"] = (service_ingest, bare_ingest)
    results["read GET .../metrics"] = (service_read, bare_read)
    results["read during ingest"] = (service_mixed_read, bare_mixed_read)
    results["ingest during reads"] = (mixed_ingest, None)
    print(
        "| run                        | service/s | p50/p99 ms    | errors "
        "|    bare/s | bare p50/p99  | ratio |"
    )
    print(
        "|----------------------------|-----------|---------------|--------|-----------|---------------|-------|"
    )
    for name, (service, bare) in results.items():
        print(row(name, service, bare))
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


def mixed(
    url: str, run_id: str, read_path: str, duration: float, connections: int, threads: int
) -> tuple[WrkResult, WrkResult]:
    """Half the connections post events while the other half read metrics."""
    half = max(1, connections // 2)
    ingest_command = [
        "wrk",
        f"-t{threads}",
        f"-c{half}",
        f"-d{int(duration)}s",
        "--latency",
        "-s",
        str(WRK_DIR / "ingest.lua"),
        url,
        "--",
        run_id,
        API_KEY,
        id_prefix(),
    ]
    ingest = subprocess.Popen(ingest_command, stdout=subprocess.PIPE, text=True)
    read = run_wrk(url, "read.lua", [read_path], duration, half, threads)
    output, _ = ingest.communicate()
    return parse_wrk(output), read


def wait_for_total_sum(port: int, run_id: str, at_least: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and counted_events(port, run_id) < at_least:
        time.sleep(0.2)


def zero_loss_check(port: int, run_id: str, acknowledged: int, mixed_acknowledged: int) -> str:
    """acknowledged (wrk saw 202) <= stored (server's durable inserts) == counted (summaries)."""
    stored_before = prometheus_value(port, "fanfinity_events_ingested_total")
    deadline = time.monotonic() + 60
    counted = 0
    while time.monotonic() < deadline:
        counted = counted_events(port, run_id) + counted_events(port, run_id + "m")
        counted += counted_events(port, "warm" + run_id)
        if counted >= stored_before:
            break
        time.sleep(0.2)
    stored = prometheus_value(port, "fanfinity_events_ingested_total")
    acked = acknowledged + mixed_acknowledged
    verdict = "OK" if acked <= stored and counted == stored else "LOSS OR DOUBLE COUNT"
    return (
        f"zero loss: acknowledged {acked} (plus warm-up), stored {stored:.0f} (incl. warm-up), "
        f"counted {counted} -> {verdict}"
    )


def size_scaling(port: int, url: str, run_id: str, threads: int) -> list[str]:
    lines = ["\nmetric reads against match size (64 connections, 5 s each):"]
    baseline = None
    for size in SIZES:
        match_id = f"size-{run_id}-{size}"
        load_match(port, match_id, size)
        wait_for_total(port, match_id, size)
        result = run_wrk(url, "read.lua", [f"/api/matches/{match_id}/metrics"], 5, 64, threads)
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


if __name__ == "__main__":
    sys.exit(main())
