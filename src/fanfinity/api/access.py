"""API keys: producers need a producer key; reads need a read key only when configured.

Each route declares who may call it (`**route_access(Access.PRODUCER)` puts `opt={"access": ...}`
and the matching OpenAPI `security=` on the route, from the same value), and one app-level
`before_request` hook, `check_access`, enforces it. Not Litestar guards: a guard costs a copy of the
route handler object on every request (measured at about 6% of a metric read), and a sync guard
also runs in a worker thread; the hook is one dict lookup on the route's `opt`.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Iterable
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection

from fanfinity.api.raw import request_header
from fanfinity.api.throttle import failed_auth_throttle
from fanfinity.config import Settings
from fanfinity.errors import Unauthorized

API_KEY_HEADER = "x-api-key"
API_KEY_HEADER_FIELD = API_KEY_HEADER.encode()


class Access(enum.StrEnum):
    """Who may call a route."""

    PRODUCER = "producer"  # one of FANFINITY_API_KEYS (open only in development with no keys)
    READ = "read"  # open unless FANFINITY_READ_API_KEYS is set; producer keys may read too


# OpenAPI: writes need the key; reads are open unless read keys are configured, so there the key
# is optional ({} is "no credentials" as an alternative).
SECURITY: dict[Access, list[dict[str, list[str]]]] = {
    Access.PRODUCER: [{"apiKey": []}],
    Access.READ: [{}, {"apiKey": []}],
}


def route_access(access: Access) -> dict[str, Any]:
    """The route options declaring `access`: what `check_access` enforces and what the OpenAPI
    document says, from one value."""
    return {"opt": {"access": access}, "security": SECURITY[access]}


async def check_access(request: Request[Any, Any, Any]) -> None:
    """The app-level `before_request` check of the access the route declares (none: open)."""
    access = request.route_handler.opt.get("access")
    if access is None:
        return
    settings: Settings = request.app.state.settings
    if access is Access.PRODUCER:
        require_producer_key(request, settings)
    else:
        require_read_key(request, settings)


def key_matches(candidate: str, keys: Iterable[str]) -> bool:
    """Constant-time check against every key, so timing does not tell which key was close."""
    matched = False
    encoded = candidate.encode()
    for key in keys:
        matched |= hmac.compare_digest(encoded, key.encode())
    return matched


def require_producer_key(
    connection: ASGIConnection[Any, Any, Any, Any], settings: Settings
) -> None:
    """Writes need one of FANFINITY_API_KEYS (open only in development with no keys set)."""
    if settings.api_keys:
        _require_key(connection, settings.api_keys, "producer")


def require_read_key(connection: ASGIConnection[Any, Any, Any, Any], settings: Settings) -> None:
    """Reads are open unless FANFINITY_READ_API_KEYS is set; producer keys may read too."""
    if settings.read_api_keys:
        _require_key(connection, settings.read_api_keys | settings.api_keys, "read")


def _require_key(
    connection: ASGIConnection[Any, Any, Any, Any], keys: Iterable[str], role: str
) -> None:
    """One of `keys` in X-API-Key, or 401; past a bound of failures per address, 429."""
    throttle = failed_auth_throttle(connection)
    throttle.check(connection)
    candidate = request_header(connection.scope, API_KEY_HEADER_FIELD)
    if candidate is None:
        throttle.failed(connection)
        raise Unauthorized(f"send a {role} key in the X-API-Key header")
    if not key_matches(candidate, keys):
        throttle.failed(connection)
        raise Unauthorized(f"the X-API-Key header does not hold a valid {role} key")
