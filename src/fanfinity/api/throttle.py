"""Per-client-address throttles: failed authentications, and reads of the match list.

Both are token buckets keyed by the client address (the peer, or the X-Forwarded-For of a proxy
listed in FANFINITY_FORWARDED_ALLOW_IPS). The failed-authentication throttle is charged only by
failures and checked before any key comparison, so a 401 storm from one address costs a dict
lookup per request once its bucket is empty, and valid keys from other addresses are untouched.
Buckets live in this process (per replica), like the producers' rate limit.
"""

from __future__ import annotations

import math
import time
from typing import Any

from litestar.connection import ASGIConnection

from fanfinity import metrics
from fanfinity.config import Settings
from fanfinity.errors import AuthThrottled, ClientThrottled

MAX_TRACKED_ADDRESSES = 50_000
UNKNOWN_CLIENT = "-"


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    client = connection.scope.get("client")
    return str(client[0]) if client else UNKNOWN_CLIENT


class AddressBuckets:
    """`burst` tokens per address, `per_s` refilled a second; bounded in the addresses kept."""

    def __init__(self, burst: int, per_s: float) -> None:
        self.burst = float(max(burst, 1))
        self.per_s = per_s
        self._buckets: dict[str, tuple[float, float]] = {}

    def tokens(self, address: str, now: float | None = None) -> float:
        moment = time.monotonic() if now is None else now
        held = self._buckets.get(address)
        if held is None:
            return self.burst
        tokens, updated = held
        return min(self.burst, tokens + (moment - updated) * self.per_s)

    def retry_after_s(self, address: str, now: float | None = None) -> float:
        """0 when the address has a token, else the seconds until it has one."""
        tokens = self.tokens(address, now)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.per_s

    def charge(self, address: str, now: float | None = None) -> None:
        moment = time.monotonic() if now is None else now
        tokens = self.tokens(address, moment)
        if address not in self._buckets and len(self._buckets) >= MAX_TRACKED_ADDRESSES:
            self._forget_full(moment)
        self._buckets[address] = (max(tokens - 1, 0.0), moment)

    def _forget_full(self, now: float) -> None:
        self._buckets = {
            address: held
            for address, held in self._buckets.items()
            if self.tokens(address, now) < self.burst
        }
        if len(self._buckets) >= MAX_TRACKED_ADDRESSES:
            self._buckets.clear()


class FailedAuthThrottle:
    """`check` before comparing a key (429 + Retry-After once an address has failed `burst`
    times in a row without refill), `failed` after a 401."""

    def __init__(self, burst: int, per_s: float) -> None:
        self._buckets = AddressBuckets(burst, per_s)

    def wait_s(self, address: str) -> float:
        """0 when `address` may try a key, else the seconds until it may."""
        return self._buckets.retry_after_s(address)

    def check(self, connection: ASGIConnection[Any, Any, Any, Any]) -> None:
        wait = self._buckets.retry_after_s(client_address(connection))
        if wait > 0:
            metrics.CLIENTS_THROTTLED.labels("failed_auth").inc()
            raise AuthThrottled(
                f"too many failed authentications from this address; retry in {math.ceil(wait)}s",
                wait,
            )

    def failed(self, connection: ASGIConnection[Any, Any, Any, Any]) -> None:
        self._buckets.charge(client_address(connection))


class ReadThrottle:
    """A request budget per address for an expensive read (the match list)."""

    def __init__(self, burst: int, per_s: float, what: str) -> None:
        self._buckets = AddressBuckets(burst, per_s) if per_s > 0 else None
        self._what = what

    def take(self, connection: ASGIConnection[Any, Any, Any, Any]) -> None:
        if self._buckets is None:
            return
        address = client_address(connection)
        wait = self._buckets.retry_after_s(address)
        if wait > 0:
            metrics.CLIENTS_THROTTLED.labels(self._what).inc()
            raise ClientThrottled(
                f"too many {self._what.replace('_', ' ')} requests from this address; "
                f"retry in {math.ceil(wait)}s",
                wait,
            )
        self._buckets.charge(address)


def failed_auth_throttle(connection: ASGIConnection[Any, Any, Any, Any]) -> FailedAuthThrottle:
    """The app's throttle, made on first use from its settings (one per app, so tests' apps do
    not share buckets)."""
    state = connection.app.state
    throttle: FailedAuthThrottle | None = state.get("failed_auth_throttle")
    if throttle is None:
        settings: Settings = state.get("settings") or Settings()
        throttle = FailedAuthThrottle(settings.auth_failures_burst, settings.auth_failures_per_s)
        state["failed_auth_throttle"] = throttle
    return throttle
