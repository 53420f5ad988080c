"""Per-producer token buckets: a burst is allowed, a sustained flood gets 429 + Retry-After.

A request costs what it makes the service do: one token per event, or one per `BYTES_PER_TOKEN`
of body when that is more (issue 18: 31 items of 8,000 integers each took 411 ms of CPU for 31
tokens; by size they cost 992). A cost above the burst is charged as the whole burst, so that one
maximal request is always possible on a full bucket.

Limits hold per replica (the buckets live in this process). A limit shared by all replicas would
keep the buckets in a shared store (a Redis ``INCR`` per key and window, or a MongoDB document per
key with ``$inc``), at the price of a round trip per request: see the README.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from litestar import Request

from fanfinity import metrics
from fanfinity.api.access import API_KEY_HEADER_FIELD
from fanfinity.api.raw import request_header
from fanfinity.errors import RateLimited

MAX_TRACKED_KEYS = 10_000
# A typical event body is 200-400 bytes: it costs one token; CPU grows with the body's size.
BYTES_PER_TOKEN = 512


def request_cost(events: int, body_bytes: int) -> int:
    """Tokens for a request: its events, or its size in `BYTES_PER_TOKEN`, whichever is more."""
    return max(events, math.ceil(body_bytes / BYTES_PER_TOKEN), 1)


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int
    retry_after_s: int

    def headers(self) -> dict[str, str]:
        """The RateLimit-* fields producers read (IETF httpapi draft, widely deployed form)."""
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }


class TokenBucketLimiter:
    """`rate_per_s` tokens a second per key, up to `burst`; an event costs one token."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self._rate = rate_per_s
        self._burst = max(burst, 1)
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, cost: int = 1, now: float | None = None) -> RateDecision:
        moment = time.monotonic() if now is None else now
        cost = min(cost, self._burst)
        tokens, updated = self._buckets.get(key, (float(self._burst), moment))
        tokens = min(float(self._burst), tokens + (moment - updated) * self._rate)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        if key not in self._buckets and len(self._buckets) >= MAX_TRACKED_KEYS:
            self._forget_full_buckets(moment)
        self._buckets[key] = (tokens, moment)
        missing = max(0.0, cost - tokens)
        return RateDecision(
            allowed=allowed,
            limit=self._burst,
            remaining=max(0, int(tokens)),
            reset_s=math.ceil((self._burst - tokens) / self._rate),
            retry_after_s=0 if allowed else max(1, math.ceil(missing / self._rate)),
        )

    def _forget_full_buckets(self, now: float) -> None:
        """Keys whose bucket has refilled carry no state worth keeping."""
        self._buckets = {
            key: (tokens, updated)
            for key, (tokens, updated) in self._buckets.items()
            if tokens + (now - updated) * self._rate < self._burst
        }
        if len(self._buckets) >= MAX_TRACKED_KEYS:
            self._buckets.clear()


class ProducerRateLimiter:
    """Charges each write to its producer's bucket: by API key (already verified by the access
    check), or by client address when producers are not authenticated."""

    def __init__(self, buckets: TokenBucketLimiter, by_api_key: bool) -> None:
        self._buckets = buckets
        self._by_api_key = by_api_key

    def charge(self, request: Request[Any, Any, Any], cost: int) -> dict[str, str]:
        """Take `cost` tokens; raises `RateLimited`, else returns the RateLimit-* headers."""
        key = request_header(request.scope, API_KEY_HEADER_FIELD) if self._by_api_key else None
        key = key or (request.client.host if request.client else "-")
        decision = self._buckets.take(key, cost)
        if not decision.allowed:
            metrics.INGEST_REJECTED.labels("rate_limited").inc(cost)
            raise RateLimited(
                f"this API key may send {decision.limit} events (or {decision.limit} x "
                f"{BYTES_PER_TOKEN} bytes) at once and is refilled continuously; "
                f"retry in {decision.retry_after_s}s",
                decision.headers(),
                decision.retry_after_s,
            )
        return decision.headers()
