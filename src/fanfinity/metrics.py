"""The service's Prometheus collectors, HTTP ones included (recorded by `middleware.py`).

Labels are bounded: event types and rejection reasons are enums, never match or event ids. With
several uvicorn workers the CLI sets ``PROMETHEUS_MULTIPROC_DIR`` before this module is imported,
so counters are summed across processes and gauges use the mode that makes sense for each.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric

# The classic text format, which every Prometheus version reads; the body is generated with the
# legacy (underscore) names this format defines. One charset parameter, once.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HIDDEN_WITHOUT_KEY = frozenset({"process_open_fds", "process_max_fds"})

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
    "HTTP request latency by method, route template and status code (for a live stream, the "
    "time to its response headers: sessions are in fanfinity_stream_session_duration_seconds).",
    ["method", "path", "status_code"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0),
)
REQUESTS_IN_PROGRESS = Gauge(
    "fanfinity_requests_in_progress",
    "HTTP requests being handled.",
    multiprocess_mode="livesum",
)

STREAM_SESSIONS_OPENED = Counter(
    "fanfinity_stream_sessions_opened_total",
    "Live metric streams (SSE) opened.",
)
STREAM_SESSIONS_ACTIVE = Gauge(
    "fanfinity_stream_sessions_active",
    "Live metric streams (SSE) open now.",
    multiprocess_mode="livesum",
)
STREAM_SESSION_DURATION = Histogram(
    "fanfinity_stream_session_duration_seconds",
    "How long live metric streams (SSE) stayed open.",
    buckets=(1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400),
)
STREAMS_REFUSED = Counter(
    "fanfinity_stream_refused_total",
    "Live streams refused, by reason (replica_full, client_full).",
    ["reason"],
)
STREAM_SUBSCRIBERS_DROPPED = Counter(
    "fanfinity_stream_subscribers_dropped_total",
    "Subscribers dropped because they did not read their stream.",
)
CONNECTIONS_OPEN = Gauge(
    "fanfinity_connections_open",
    "HTTP connections open in this process.",
    multiprocess_mode="livesum",
)
CONNECTIONS_CLOSED = Counter(
    "fanfinity_connections_closed_total",
    "Connections closed by the server's own limits, by reason (head_too_large, head_timeout, "
    "body_timeout, body_too_large, malformed_http, upgrade_with_body, write_timeout, "
    "evicted_idle, refused_full, hold_overflow).",
    ["reason"],
)
CONNECTIONS_UPGRADE_IGNORED = Counter(
    "fanfinity_upgrade_requests_ignored_total",
    "Requests asking to upgrade the connection (WebSocket, h2c): answered as plain HTTP/1.1.",
)
CLIENTS_THROTTLED = Counter(
    "fanfinity_clients_throttled_total",
    "Requests refused with 429 per client address, by reason (failed_auth, match_list).",
    ["reason"],
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


def exposition(full: bool = True) -> tuple[bytes, str]:
    """Prometheus text for this process, or summed over all workers in multiprocess mode.

    Without `full` the process's file-descriptor gauges are left out: how close the process is
    to its open-file limit tells an attacker how many connections finish it off.
    """
    registry: Any = REGISTRY
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry if full else _WithoutFileDescriptors(registry)), CONTENT_TYPE


class _WithoutFileDescriptors:
    """A view of a registry without the metric families in `HIDDEN_WITHOUT_KEY`."""

    def __init__(self, registry: Any) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            if family.name not in HIDDEN_WITHOUT_KEY:
                yield family


SUMMARY_OVERFLOW = Counter(
    "fanfinity_summary_overflow_events_total",
    "Events counted in a match's overflow instead of under their team or minute (bounds reached).",
    ["dimension"],
)


def count_overflow(teams: int, minutes: int) -> None:
    """Count events a committed batch put in overflow, by dimension (team or minute)."""
    if teams:
        SUMMARY_OVERFLOW.labels("team").inc(teams)
    if minutes:
        SUMMARY_OVERFLOW.labels("minute").inc(minutes)


EVENTS_PARKED = Counter(
    "fanfinity_events_parked_total",
    "Events parked in the dead-letter collection because the store refused their match's "
    "summary update (replay with `fanfinity rebuild --match ID`).",
)
