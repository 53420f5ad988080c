"""The service's exception hierarchy: each error knows the problem+json type and status it maps to.

Every layer raises these; only `fanfinity.api.problems` turns them into responses.
"""

from __future__ import annotations

import math

PROBLEM_TYPE_PREFIX = "urn:fanfinity:problem:"


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


class ClientThrottled(ServiceError):
    """One client address asked for more than its share; it may retry after `retry_after_s`."""

    status = 429
    slug = "too-many-requests"
    title = "Too many requests from this address"

    def __init__(self, detail: str, retry_after_s: float) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}


class AuthThrottled(ClientThrottled):
    slug = "too-many-failed-authentications"
    title = "Too many failed authentications from this address"


class ClientStreamsFull(ClientThrottled):
    slug = "too-many-streams-from-this-address"
    title = "This address holds its maximum number of live streams"
