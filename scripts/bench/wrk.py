"""wrk runs driven by our Lua scripts (scripts/bench/wrk/), and their results."""

from __future__ import annotations

import math
import re
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent / "wrk"


@dataclass(frozen=True)
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    ok: int
    errors: int
    requests: int = 0
    server_cpu_us: float = math.nan  # the server's CPU per request over the run, when measured


def mean_of(runs: Sequence[WrkResult]) -> WrkResult:
    """One baseline from several runs of the same load: mean rate and latencies, summed counts."""
    count = len(runs)
    return WrkResult(
        requests_per_s=sum(run.requests_per_s for run in runs) / count,
        p50_ms=sum(run.p50_ms for run in runs) / count,
        p99_ms=sum(run.p99_ms for run in runs) / count,
        ok=sum(run.ok for run in runs),
        errors=sum(run.errors for run in runs),
        requests=sum(run.requests for run in runs),
        server_cpu_us=sum(run.server_cpu_us for run in runs) / count,
    )


def id_prefix() -> str:
    """Eight hex digits that make every wrk run's eventIds unique."""
    return uuid.uuid4().hex[:8]


def wrk_command(
    url: str, script: str, args: list[str], duration: float, connections: int, threads: int
) -> list[str]:
    return [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{int(duration)}s",
        "--latency",
        "--timeout",
        "5s",
        "-s",
        str(SCRIPTS / script),
        url,
        "--",
        *args,
    ]


def run_wrk(
    url: str, script: str, args: list[str], duration: float, connections: int, threads: int
) -> WrkResult:
    command = wrk_command(url, script, args, duration, connections, threads)
    return parse_wrk(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


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
        requests=int(result.group(5)),
    )


def mixed(
    url: str,
    ingest_args: list[str],
    read_path: str,
    duration: float,
    connections: int,
    threads: int,
) -> tuple[WrkResult, WrkResult]:
    """Half the connections post events while the other half read metrics."""
    half = max(1, connections // 2)
    command = wrk_command(url, "ingest.lua", ingest_args, duration, half, threads)
    ingest = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    read = run_wrk(url, "read.lua", [read_path], duration, half, threads)
    output, _ = ingest.communicate()
    return parse_wrk(output), read
