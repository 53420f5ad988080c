"""ASGI middleware: request id, one structured log line per request, security headers.

Written as plain ASGI (not a Litestar middleware class) because it runs on every request and
must cost microseconds.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send
from loguru import logger

REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def request_context_middleware(app: ASGIApp) -> ASGIApp:
    """Tag each HTTP request with an id (taken from X-Request-ID when sane) and log it once."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
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

        try:
            await app(scope, receive, send_with_headers)
        finally:
            _log_request(scope, status, started, request_id)

    return middleware


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and _VALID_REQUEST_ID.match(value):
            return str(value.decode())
    return uuid.uuid4().hex


def _log_request(scope: HTTPScope, status: int, started: float, request_id: str) -> None:
    duration_ms = (time.perf_counter() - started) * 1000
    route: Any = scope.get("path_template") or "unmatched"
    level = "WARNING" if status >= 500 else "INFO"
    logger.bind(request_id=request_id, status=status, route=route).log(
        level,
        "{} {} {} {:.1f}ms",
        scope["method"],
        scope["path"],
        status,
        duration_ms,
    )
