"""The one mapping from exceptions to RFC 9457 ``application/problem+json`` responses.

Handlers raise; nothing else builds an error response. Unexpected exceptions become a bare 500
problem with the request id and no internals, and are logged with their traceback.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from loguru import logger

from fanfinity.api.middleware import printable_path
from fanfinity.api.validation import InvalidFields, MalformedBody
from fanfinity.errors import PROBLEM_TYPE_PREFIX, ServiceError
from fanfinity.schemas import FieldError

PROBLEM_JSON = "application/problem+json"


class Problem(msgspec.Struct, omit_defaults=True):
    """The problem+json body every error response carries."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] | None = None
    event_id: str | None = msgspec.field(default=None, name="eventId")


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
    """The problem as its response, `instance` being the request's path. Taken from the scope,
    not `request.url`: building that parses the Host header, and a port such as `x:99999999`
    would turn every error answer into a plain-text 500."""
    problem.instance = request.scope["path"]
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
    """A bare 500; the traceback goes to the log with the path escaped as the request log has
    it, so that a `%0A` or `%1B` in the path cannot forge a line or reach a terminal."""
    logger.opt(exception=exc).error(
        "unhandled error on {} {}", request.method, printable_path(request.scope["path"])
    )
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
