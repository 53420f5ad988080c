"""The helpers the scripts share (scripts/helpers.py): what the benchmark, load test and simulator
read from the service and from its answers."""

from __future__ import annotations

import asyncio
import math
import os
import resource
import socket
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import httpx
import pytest
from litestar import Litestar

from fanfinity.__main__ import raise_open_files_limit
from scripts.bench import __main__ as bench
from scripts.bench.wrk import mean_of, parse_wrk
from scripts.helpers import (
    counted_events,
    cpu_seconds,
    free_port,
    metric_total,
    parse_prometheus,
    percentile,
    retry_after_s,
    rss_mib,
)
from tests.conftest import PRODUCER_KEY, serving


def test_retry_after_is_read_as_seconds_or_as_a_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_s("2", now) == 2.0
    assert retry_after_s("Thu, 01 Jan 2026 12:00:05 GMT", now) == 5.0
    assert retry_after_s("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0  # in the past: go now
    assert retry_after_s(None, now) is None
    assert retry_after_s("soon", now) is None
    assert retry_after_s("nan", now) is None


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 100 .. 1, unsorted on purpose
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_prometheus_text_is_read_per_label_set_and_summed_per_metric() -> None:
    text = "\n".join(
        [
            "# HELP fanfinity_requests_total Requests",
            "# TYPE fanfinity_requests_total counter",
            'fanfinity_requests_total{method="POST",path="/api/events",status_code="202"} 12.0',
            'fanfinity_requests_total{method="GET",path="/a \\"b\\"",status_code="200"} 3.0',
            "fanfinity_events_ingested_total 40.0",
            "",
        ]
    )
    samples = parse_prometheus(text)

    key = (
        "fanfinity_requests_total",
        (("method", "POST"), ("path", "/api/events"), ("status_code", "202")),
    )
    assert samples[key] == 12.0
    assert metric_total(samples, "fanfinity_requests_total") == 15.0
    assert metric_total(samples, "fanfinity_events_ingested_total") == 40.0
    assert metric_total(samples, "fanfinity_nothing") == 0.0


def test_a_free_port_can_be_bound_and_this_process_has_a_resident_size() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))
    assert rss_mib(os.getpid()) > 1
    assert math.isnan(rss_mib(2**22 + 12345))  # no such process


def test_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = min(soft, 1024)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    now = lowered
    try:
        raised = raise_open_files_limit()
        now, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        expected = lowered if hard == resource.RLIM_INFINITY else hard
        assert raised == now == expected
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, now), hard))


async def test_counted_events_sums_the_matches_the_service_counted(app: Litestar) -> None:
    run = uuid.uuid4().hex[:8]
    matches = [f"helpers-{run}-{index}" for index in range(3)]
    async with serving(app) as base, httpx.AsyncClient(base_url=base) as client:
        for index, match_id in enumerate(matches[:2]):
            for _ in range(index + 1):
                response = await client.post(
                    "/api/events",
                    headers={"X-API-Key": PRODUCER_KEY},
                    json={
                        "eventId": str(uuid.uuid4()),
                        "matchId": match_id,
                        "eventType": "corner",
                        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                        "teamId": "al-hilal",
                    },
                )
                assert response.status_code == 202
        total = 0
        for _ in range(100):  # the aggregator counts a moment after the 202
            total = await asyncio.to_thread(counted_events, base, matches, PRODUCER_KEY)
            if total == 3:
                break
            await asyncio.sleep(0.05)

    assert total == 3  # 1 + 2, and the third match, never posted to, counts 0


async def test_the_benchmark_loads_a_match_through_the_batch_endpoint(
    app: Litestar, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make bench`'s match-size runs load 10^4 and 10^5 events this way; a batch answers 200."""
    monkeypatch.setattr(bench, "API_KEY", PRODUCER_KEY)
    match_id = f"bench-size-{uuid.uuid4().hex[:8]}"
    async with serving(app) as base:
        await asyncio.to_thread(bench.load_match, base, match_id, 700)  # a batch of 500, then 200
        total = 0
        for _ in range(100):
            total = await asyncio.to_thread(counted_events, base, [match_id], PRODUCER_KEY)
            if total == 700:
                break
            await asyncio.sleep(0.05)
    assert total == 700


def test_the_benchmark_compares_the_service_with_the_bare_runs_around_it() -> None:
    before = parse_wrk(
        "Requests/sec:   6000.00\nRESULT accepted=60000 failed=0 p50_us=9000 p99_us=16000 "
        "requests=60000\n"
    )
    after = parse_wrk(
        "Requests/sec:   4000.00\nSocket errors: connect 0, read 1, write 0, timeout 0\n"
        "RESULT accepted=40000 failed=2 p50_us=11000 p99_us=20000 requests=40002\n"
    )
    service = parse_wrk(
        "Requests/sec:   2500.00\nRESULT accepted=25000 failed=0 p50_us=25000 p99_us=40000 "
        "requests=25000\n"
    )
    baseline = mean_of([replace(before, server_cpu_us=150), replace(after, server_cpu_us=250)])
    assert (baseline.requests_per_s, baseline.p50_ms, baseline.p99_ms) == (5000.0, 10.0, 18.0)
    assert (baseline.ok, baseline.errors, baseline.requests) == (100_000, 3, 100_002)
    line = bench.row("ingest", replace(service, server_cpu_us=400), baseline)
    cells = [cell.strip() for cell in line.split("|")[1:-1]]
    assert cells[4:] == ["5000", "10.00/18.00", "0.50", "400, 200, 0.50"]
    mixed = bench.row("reads during ingest", replace(service, server_cpu_us=300), baseline, False)
    assert mixed.split("|")[-2].strip() == "300, 200, -"  # different mixes: no CPU ratio


def test_the_cpu_a_process_used_is_read_from_proc() -> None:
    started_s, before = time.process_time(), cpu_seconds(os.getpid())
    while time.process_time() - started_s < 0.3:
        sum(range(1000))
    used = cpu_seconds(os.getpid()) - before
    assert 0.2 <= used <= 0.5  # clock ticks of 10 ms
    assert math.isnan(cpu_seconds(2**22 + 1))  # beyond pid_max: no such process
