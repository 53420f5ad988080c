"""Match-day load test: run locustfile.py headless, summarise per phase, check zero loss, chart.

Locust (pinned, through uvx) and matplotlib (through ``uv run --with``) stay out of uv.lock:

    uv run --frozen --with matplotlib==3.11.2 python -m scripts.loadtest --start-service

`--start-service` starts ``uv run --frozen fanfinity serve`` on a free loopback port (embedded
engine, FANFINITY_API_KEYS set to --api-key), waits for /health/ready and stops it with SIGTERM at
the end. Without it the target is --host (default http://127.0.0.1:8000, what ``make run`` serves,
with its key ``local-dev-producer-key``); only an explicit --host leaves loopback.

Steps: run the scenario (one match_start per match, steady, goal spike x10, steady again; about
100 s by default), then wait for the aggregator and compare the events
producers saw acknowledged (202) with the sum of `totalEvents` over the matches. It prints a
per-phase table (requests/s, p50/p95/p99, errors for ingest and reads, locust's and the service's
CPU) and writes summary.json plus locust's CSVs to --out-dir, the chart to docs/images/loadtest.png.
Exit status: 0, or 1 when an acknowledged event is missing from the counts (or counted twice).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scripts.helpers import (
    ROOT,
    counted_events,
    free_port,
    metric_total,
    running_process,
    scrape,
    wait_until_ready,
)
from scripts.loadtest.chart import LOCUST_VERSION, chart
from scripts.loadtest.cpu import CpuSampler
from scripts.loadtest.stats import (
    PHASES,
    cpu_per_phase,
    failures,
    per_phase_stats,
    phase_windows,
    server_side,
    time_series,
)

HERE = Path(__file__).resolve().parent
DEFAULT_HOST = "http://127.0.0.1:8000"
DEFAULT_KEY = "local-dev-producer-key"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


# ---------------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    target = parser.add_argument_group("target")
    target.add_argument("--host", help=f"base URL of the service (default {DEFAULT_HOST})")
    target.add_argument("--api-key", default=DEFAULT_KEY, help="producer X-API-Key")
    target.add_argument(
        "--start-service",
        action="store_true",
        help="start `uv run --frozen fanfinity serve` (embedded engine) on a free port and stop it",
    )
    scenario = parser.add_argument_group("scenario")
    scenario.add_argument("--duration", type=float, default=100.0, help="seconds of load")
    scenario.add_argument("--spike-at", type=float, default=30.0, help="when the goal lands (s)")
    scenario.add_argument("--spike-duration", type=float, default=30.0)
    scenario.add_argument(
        "--spike-factor", type=int, default=10, help="readers and events/s x this in the spike"
    )
    scenario.add_argument("--matches", type=int, default=4)
    scenario.add_argument("--producers", type=int, default=8, help="producer users")
    scenario.add_argument(
        "--producer-rate", type=float, default=2.5, help="events/s per producer when steady"
    )
    scenario.add_argument("--readers", type=int, default=100, help="dashboard users when steady")
    scenario.add_argument("--read-interval", type=float, default=1.0, help="s between reads")
    output = parser.add_argument_group("output")
    output.add_argument("--out-dir", type=Path, help="default .cache/loadtest/<run id>")
    output.add_argument("--chart", type=Path, default=ROOT / "docs" / "images" / "loadtest.png")
    output.add_argument("--no-chart", action="store_true")
    output.add_argument(
        "--settle", type=float, default=20.0, help="max s to wait for the aggregator at the end"
    )
    args = parser.parse_args(argv)
    problems = []
    if args.start_service and args.host:
        problems.append("--start-service picks its own loopback port: leave out --host")
    if not 5 <= args.duration <= 1800:
        problems.append("--duration must be 5 to 1800 s (the run is bounded)")
    if args.spike_at < 0 or args.spike_duration <= 0:
        problems.append("--spike-at must be >= 0 and --spike-duration > 0")
    if args.spike_at + args.spike_duration > args.duration:
        problems.append("the spike must end before --duration")
    if not 1 <= args.spike_factor <= 50:
        problems.append("--spike-factor must be 1 to 50")
    peak_users = args.producers + args.readers * args.spike_factor
    if peak_users > 5000 or args.producers < 1 or args.readers < 1 or args.matches < 1:
        problems.append("need >= 1 producer, reader and match, and <= 5000 users at the peak")
    if problems:
        parser.error("; ".join(problems))
    explicit_host = args.host is not None
    args.host = (args.host or DEFAULT_HOST).rstrip("/")
    parsed = urllib.parse.urlsplit(args.host)
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        parser.error(f"--host must be an http(s) URL, got {args.host!r}")
    if parsed.hostname not in LOOPBACK and not explicit_host:  # the default must stay loopback
        parser.error("only loopback targets unless --host is given explicitly")
    if parsed.hostname not in LOOPBACK:
        print(f"warning: loading a non-loopback target {args.host} (explicit --host)")
    return args


# ---------------------------------------------------------------------------------------------
# processes


@contextmanager
def service(args: argparse.Namespace, out_dir: Path) -> Iterator[subprocess.Popen[bytes] | None]:
    """Start `fanfinity serve` on a free port when asked; SIGTERM it on the way out."""
    if not args.start_service:
        wait_until_ready(f"{args.host}/health/ready", timeout_s=10)
        yield None
        return
    port = free_port()
    args.host = f"http://127.0.0.1:{port}"
    env = clean_env()
    env.update(
        FANFINITY_API_KEYS=args.api_key,
        FANFINITY_PORT=str(port),
        FANFINITY_HOST="127.0.0.1",
        FANFINITY_MONGODB_URL="memory://",
    )
    command = ["uv", "run", "--frozen", "fanfinity", "serve"]
    ready = f"{args.host}/health/ready"
    with running_process(command, env, ready, out_dir / "service.log") as process:
        yield process


def clean_env() -> dict[str, str]:
    """The environment without the `uv run --with` overlay, so child `uv` calls pick their own."""
    return {key: value for key, value in os.environ.items() if key not in {"VIRTUAL_ENV"}}


def read_counters(path: Path) -> dict[str, Any]:
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def run_locust(
    args: argparse.Namespace, out_dir: Path, run_id: str, service_pid: int | None
) -> tuple[int, CpuSampler, dict[str, dict[Any, float]]]:
    """Run the scenario headless; sample CPU every second and /metrics when a phase starts."""
    ack_file = out_dir / "producers.json"
    env = clean_env()
    env.update(
        LOADTEST_API_KEY=args.api_key,
        LOADTEST_RUN_ID=run_id,
        LOADTEST_ACK_FILE=str(ack_file),
        LOADTEST_MATCHES=str(args.matches),
        LOADTEST_PRODUCERS=str(args.producers),
        LOADTEST_PRODUCER_RATE=str(args.producer_rate),
        LOADTEST_READERS=str(args.readers),
        LOADTEST_READ_INTERVAL=str(args.read_interval),
        LOADTEST_SPIKE_AT=str(args.spike_at),
        LOADTEST_SPIKE_DURATION=str(args.spike_duration),
        LOADTEST_SPIKE_FACTOR=str(args.spike_factor),
        LOADTEST_DURATION=str(args.duration),
    )
    command = [
        "uv",
        "tool",
        "run",
        "--from",
        f"locust=={LOCUST_VERSION}",
        "locust",
        "-f",
        str(HERE / "locustfile.py"),
        "--headless",
        "--host",
        args.host,
        "--csv",
        str(out_dir / "locust"),
        "--csv-full-history",
        "--only-summary",
        "--stop-timeout",
        "10",
        "--loglevel",
        "INFO",
    ]
    (out_dir / "locust.command").write_text(" ".join(command) + "\n")
    log = (out_dir / "locust.log").open("wb")
    locust = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    roots = {"locust": locust.pid}
    if service_pid is not None:
        roots["service"] = service_pid
    sampler = CpuSampler(roots)
    scrapes: dict[str, dict[Any, float]] = {}
    deadline = time.monotonic() + args.duration + 120  # install + start + stop-timeout + slack
    next_sample = time.monotonic()
    try:
        while locust.poll() is None:
            if time.monotonic() > deadline:
                print("locust overran its time bound: interrupting it", file=sys.stderr)
                locust.send_signal(signal.SIGINT)
                locust.wait(timeout=30)
                break
            if time.monotonic() >= next_sample:
                sampler.sample()
                next_sample += 1.0
            for phase in read_counters(ack_file).get("phase_started_at", {}):
                if phase not in scrapes:
                    scrapes[phase] = scrape(args.host)
            time.sleep(0.2)
    finally:
        if locust.poll() is None:
            locust.kill()
            locust.wait()
        log.close()
    scrapes["end"] = scrape(args.host)
    return locust.returncode, sampler, scrapes


# ---------------------------------------------------------------------------------------------
# seeding and zero loss


def match_ids(run_id: str, matches: int) -> list[str]:
    return [f"loadtest-{run_id}-m{index}" for index in range(matches)]


def zero_loss(
    host: str, api_key: str, ids: list[str], acknowledged: int, unresolved: int, settle_s: float
) -> dict[str, Any]:
    """Wait until the counts reach the acknowledged events and stop moving, then compare."""
    started = time.monotonic()
    counted, previous, stable_since = 0, -1, time.monotonic()
    while time.monotonic() - started < settle_s:
        counted = counted_events(host, ids, api_key)
        if counted != previous:
            previous, stable_since = counted, time.monotonic()
        elif counted >= acknowledged and time.monotonic() - stable_since >= 1.0:
            break
        time.sleep(0.3)
    if counted < acknowledged:
        verdict = "LOSS: acknowledged events are missing from the counts"
    elif counted > acknowledged + unresolved:
        verdict = "DOUBLE COUNT: more events counted than were sent"
    elif counted == acknowledged:
        verdict = "OK: every acknowledged event is counted, once"
    else:
        verdict = (
            f"OK: every acknowledged event is counted; {counted - acknowledged} of the "
            f"{unresolved} unresolved (given-up or in-flight) events were stored too"
        )
    return {
        "acknowledged": acknowledged,
        "counted": counted,
        "unresolved": unresolved,
        "waited_s": round(time.monotonic() - started, 1),
        "ok": acknowledged <= counted <= acknowledged + unresolved,
        "verdict": verdict,
    }


# ---------------------------------------------------------------------------------------------
# report


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def table(summary: dict[str, Any]) -> str:
    lines = [
        "| phase  | window   | ingest req/s | p50/p95/p99 ms | err "
        "| reads req/s | p50/p95/p99 ms | err | locust CPU avg/max | service CPU avg/max "
        "| other CPU avg |",
        "|--------|----------|--------------|----------------|-----"
        "|-------------|----------------|-----|--------------------|---------------------"
        "|---------------|",
    ]
    for phase in PHASES:
        data = summary["phases"][phase]
        cells = [f"| {phase:<6} | {data['from_s']:>3.0f}-{data['to_s']:<3.0f}s "]
        for kind, width in (("ingest", 12), ("reads", 11)):
            item = data[kind]
            latency = f"{fmt(item['p50_ms'])}/{fmt(item['p95_ms'])}/{fmt(item['p99_ms'])}"
            cells.append(
                f"| {item['requests_per_s']:>{width}.1f} | {latency:>14} | {item['errors']:>3} "
            )
        cpus = data.get("cpu", {})
        for name, width in (("locust", 18), ("service", 19)):
            cpu = cpus.get(name)
            text = f"{cpu['mean_pct']:.0f}% / {cpu['max_pct']:.0f}%" if cpu else "-"
            cells.append(f"| {text:>{width}} ")
        other = cpus.get("other")
        cells.append(f"| {(str(round(other['mean_pct'])) + '%') if other else '-':>13} |")
        lines.append("".join(cells))
    return "\n".join(lines)


def exit_meaning(code: int | None) -> str:
    if code is None:
        return "not started here"
    if code in (0, 143, -15):  # uvicorn re-raises SIGTERM after its graceful shutdown
        return f"{code} (clean, after SIGTERM)"
    return f"{code} (unexpected)"


def log_findings(log_path: Path) -> dict[str, Any]:
    if not log_path.exists():
        return {}
    lines = log_path.read_text(errors="replace").splitlines()
    serious = [line for line in lines if " ERROR " in line or " CRITICAL " in line]
    warnings = [line for line in lines if " WARNING " in line]
    return {
        "errors": len(serious),
        "warnings": len(warnings),
        "first_errors": serious[:5],
        "first_warnings": warnings[:5],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_id = uuid.uuid4().hex[:8]
    out_dir = (args.out_dir or ROOT / ".cache" / "loadtest" / run_id).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    wall_start = time.monotonic()
    ids = match_ids(run_id, args.matches)
    with service(args, out_dir) as process:
        print(f"target {args.host} (run {run_id}); output in {out_dir}")
        print(
            f"load: {args.producers} producers x {args.producer_rate:g} events/s and "
            f"{args.readers} dashboards reading every {args.read_interval:g} s; goal at "
            f"{args.spike_at:g} s: x{args.spike_factor} events/s and readers "
            f"({args.readers * args.spike_factor}) until "
            f"{args.spike_at + args.spike_duration:g} s; {args.duration:g} s in all"
        )
        returncode, sampler, scrapes = run_locust(
            args, out_dir, run_id, process.pid if process else None
        )
        ack_path = out_dir / "producers.json"
        if not ack_path.exists():
            raise SystemExit(f"locust exited {returncode} with no producer counts: see {out_dir}")
        producers = json.loads(ack_path.read_text())
        started_at = float(producers["started_at"])
        windows = phase_windows(args, producers)
        loss = zero_loss(
            args.host,
            args.api_key,
            ids,
            producers["acknowledged"] + producers["seeded"],
            producers["unresolved"],
            args.settle,
        )
        stored = metric_total(scrape(args.host), "fanfinity_events_ingested_total")
    summary: dict[str, Any] = {
        "run_id": run_id,
        "host": args.host,
        "started_service": args.start_service,
        "locust_version": LOCUST_VERSION,
        "machine_cores": os.cpu_count(),
        "plan": producers["plan"],
        "phases": per_phase_stats(out_dir, windows),
        "producers": {k: v for k, v in producers.items() if k != "plan"},
        "zero_loss": loss,
        "failures": failures(out_dir),
        "server_side": server_side(scrapes),
        "locust_exit_code": returncode,
        "locust_cpu_warning": "CPU usage above" in (out_dir / "locust.log").read_text(),
        "wall_s": round(time.monotonic() - wall_start, 1),
    }
    if args.start_service:
        summary["events_stored_by_service"] = stored
        summary["service_exit_code"] = process.returncode if process else None
        summary["service_exit"] = exit_meaning(process.returncode if process else None)
        summary["service_log"] = log_findings(out_dir / "service.log")
    for phase, cpu in cpu_per_phase(sampler, started_at, windows).items():
        summary["phases"][phase]["cpu"] = cpu
    series = time_series(out_dir)
    if not args.no_chart:
        problem = chart(series, args, windows, summary, args.chart)
        summary["chart"] = problem or str(args.chart)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print_report(summary, out_dir)
    return 0 if loss["ok"] else 1


def print_report(summary: dict[str, Any], out_dir: Path) -> None:
    print()
    print(table(summary))
    print(
        "\n(req/s = requests in the phase / its length, retries included; p50/p95/p99 from "
        "locust, client side, ms; err = failed requests; CPU: 100% = one core, of the "
        f"{summary['machine_cores']} here; other = the rest of the machine)"
    )
    producers, loss = summary["producers"], summary["zero_loss"]
    print(
        f"\nproducers: {producers['sent']} events sent, {producers['acknowledged']} acknowledged "
        f"(202), {producers['retries']} retries ({producers['replayed']} idempotent replays), "
        f"{producers['gave_up']} given up, {producers['rejected']} refused, "
        f"{producers.get('interrupted', 0)} still retrying at the end"
    )
    print(
        f"zero loss: acknowledged {loss['acknowledged']} (incl. {summary['plan']['matches']} "
        f"match_start seeds) vs counted {loss['counted']} after {loss['waited_s']} s "
        f"-> {loss['verdict']}"
    )
    if "events_stored_by_service" in summary:
        print(f"service stored {summary['events_stored_by_service']:.0f} events (its /metrics)")
    for item in summary["failures"]:
        print(f"failure: {item['occurrences']} x {item['name']}: {item['error']}")
    for phase, routes in summary["server_side"].items():
        parts = []
        for kind, data in routes.items():
            statuses = ", ".join(f"{code}: {count}" for code, count in data["statuses"].items())
            parts.append(
                f"{kind} {{{statuses}}} p50<={fmt(data['p50_ms_le'], 1)} "
                f"p99<={fmt(data['p99_ms_le'], 1)} ms"
            )
        print(f"server side {phase:<6}: " + "; ".join(parts))
    if summary["locust_cpu_warning"]:
        print("locust warned that its CPU usage went above 90%: it may have been the bottleneck")
    log = summary.get("service_log") or {}
    if log:
        print(
            f"service log: {log['errors']} error lines, {log['warnings']} warning lines; "
            f"exit: {summary.get('service_exit')}"
        )
        for line in log["first_errors"][:3]:
            print(f"  {line[:200]}")
    print(f"\nsummary: {out_dir / 'summary.json'}; chart: {summary.get('chart', 'skipped')}")
    print(f"took {summary['wall_s']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
