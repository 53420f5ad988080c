"""The service's Prometheus collectors, HTTP ones included (recorded by `middleware.py`).

Labels are bounded: event types and rejection reasons are enums, never match or event ids. With
several uvicorn workers the CLI sets ``PROMETHEUS_MULTIPROC_DIR`` before this module is imported,
so counters are summed across processes and gauges use the mode that makes sense for each.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

EVENTS_INGESTED = Counter(
    "fanfinity_events_ingested_total",
    "Events durably stored for the first time, by event type.",
    ["event_type"],
)
EVENTS_DUPLICATE = Counter(
    "fanfinity_events_duplicate_total",
    "Events re-sent with an eventId and payload already stored (idempotent retries).",
)
INGEST_REJECTED = Counter(
    "fanfinity_ingest_rejected_total",
    "Events refused at ingest, by reason (conflict, overloaded, timeout, unavailable, "
    "rate_limited, shutting_down).",
    ["reason"],
)
INGEST_BATCH_SIZE = Histogram(
    "fanfinity_ingest_batch_size",
    "Events written per group-commit insert.",
    buckets=BATCH_SIZE_BUCKETS,
)
INGEST_QUEUE_DEPTH = Gauge(
    "fanfinity_ingest_queue_depth",
    "Events waiting for the next group commit.",
    multiprocess_mode="livesum",
)
EVENTS_PROCESSED = Counter(
    "fanfinity_events_processed_total",
    "Events folded into match summaries by the aggregator.",
)
AGGREGATOR_BATCH_SIZE = Histogram(
    "fanfinity_aggregator_batch_size",
    "Events per change-feed batch applied in one transaction.",
    buckets=BATCH_SIZE_BUCKETS,
)
AGGREGATOR_LAG = Gauge(
    "fanfinity_aggregator_lag_seconds",
    "Age of the oldest event in the last applied batch when it was applied (0 when idle).",
    multiprocess_mode="max",
)
MATCHES_ACTIVE = Gauge(
    "fanfinity_matches_active",
    "Matches started and not ended, or with no start/end events but recent events.",
    multiprocess_mode="max",
)

REQUESTS = Counter(
    "fanfinity_requests_total",
    "HTTP requests by method, route template and status code.",
    ["method", "path", "status_code"],
)
REQUEST_DURATION = Histogram(
    "fanfinity_request_duration_seconds",
    "HTTP request duration by method, route template and status code.",
    ["method", "path", "status_code"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0),
)
REQUESTS_IN_PROGRESS = Gauge(
    "fanfinity_requests_in_progress",
    "HTTP requests being handled.",
    multiprocess_mode="livesum",
)


@functools.cache
def events_ingested(event_type: str) -> Any:
    """The labelled child for one event type (a bounded enum), looked up once."""
    return EVENTS_INGESTED.labels(event_type)


@functools.cache
def _request_children(method: str, route: str, status: int) -> tuple[Any, Any]:
    """The labelled children for one route and status (bounded by the routes), looked up once."""
    labels = (method, route, str(status))
    return REQUESTS.labels(*labels), REQUEST_DURATION.labels(*labels)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    requests, duration = _request_children(method, route, status)
    requests.inc()
    duration.observe(seconds)


def exposition() -> tuple[bytes, str]:
    """Prometheus text for this process, or summed over all workers in multiprocess mode."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


EVENTS_PARKED = Counter(
    "fanfinity_events_parked_total",
    "Events parked in the dead-letter collection because the store refused their match's "
    "summary update (replay with `fanfinity rebuild --match ID`).",
)
