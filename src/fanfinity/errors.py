"""Domain exceptions and their one mapping to RFC 9457 ``application/problem+json`` responses.

Handlers raise; nothing else builds an error response. Unexpected exceptions become a bare 500
problem with the request id and no internals, and are logged with their traceback.
"""

from __future__ import annotations

import math
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from loguru import logger

from fanfinity.schemas import FieldError, InvalidFields, MalformedBody

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:fanfinity:problem:"


class Problem(msgspec.Struct, omit_defaults=True):
    """The problem+json body every error response carries."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] | None = None
    event_id: str | None = msgspec.field(default=None, name="eventId")


class ServiceError(Exception):
    """Base of the errors the service raises on purpose; subclasses set the HTTP mapping."""

    status = 500
    slug = "internal-error"
    title = "Internal server error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def headers(self) -> dict[str, str]:
        return {}


class Unauthorized(ServiceError):
    status = 401
    slug = "unauthorized"
    title = "Missing or invalid API key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'ApiKey header="X-API-Key"'}


class Forbidden(ServiceError):
    status = 403
    slug = "forbidden"
    title = "This API key may not do that"


class EventNotFound(ServiceError):
    status = 404
    slug = "event-not-found"
    title = "No such event"


class MatchNotFound(ServiceError):
    status = 404
    slug = "match-not-found"
    title = "No events for this match"


class DuplicateEventConflict(ServiceError):
    status = 409
    slug = "event-id-conflict"
    title = "eventId already used with a different payload"

    def __init__(self, event_id: str) -> None:
        super().__init__(
            f"event {event_id} is already stored with a different payload; "
            "use a new eventId for a new event"
        )
        self.event_id = event_id


class ClientDisconnected(ServiceError):
    """The producer hung up before sending its whole body: nothing was stored, nothing to answer."""

    status = 400
    slug = "client-disconnected"
    title = "The client disconnected before the body was complete"


class HeadersTooLarge(ServiceError):
    status = 431
    slug = "request-headers-too-large"
    title = "Request headers too large"


class UnsupportedMediaType(ServiceError):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


class RateLimited(ServiceError):
    """This producer key sent more events than its token bucket allows."""

    status = 429
    slug = "rate-limited"
    title = "Too many events from this API key"

    def __init__(self, detail: str, headers: dict[str, str], retry_after_s: int) -> None:
        super().__init__(detail)
        self._headers = {**headers, "Retry-After": str(retry_after_s)}

    def headers(self) -> dict[str, str]:
        return self._headers


class StoreUnavailable(ServiceError):
    """The event could not be made durable in time; retrying with the same eventId is safe."""

    status = 503
    slug = "store-unavailable"
    title = "Events cannot be stored right now"

    def __init__(self, detail: str, retry_after_s: float = 1.0, event_id: str | None = None):
        super().__init__(detail)
        self.retry_after_s = retry_after_s
        self.event_id = event_id

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class IngestOverloaded(StoreUnavailable):
    """The ingest queue is full: shed load fast instead of queueing without bound."""

    slug = "ingest-overloaded"
    title = "Too many events in flight"


class StreamsFull(StoreUnavailable):
    """This replica serves its maximum number of live streams; another replica may not."""

    slug = "too-many-streams"
    title = "This replica serves its maximum number of live streams"


class ShuttingDown(StoreUnavailable):
    slug = "shutting-down"
    title = "The service is shutting down"


_STATUS_SLUGS = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    413: ("payload-too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    429: ("too-many-requests", "Too many requests"),
}


def problem_response(
    request: Request[Any, Any, Any], problem: Problem, headers: dict[str, str] | None = None
) -> Response[bytes]:
    problem.instance = request.url.path
    return Response(
        content=msgspec.json.encode(problem),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=headers or {},
    )


def _service_error_handler(request: Request[Any, Any, Any], exc: ServiceError) -> Response[bytes]:
    problem = Problem(
        type=PROBLEM_TYPE_PREFIX + exc.slug,
        title=exc.title,
        status=exc.status,
        detail=exc.detail,
        event_id=getattr(exc, "event_id", None),
    )
    return problem_response(request, problem, exc.headers())


def _malformed_body_handler(request: Request[Any, Any, Any], exc: MalformedBody) -> Response[bytes]:
    problem = Problem(
        type=PROBLEM_TYPE_PREFIX + "malformed-json",
        title="Malformed JSON",
        status=400,
        detail=str(exc),
    )
    return problem_response(request, problem)


def _invalid_fields_handler(request: Request[Any, Any, Any], exc: InvalidFields) -> Response[bytes]:
    problem = Problem(
        type=PROBLEM_TYPE_PREFIX + "invalid-fields",
        title="Invalid fields",
        status=422,
        detail=str(exc),
        errors=exc.errors,
    )
    return problem_response(request, problem)


def _http_exception_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    if status >= HTTP_500_INTERNAL_SERVER_ERROR:
        return _unexpected_error_handler(request, exc)
    slug, title = _STATUS_SLUGS.get(status, ("client-error", "Client error"))
    errors = _parameter_errors(exc)
    problem = Problem(
        type=PROBLEM_TYPE_PREFIX + slug,
        title=title,
        status=status,
        detail=_public_detail(exc, title),
        errors=errors or None,
    )
    if errors:
        problem.detail = "; ".join(f"{error.field}: {error.message}" for error in errors)
    return problem_response(request, problem, dict(exc.headers or {}))


def _unexpected_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    logger.opt(exception=exc).error("unhandled error on {} {}", request.method, request.url.path)
    problem = Problem(
        type=PROBLEM_TYPE_PREFIX + "internal-error",
        title="Internal server error",
        status=500,
        detail="The server failed to handle this request; it has been logged.",
    )
    return problem_response(request, problem)


def _parameter_errors(exc: HTTPException) -> list[FieldError]:
    """Litestar's validation details for query and path parameters, as our field errors."""
    if not isinstance(exc, ValidationException) or not isinstance(exc.extra, list):
        return []
    return [
        FieldError(f"{_source(item.get('source'))}.{item.get('key', '?')}", str(item["message"]))
        for item in exc.extra
        if isinstance(item, dict) and "message" in item
    ]


def _source(source: Any) -> str:
    """Litestar's parameter source is an enum (ParamType.QUERY): name it as clients do."""
    return str(getattr(source, "value", source) or "query")


def _public_detail(exc: HTTPException, fallback: str) -> str:
    detail = exc.detail or fallback
    if exc.status_code == 413:
        return "the request body is larger than this endpoint accepts"
    return detail


EXCEPTION_HANDLERS: Any = {
    ServiceError: _service_error_handler,
    MalformedBody: _malformed_body_handler,
    InvalidFields: _invalid_fields_handler,
    HTTPException: _http_exception_handler,
    Exception: _unexpected_error_handler,
}
