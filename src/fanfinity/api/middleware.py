"""The request context around the whole application: request id, security headers, request
metrics, one escaped and sampled log line, and HEAD answered wherever GET is.

It wraps Litestar's ASGI handler (router, exception handling, CORS and tracing included) rather
than being declared as app middleware: Litestar runs declared middleware only on matched routes,
so 404s on no route and 405s would otherwise carry no security headers and no X-Request-ID, and
would be neither counted nor logged. Written as plain ASGI because it runs on every request and
must cost microseconds.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import time
from typing import Any

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send
from loguru import logger

from fanfinity import metrics
from fanfinity.api.logsampling import LogSampler
from fanfinity.tracing import request_trace_id

REQUEST_ID_HEADER = b"x-request-id"
# uvicorn's protocol (api/protocol.py) refuses bigger heads before they are parsed and says so in
# the scope's extensions (HEAD_LIMITED); this check covers the same limit when the app runs under
# another server or the test client.
MAX_HEADER_BYTES = 16 * 1024
HEAD_LIMITED = "fanfinity.head_limited"
UNMATCHED_ROUTE = "unmatched"  # the path label of requests that match no route: never the raw path
MAX_LOGGED_PATH = 200
_VALID_REQUEST_ID = re.compile(rb"\A[A-Za-z0-9._:\-]{1,128}\Z")
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
EVENT_STREAM = b"text/event-stream"
STREAM_PATH_SUFFIX = "/stream"  # the routes that may stream end so; other requests carry nothing


def is_stream_path(path: str) -> bool:
    """Whether a request may be a live stream's: its path ends in `/stream`, with or without the
    trailing slashes the router ignores (`.../metrics/stream/` is the same route)."""
    return path.rstrip("/").endswith(STREAM_PATH_SUFFIX)


def install_request_context(
    app: Litestar, *, trace_ids: bool = False, log_successes: bool = True
) -> Litestar:
    """Wrap the app's ASGI handler (everything after Litestar's own entry point) in the request
    context; returns the app. The handler it wraps stays visible as `wrapped` (what tracing
    tests look through), on the function itself: a wrapper object would cost every request one
    more coroutine."""
    handler = request_context_middleware(
        app.asgi_handler, trace_ids=trace_ids, log_successes=log_successes
    )
    handler.wrapped = app.asgi_handler  # type: ignore[attr-defined]
    app.asgi_handler = handler
    return app


def request_context_middleware(
    app: ASGIApp, *, trace_ids: bool = False, log_successes: bool = True
) -> ASGIApp:
    """Tag each HTTP request with an id (taken from X-Request-ID when sane) and log it once;
    with `trace_ids` (tracing on) the line also carries the request span's trace id.
    `log_successes` is false when the log level is above DEBUG, so 2xx/3xx lines that would be
    dropped are not even built."""
    sampler = LogSampler()

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        request_id = _request_id(scope)
        started = time.perf_counter()
        state: dict[str, Any] = {"status": 500, "trace_id": None, "stream": False}
        head = scope["method"] == "HEAD"
        streams = is_stream_path(scope["path"])  # only those routes stream
        inner_scope: Any = {**scope, "method": "GET"} if head else scope
        body_sent = False

        async def send_with_headers(message: Message) -> None:
            nonlocal body_sent
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                headers.extend(SECURITY_HEADERS)
                message["headers"] = headers
                state["stream"] = streams and _is_event_stream(headers)
                if state["stream"]:  # a stream's request latency is the time to its headers
                    state["first_byte"] = time.perf_counter()
                if trace_ids:
                    state["trace_id"] = request_trace_id(inner_scope)
            elif head and message["type"] == "http.response.body":
                if body_sent:
                    return
                body_sent = True
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        metrics.REQUESTS_IN_PROGRESS.inc()
        try:
            throttled = _throttled_write(scope)
            if throttled:
                metrics.CLIENTS_THROTTLED.labels("failed_auth").inc()
                inner_scope["path_template"] = THROTTLED_ROUTE
                marked: Any = scope  # a key of ours, not one of ASGI's
                marked[HOLD_READING_S] = throttled
                await _refuse(send_with_headers, 429, THROTTLED_BODY, throttled)
            elif _unchecked_head_too_large(scope):
                await _refuse(send_with_headers, 431, LARGE_HEAD_BODY)
            else:
                await app(inner_scope, receive, send_with_headers)
        finally:
            metrics.REQUESTS_IN_PROGRESS.dec()
            ended = state.get("first_byte") or time.perf_counter()
            route: str = inner_scope.get("path_template") or UNMATCHED_ROUTE
            metrics.observe_request(scope["method"], route, state["status"], ended - started)
            _log_request(
                sampler,
                scope,
                route,
                state["status"],
                started,
                request_id,
                state["trace_id"],
                log_successes,
            )

    return middleware


def _unchecked_head_too_large(scope: Scope) -> bool:
    """Headers over MAX_HEADER_BYTES that no server refused already (summing them is ~2 us)."""
    extensions = scope.get("extensions")
    if extensions and HEAD_LIMITED in extensions:
        return False
    return sum(len(name) + len(value) for name, value in scope["headers"]) > MAX_HEADER_BYTES


LARGE_HEAD_BODY = (
    b'{"type":"urn:fanfinity:problem:request-headers-too-large","title":"Request headers too'
    b' large","status":431,"detail":"request headers above %d bytes"}' % MAX_HEADER_BYTES
)
THROTTLED_ROUTE = "throttled"  # the path label of writes refused before routing
# Set on the scope of a throttled answer: the seconds for which the server may leave what the
# connection sends next unparsed. Our protocol honours it (a storm on keep-alive connections then
# costs one answer per connection per wait, not one per request); other servers ignore the key.
HOLD_READING_S = "fanfinity.hold_reading_s"
THROTTLED_BODY = (
    b'{"type":"urn:fanfinity:problem:too-many-failed-authentications","title":"Too many failed'
    b' authentications from this address","status":429,"detail":"too many failed'
    b' authentications from this address; retry after the Retry-After seconds"}'
)


def _throttled_write(scope: Any) -> int:
    """Seconds to wait when this is a write (writes always need a key) from an address that has
    used up its failed authentications, else 0: refused here, before routing, a 401 storm's
    requests cost a fraction of a routed 401 (measured in docs/security.md)."""
    if scope["method"] != "POST":
        return 0
    app = scope.get("app")
    throttle = app.state.get("failed_auth_throttle") if app is not None else None
    if throttle is None:
        return 0
    client = scope.get("client")
    wait: float = throttle.wait_s(str(client[0]) if client else "-")
    return math.ceil(wait) if wait > 0 else 0


async def _refuse(send: Send, status: int, body: bytes, retry_after_s: int = 0) -> None:
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if retry_after_s:
        headers.append((b"retry-after", str(retry_after_s).encode()))
    else:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _is_event_stream(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(
        name == b"content-type" and value.startswith(EVENT_STREAM) for name, value in headers
    )


_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)


def new_request_id() -> str:
    """A process-random prefix and a counter: unique, and cheaper than a UUID per request."""
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def _request_id(scope: Scope) -> str:
    """The caller's X-Request-ID when sane, else a new one."""
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and _VALID_REQUEST_ID.match(value):
            return str(value.decode())
    return new_request_id()


def printable_path(path: str) -> str:
    """The path as it may appear in a text log: control and other non-printable characters
    escaped (so `%0D%0A` cannot forge a line, nor `%1B` reach a terminal), and cut short."""
    if len(path) > MAX_LOGGED_PATH:
        path = path[:MAX_LOGGED_PATH] + "..."
    if path.isprintable():
        return path
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in path)


def _log_request(
    sampler: LogSampler,
    scope: HTTPScope,
    route: str,
    status: int,
    started: float,
    request_id: str,
    trace_id: str | None,
    log_successes: bool,
) -> None:
    if status < 400 and not log_successes:
        return
    # Successful requests log at DEBUG: a line per request at INFO costs about a fifth of the
    # throughput (measured with scripts/bench.py). Refusals and failures are logged, sampled per
    # status and route so that a sweep of random ids cannot flood the log.
    level = "WARNING" if status >= 500 else "INFO" if status >= 400 else "DEBUG"
    if status >= 400 and status != 500:
        suppressed = sampler.admit((status, route))
        if suppressed is None:
            return
        if suppressed:
            logger.bind(status=status, route=route, suppressed=suppressed).log(
                level, "{} more {} answers on {} were not logged", suppressed, status, route
            )
    log = logger.bind(request_id=request_id, status=status, route=route)
    if trace_id is not None:
        log = log.bind(trace_id=trace_id)
    log.log(
        level,
        "{} {} {} {:.1f}ms",
        scope["method"],
        printable_path(scope["path"]),
        status,
        (time.perf_counter() - started) * 1000,
    )
