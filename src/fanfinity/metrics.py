"""The service's own Prometheus collectors (the HTTP ones come from Litestar's middleware).

Labels are bounded: event types and rejection reasons are enums, never match or event ids. With
several uvicorn workers the CLI sets ``PROMETHEUS_MULTIPROC_DIR`` before this module is imported,
so counters are summed across processes and gauges use the mode that makes sense for each.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

EVENTS_INGESTED = Counter(
    "fanfinity_events_ingested_total",
    "Events durably stored and acknowledged for the first time, by event type.",
    ["event_type"],
)
EVENTS_DUPLICATE = Counter(
    "fanfinity_events_duplicate_total",
    "Events re-sent with an eventId and payload already stored (idempotent retries).",
)
INGEST_REJECTED = Counter(
    "fanfinity_ingest_rejected_total",
    "Events refused at ingest, by reason (conflict, overloaded, unavailable, invalid).",
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
