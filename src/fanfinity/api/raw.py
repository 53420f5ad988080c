"""Request headers and responses at the ASGI level, for the routes that run thousands of times a
second.

A metrics read answered from the cache does almost nothing of its own; under `make bench`'s read
load a py-spy profile put ~20 % of the process in building Litestar's `Response` and
`ASGIResponse` (header normalisation, `MutableScopeHeaders`) and ~4 % in parsing every request
header into a `Headers` object to read one of them. A handler whose return annotation is an ASGI
application has it sent as is (Litestar's "returning ASGI applications"; CORS, the exception
handler and the request context still wrap it), so such a handler can hand over bytes that are
ready. What Litestar would add to a `Response` it does not add to these: the route's
`status_code`, layer-level `response_headers` and `response_cookies`, `background` tasks, and
`after_request` hooks see this object, not a `Response`. None is configured in this app; a route
that needs them returns a `Response`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from litestar.types import Receive, Scope, Send


def request_header(scope: Any, name: bytes) -> str | None:
    """The first value of a single-valued request header (lower-case `name`), as Litestar's
    `Headers.get` gives it (first header wins, e.g. for X-API-Key); None when absent."""
    for key, value in scope["headers"]:
        if key.lower() == name:  # ASGI servers should lower-case names, but may not
            return str(value.decode("latin-1"))
    return None


def request_header_list(scope: Any, name: bytes) -> str | None:
    """A list-based request header (If-None-Match): sent on several lines it is one
    comma-separated list (RFC 9110 section 5.3). None when absent."""
    values = [value for key, value in scope["headers"] if key.lower() == name]
    if not values:
        return None
    return b", ".join(values).decode("latin-1")


def encoded_fields(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """Response header fields as ASGI wants them: lower-case names, latin-1 values."""
    return [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()
    ]


JSON_TYPE = b"application/json"


def json_response(status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> BytesResponse:
    """A JSON body with `headers` and its Content-Type and Content-Length."""
    headers.append((b"content-type", JSON_TYPE))
    headers.append((b"content-length", b"%d" % len(body)))
    return BytesResponse(status, headers, body)


class BytesResponse:
    """A response whose status, header fields and body are already encoded."""

    __slots__ = ("_body", "_headers", "_status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> None:
        self._status = status
        self._headers = headers
        self._body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # a fresh list per send: middleware (CORS, the request context) may add to it in place
        await send(
            {"type": "http.response.start", "status": self._status, "headers": list(self._headers)}
        )
        await send({"type": "http.response.body", "body": self._body, "more_body": False})
