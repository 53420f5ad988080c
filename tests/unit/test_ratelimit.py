"""Token buckets: bursts pass, floods get told when to come back, buckets refill."""

from __future__ import annotations

from fanfinity.api.ratelimit import (
    BYTES_PER_TOKEN,
    MAX_TRACKED_KEYS,
    TokenBucketLimiter,
    request_cost,
)


def test_a_burst_up_to_the_bucket_size_passes_then_the_next_event_waits() -> None:
    limiter = TokenBucketLimiter(rate_per_s=10, burst=5)
    decisions = [limiter.take("producer-a", now=100.0) for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert decisions[4].remaining == 0
    assert decisions[5].retry_after_s == 1
    assert decisions[5].headers() == {
        "RateLimit-Limit": "5",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "1",
    }


def test_buckets_refill_at_the_configured_rate() -> None:
    limiter = TokenBucketLimiter(rate_per_s=2, burst=2)
    assert limiter.take("k", cost=2, now=0.0).allowed
    assert not limiter.take("k", now=0.1).allowed
    assert limiter.take("k", now=0.6).allowed  # 0.5 s * 2/s = one token back


def test_keys_are_limited_independently() -> None:
    limiter = TokenBucketLimiter(rate_per_s=1, burst=1)
    assert limiter.take("producer-a", now=0.0).allowed
    assert not limiter.take("producer-a", now=0.0).allowed
    assert limiter.take("producer-b", now=0.0).allowed


def test_a_batch_costs_one_token_per_event_and_says_how_long_to_wait() -> None:
    limiter = TokenBucketLimiter(rate_per_s=100, burst=500)
    assert limiter.take("k", cost=500, now=0.0).allowed
    refused = limiter.take("k", cost=300, now=1.0)  # 100 tokens back, 300 needed
    assert not refused.allowed
    assert refused.retry_after_s == 2


def test_memory_stays_bounded_with_many_keys() -> None:
    limiter = TokenBucketLimiter(rate_per_s=1_000, burst=10)
    for number in range(MAX_TRACKED_KEYS * 2):
        limiter.take(f"client-{number}", now=number / 1_000)
    assert len(limiter._buckets) <= MAX_TRACKED_KEYS


def test_a_request_costs_its_events_or_its_size_whichever_is_more() -> None:
    assert request_cost(events=1, body_bytes=300) == 1
    assert request_cost(events=1, body_bytes=BYTES_PER_TOKEN + 1) == 2
    assert request_cost(events=500, body_bytes=125_000) == 500  # 500 typical events
    assert request_cost(events=31, body_bytes=31 * 16_384) == 992  # 31 deep items
    assert request_cost(events=0, body_bytes=0) == 1


def test_a_cost_above_the_burst_takes_the_whole_burst_instead_of_never_passing() -> None:
    limiter = TokenBucketLimiter(rate_per_s=1, burst=10)

    first = limiter.take("producer", cost=50, now=0.0)
    second = limiter.take("producer", cost=1, now=0.0)

    assert first.allowed
    assert first.remaining == 0
    assert not second.allowed
