"""The load test's statistics: per-phase figures from locust's CSVs, per-second series, CPU per
phase, and the service's own view from /metrics deltas."""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.loadtest.cpu import CpuSampler

PHASES = ("steady", "spike", "after")
KINDS = {"ingest": "/api/events", "reads": "/api/matches/[id]/metrics"}
SERVER_ROUTES = {"ingest": ("POST", "/api/events"), "reads": ("GET", "/api/matches/{match_id")}


def number(value: str) -> float | None:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(result) else result


Windows = dict[str, tuple[float, float]]


def phase_windows(args: argparse.Namespace, producers: dict[str, Any]) -> Windows:
    """Seconds since the start of each phase: as the shape switched them, else as planned."""
    spike_end = args.spike_at + args.spike_duration
    planned = {"steady": 0.0, "spike": args.spike_at, "after": spike_end, "end": args.duration}
    started = float(producers.get("started_at") or 0.0)
    actual = {
        phase: moment - started for phase, moment in producers.get("phase_started_at", {}).items()
    }
    if started and producers.get("stopped_at"):
        actual["end"] = float(producers["stopped_at"]) - started
    marks = {name: actual.get(name, planned[name]) for name in planned}
    order = [*PHASES, "end"]
    return {phase: (marks[phase], marks[after]) for phase, after in itertools.pairwise(order)}


def per_phase_stats(out_dir: Path, windows: Windows) -> dict[str, dict[str, Any]]:
    """Counts, failures and percentiles per phase and kind, from locust_stats.csv.

    Request names carry their phase, so locust's own per-name totals are exact per phase; the
    rate is the count over the phase's length.
    """
    rows = {row["Name"]: row for row in read_csv(out_dir / "locust_stats.csv")}
    result: dict[str, dict[str, Any]] = {}
    for phase, (start, end) in windows.items():
        result[phase] = {"from_s": round(start, 1), "to_s": round(end, 1)}
        for kind, path in KINDS.items():
            row = rows.get(f"{path} [{phase}]")
            count = int(row["Request Count"]) if row else 0
            result[phase][kind] = {
                "requests": count,
                "requests_per_s": round(count / max(end - start, 1e-9), 1),
                "p50_ms": number(row["50%"]) if row else None,
                "p95_ms": number(row["95%"]) if row else None,
                "p99_ms": number(row["99%"]) if row else None,
                "max_ms": number(row["Max Response Time"]) if row else None,
                "errors": int(row["Failure Count"]) if row else 0,
            }
    return result


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        raise SystemExit(f"locust wrote no {path.name}: see {path.parent / 'locust.log'}")
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def failures(out_dir: Path) -> list[dict[str, Any]]:
    path = out_dir / "locust_failures.csv"
    if not path.exists():
        return []
    return [
        {"name": row["Name"], "error": row["Error"], "occurrences": int(row["Occurrences"])}
        for row in read_csv(path)
    ]


@dataclass
class Series:
    seconds: list[float] = field(default_factory=list)
    rate: list[float] = field(default_factory=list)
    failures: list[float] = field(default_factory=list)
    p50: list[float | None] = field(default_factory=list)
    p99: list[float | None] = field(default_factory=list)


def time_series(out_dir: Path) -> dict[str, Series]:
    """Per-second requests, failures, p50 and p99 by kind, from the locustfile's timeline.json.

    Each value covers the second that ends at its x (plotted as steps). Locust's stats history
    holds the same counts, but with whole-second timestamps that now and then skip a second (a
    false dip or jump in requests/s) and percentiles over a sliding window.
    """
    path = out_dir / "timeline.json"
    rows = json.loads(path.read_text()) if path.exists() else {}
    series = {kind: Series() for kind in KINDS}
    for kind, out in series.items():
        for second, requests, failed, p50, p99 in rows.get(kind, []):
            out.seconds.append(second + 1)
            out.rate.append(requests)
            out.failures.append(failed)
            out.p50.append(p50)
            out.p99.append(p99)
    return series


def cpu_per_phase(
    sampler: CpuSampler, started_at: float, windows: Windows
) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and max CPU% per phase, leaving out each phase's first second (the switch)."""
    result: dict[str, dict[str, dict[str, float]]] = {}
    for phase, (start, end) in windows.items():
        inside = [
            values
            for moment, values in sampler.samples
            if started_at and start + 1 <= moment - started_at < end
        ]
        result[phase] = {}
        for name in [*sampler.roots, "machine", "other"]:
            values = [sample[name] for sample in inside]
            if values:
                result[phase][name] = {
                    "mean_pct": round(sum(values) / len(values), 1),
                    "max_pct": round(max(values), 1),
                }
    return result


def server_side(scrapes: dict[str, dict[Any, float]]) -> dict[str, dict[str, Any]]:
    """Per phase and route, from /metrics deltas: status counts and bucketed p50/p99 (ms)."""
    order = [*PHASES, "end"]
    result: dict[str, dict[str, Any]] = {}
    for before, phase in itertools.pairwise(order):
        first, last = scrapes.get(before) or {}, scrapes.get(phase) or {}
        if not first or not last:
            continue
        result[before] = {}
        for kind, (method, route) in SERVER_ROUTES.items():
            statuses: dict[str, int] = defaultdict(int)
            buckets: dict[float, float] = defaultdict(float)
            for (name, labels), value in last.items():
                label = dict(labels)
                path = label.get("path", "")
                if label.get("method") != method or not path.startswith(route):
                    continue
                if kind == "reads" and not path.endswith("/metrics"):
                    continue
                delta = value - first.get((name, labels), 0.0)
                if name == "fanfinity_requests_total":
                    statuses[label["status_code"]] += int(delta)
                elif name == "fanfinity_request_duration_seconds_bucket":
                    buckets[float(label["le"])] += delta
            result[before][kind] = {
                "statuses": {code: n for code, n in sorted(statuses.items()) if n},
                "p50_ms_le": bucket_quantile(buckets, 0.50),
                "p99_ms_le": bucket_quantile(buckets, 0.99),
            }
    return result


def bucket_quantile(buckets: dict[float, float], quantile: float) -> float | None:
    """Upper bound (ms) of the histogram bucket holding the quantile."""
    if not buckets:
        return None
    ordered = sorted(buckets.items())
    total = ordered[-1][1]
    if total <= 0:
        return None
    for bound, cumulative in ordered:
        if cumulative >= quantile * total:
            return bound * 1000
    return math.inf
