"""The connection budget, the stream slots derived from it, and log sampling."""

from __future__ import annotations

from fanfinity.api.logsampling import LogSampler
from fanfinity.api.protocol import FULL, canned_response, connection_limits, stream_slots
from fanfinity.api.throttle import AddressBuckets
from fanfinity.config import Settings


def test_the_default_budget_stays_below_the_open_file_limit_with_a_stream_reserve() -> None:
    limits = connection_limits(Settings(), file_limit=20_000)
    assert limits.max_connections == 19_000
    assert limits.reserve == 1_000
    assert stream_slots(Settings(), file_limit=20_000) == 18_000  # never the 20,000 fd limit


def test_configured_caps_never_exceed_what_the_files_allow() -> None:
    settings = Settings(max_connections=50_000, stream_max_subscribers=30_000)
    assert connection_limits(settings, file_limit=4_096).max_connections == 3_096
    assert stream_slots(settings, file_limit=4_096) == 2_096
    small = Settings(max_connections=60, connection_reserve=20, stream_max_subscribers=10)
    assert stream_slots(small, file_limit=20_000) == 10


def test_a_reserve_larger_than_half_the_budget_is_cut_to_half() -> None:
    limits = connection_limits(Settings(max_connections=100, connection_reserve=500), 20_000)
    assert limits.reserve == 50


def test_a_canned_answer_is_a_complete_problem_response_with_the_usual_headers() -> None:
    answer = canned_response(FULL, retry_after_s=1)
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"content-length: %d" % len(body) in head
    assert b"retry-after: 1" in head
    assert b"x-content-type-options: nosniff" in head
    assert b'"status":503' in body
    assert b'"type":"urn:fanfinity:problem:too-many-connections"' in body


def test_the_sampler_keeps_the_first_lines_then_counts_the_rest() -> None:
    sampler = LogSampler(lines_per_window=3, window_s=10.0)
    admitted = [sampler.admit((404, "/x"), now=1.0 + n / 100) for n in range(10)]
    assert admitted == [0, 0, 0] + [None] * 7
    assert sampler.admit((404, "/y"), now=2.0) == 0  # another key has its own budget
    assert sampler.admit((404, "/x"), now=11.5) == 7  # next window: says how many it left out


def test_address_buckets_refill_and_tell_when_to_retry() -> None:
    buckets = AddressBuckets(burst=2, per_s=0.5)
    buckets.charge("10.0.0.1", now=0.0)
    buckets.charge("10.0.0.1", now=0.0)
    assert buckets.retry_after_s("10.0.0.1", now=0.0) == 2.0
    assert buckets.retry_after_s("10.0.0.2", now=0.0) == 0.0
    assert buckets.retry_after_s("10.0.0.1", now=2.0) == 0.0
