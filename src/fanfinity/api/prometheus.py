"""`GET /metrics`: Prometheus text, protectable by its own key.

With FANFINITY_METRICS_KEY set, a scrape must send it (`Authorization: Bearer <key>`, which is
Prometheus' `authorization` scrape option, or `X-API-Key`) and gets everything; without a key the
endpoint is open (keep it off the public ingress) and leaves out the process's file-descriptor
gauges. A hand-written handler rather than Litestar's `PrometheusController`: the controller has
no key check, and its scrape was measured no faster (docs/security.md).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get

from fanfinity.api.access import key_matches
from fanfinity.api.throttle import failed_auth_throttle
from fanfinity.errors import Unauthorized
from fanfinity.metrics import exposition

BEARER = "bearer "


@get("/metrics", include_in_schema=False, sync_to_thread=False)
def prometheus_metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus text exposition (summed over workers in multiprocess mode)."""
    key: str | None = request.app.state.settings.metrics_key
    if key is not None:
        throttle = failed_auth_throttle(request)
        throttle.check(request)
        if not key_matches(_presented_key(request), (key,)):
            throttle.failed(request)
            raise Unauthorized(
                "send the metrics key as Authorization: Bearer <key> or in the X-API-Key header"
            )
    body, content_type = exposition(full=key is not None)
    return Response(body, headers={"content-type": content_type})


def _presented_key(request: Request[Any, Any, Any]) -> str:
    authorization = request.headers.get("authorization", "")
    if authorization[: len(BEARER)].lower() == BEARER:
        return authorization[len(BEARER) :].strip()
    return request.headers.get("x-api-key", "")
