"""ASGI middleware: request id, request metrics, one structured log line, security headers.

Written as plain ASGI (not a Litestar middleware class) because it runs on every request and
must cost microseconds.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from typing import Any

from litestar import Request
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send
from loguru import logger

from fanfinity import metrics
from fanfinity.errors import HeadersTooLarge
from fanfinity.tracing import request_trace_id

REQUEST_ID_HEADER = b"x-request-id"
MAX_HEADER_BYTES = 16 * 1024  # the HTTP parser's own limit is 80 KiB; nothing here needs more
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def request_context_middleware(
    app: ASGIApp, *, trace_ids: bool = False, log_successes: bool = True
) -> ASGIApp:
    """Tag each HTTP request with an id (taken from X-Request-ID when sane) and log it once;
    with `trace_ids` (tracing on) the line also carries the request span's trace id.
    `log_successes` is false when the log level is above DEBUG, so 2xx/3xx lines that would be
    dropped are not even built."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        request_id = _request_id(scope)
        trace_id = request_trace_id(scope) if trace_ids else None
        started = time.perf_counter()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                headers.extend(SECURITY_HEADERS)
                message["headers"] = headers
            await send(message)

        metrics.REQUESTS_IN_PROGRESS.inc()
        try:
            await app(scope, receive, send_with_headers)
        finally:
            metrics.REQUESTS_IN_PROGRESS.dec()
            _finish_request(scope, status, started, request_id, trace_id, log_successes)

    return middleware


async def limit_header_size(request: Request[Any, Any, Any]) -> None:
    """A `before_request` hook (so the 431 goes through the route's error handling and still
    carries the request id and security headers)."""
    if sum(len(name) + len(value) for name, value in request.scope["headers"]) > MAX_HEADER_BYTES:
        raise HeadersTooLarge(f"request headers above {MAX_HEADER_BYTES} bytes")


_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)


def _request_id(scope: Scope) -> str:
    """The caller's X-Request-ID when sane, else a process-random prefix and a counter (unique,
    and cheaper than a UUID per request)."""
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and _VALID_REQUEST_ID.match(value):
            return str(value.decode())
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def _finish_request(
    scope: HTTPScope,
    status: int,
    started: float,
    request_id: str,
    trace_id: str | None,
    log_successes: bool,
) -> None:
    seconds = time.perf_counter() - started
    route: Any = scope.get("path_template") or "unmatched"
    metrics.observe_request(scope["method"], route, status, seconds)
    if status < 400 and not log_successes:
        return
    duration_ms = seconds * 1000
    # Successful requests log at DEBUG: a line per request at INFO costs about a fifth of the
    # throughput (measured with scripts/bench.py). Refusals and failures are always logged.
    level = "WARNING" if status >= 500 else "INFO" if status >= 400 else "DEBUG"
    log = logger.bind(request_id=request_id, status=status, route=route)
    if trace_id is not None:
        log = log.bind(trace_id=trace_id)
    log.log(
        level,
        "{} {} {} {:.1f}ms",
        scope["method"],
        scope["path"],
        status,
        duration_ms,
    )
