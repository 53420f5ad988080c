"""Request bodies: read, decode, validate, fingerprint. The handlers' one way in for a body.

Bodies are read as raw bytes and decoded here with msgspec (not by the framework's `data`
parameter, Litestar's documented pattern for bodies parsed by hand) so that wrong content type
(415), malformed JSON (400), invalid fields (422) and per-item validation in a batch are told
apart precisely and cheaply. Whatever the bytes, the outcome is one of those problems: invalid
UTF-8 (which msgspec reports as `UnicodeDecodeError`, not `DecodeError`) and lone surrogate escapes
are malformed JSON, never a 500.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import MAXYEAR, UTC, datetime
from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import ClientException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.types import Empty
from litestar.utils.scope.state import ScopeState

from fanfinity.api.raw import request_header
from fanfinity.errors import ClientDisconnected, UnsupportedMediaType
from fanfinity.schemas import (
    EARLIEST_TIMESTAMP,
    IDENTIFIER_PATTERN,
    INT64_MAX,
    INT64_MIN,
    MAX_BATCH_EVENTS,
    MAX_FUTURE_SKEW,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    FieldError,
    MatchEventIn,
    ValidEvent,
)

# A batch is validated in slices of about this many body bytes (or items), yielding to the event
# loop in between: a 512 KiB batch of deep items costs tens of ms of CPU, and single-event
# producers must not wait for all of it (issue 18). A slice takes about 1-4 ms.
SLICE_BYTES = 8 * 1024
SLICE_ITEMS = 32

_IDENTIFIER_RE = re.compile(IDENTIFIER_PATTERN)


class MalformedBody(Exception):
    """The body is not JSON at all (400), as opposed to JSON with invalid fields (422)."""


class InvalidFields(Exception):
    """JSON that does not describe a valid event (422); carries every reason found."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{error.field}: {error.message}" for error in errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class JsonBody:
    """A request body that was sent as JSON, not yet decoded."""

    raw: bytes

    @property
    def size(self) -> int:
        return len(self.raw)

    def event(self, now: datetime) -> ValidEvent:
        """The body as one event; raises `MalformedBody` or `InvalidFields`."""
        return decode_event(self.raw, now)

    def batch_items(self) -> list[msgspec.Raw]:
        """The body split into its raw batch items (cheap: items are skipped, not decoded)."""
        return decode_batch(self.raw)


async def read_json_body(request: Request[Any, Any, Any]) -> JsonBody:
    """The raw body of a JSON request: 415 for another content type; a client that hangs up
    mid-body is its own (4xx) outcome, not a 500."""
    content_type = request_header(request.scope, b"content-type") or ""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType(
            f"send the body as application/json, not {media_type or 'no content type'}"
        )
    return JsonBody(await read_body(request))


async def read_body(request: Request[Any, Any, Any]) -> bytes:
    """The whole body, within the route's `request_max_body_size` (413 above it, before reading
    when Content-Length announces it); a client that hangs up mid-body is `ClientDisconnected`.

    What `Request.body()` does, read straight from `receive`: Litestar's builds a `Headers` of
    every request header to find Content-Length and streams through an async generator (~6 us
    more in a microbenchmark, 13-43 us more of the service's CPU per request under wrk). The
    body is left where `Request.body()` finds it, so a later reader gets it too."""
    state = ScopeState.from_scope(request.scope)
    if state.body is not Empty:
        return state.body
    limit = request.route_handler.resolve_request_max_body_size() or math.inf
    announced = request_header(request.scope, b"content-length")
    if announced is not None:
        try:
            length = int(announced)
        except ValueError:
            raise ClientException(f"Invalid content-length: {announced!r}") from None
        if length > limit:
            raise RequestEntityTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")  # ASGI: `body` is optional, default b""
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise RequestEntityTooLarge
                chunks.append(bytes(chunk))  # a server may hand over any bytes-like piece
            if not message.get("more_body", False):
                break
        elif message["type"] == "http.disconnect":
            raise ClientDisconnected("client disconnected prematurely")
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    state.body = body
    return body


def decode_event(body: bytes, now: datetime) -> ValidEvent:
    """Parse one event body; raises `MalformedBody` or `InvalidFields`."""
    try:
        raw = msgspec.json.decode(body, type=MatchEventIn)
    except msgspec.ValidationError as exc:
        raise InvalidFields([_field_error(exc, "$")]) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise MalformedBody(_decode_reason(exc, body)) from None
    except RecursionError:
        raise InvalidFields([FieldError("$", "nested too deeply")]) from None
    return _check_event(raw, now, "$")


class _WrappedBatch(msgspec.Struct, forbid_unknown_fields=True):
    events: list[msgspec.Raw]


def decode_batch(body: bytes) -> list[msgspec.Raw]:
    """Split a batch body into its raw items; each is then decoded and validated on its own,
    exactly as a single event would be. The whole body must be UTF-8 (msgspec does not check the
    items it skips), so a bad byte anywhere refuses the batch as malformed, not one item."""
    try:
        parsed = msgspec.json.decode(body, type=list[msgspec.Raw] | _WrappedBatch)
    except msgspec.ValidationError:
        raise InvalidFields(
            [FieldError("$", 'expected a JSON array of events or {"events": [...]}')]
        ) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise MalformedBody(_decode_reason(exc, body)) from None
    except RecursionError:
        raise InvalidFields([FieldError("$", "nested too deeply")]) from None
    if not body.isascii():  # word-at-a-time in C; only non-ASCII bodies pay for the full check
        try:
            body.decode()
        except UnicodeDecodeError as exc:
            raise MalformedBody(_decode_reason(exc, body)) from None
    items = parsed.events if isinstance(parsed, _WrappedBatch) else parsed
    if not items:
        raise InvalidFields([FieldError("$", "the batch is empty")])
    if len(items) > MAX_BATCH_EVENTS:
        raise InvalidFields(
            [FieldError("$", f"at most {MAX_BATCH_EVENTS} events per batch, got {len(items)}")]
        )
    return items


def convert_event(item: msgspec.Raw, now: datetime, path: str) -> ValidEvent:
    """Validate one batch item with the single-event rules; raises `InvalidFields`."""
    try:
        raw = msgspec.json.decode(item, type=MatchEventIn)
    except msgspec.ValidationError as exc:
        raise InvalidFields([_field_error(exc, path)]) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # decode_batch checked the body
        raise InvalidFields([FieldError(path, f"not valid JSON: {exc}")]) from None
    except RecursionError:
        raise InvalidFields([FieldError(path, "nested too deeply")]) from None
    return _check_event(raw, now, path)


async def validate_batch(
    items: Sequence[msgspec.Raw], now: datetime
) -> list[ValidEvent | list[FieldError]]:
    """Every item validated (or its reasons for refusal), in order, in slices of about
    `SLICE_BYTES` that yield to the event loop in between: a batch's CPU is spread out instead of
    holding up every other request for its whole duration."""
    results: list[ValidEvent | list[FieldError]] = []
    budget_bytes, budget_items = SLICE_BYTES, SLICE_ITEMS
    for index, item in enumerate(items):
        try:
            results.append(convert_event(item, now, f"$[{index}]"))
        except InvalidFields as exc:
            results.append(exc.errors)
        budget_bytes -= len(item)
        budget_items -= 1
        if (budget_bytes <= 0 or budget_items <= 0) and index + 1 < len(items):
            await asyncio.sleep(0)
            budget_bytes, budget_items = SLICE_BYTES, SLICE_ITEMS
    return results


def is_identifier(value: str) -> bool:
    """True when `value` is a valid matchId/teamId (used for path parameters)."""
    return _IDENTIFIER_RE.fullmatch(value) is not None


def canonical_uuid(value: str) -> str | None:
    """The canonical form of an event id given in a path, or None when it is not a UUID."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _check_event(raw: MatchEventIn, now: datetime, path: str) -> ValidEvent:
    errors: list[FieldError] = []
    timestamp = _in_utc(raw.timestamp)
    if timestamp > now + MAX_FUTURE_SKEW:
        errors.append(FieldError(f"{path}.timestamp", "more than 24 hours in the future"))
    elif timestamp < EARLIEST_TIMESTAMP:
        errors.append(FieldError(f"{path}.timestamp", "before 2000-01-01T00:00:00Z"))
    metadata_json = None
    if raw.metadata is not None:
        metadata_json = msgspec.json.encode(raw.metadata, order="sorted")
        errors.extend(check_metadata(raw.metadata, f"{path}.metadata", metadata_json))
    if errors:
        raise InvalidFields(errors)
    event_id = str(raw.event_id) if raw.event_id is not None else str(uuid.uuid4())
    return ValidEvent(
        event_id=event_id,
        match_id=raw.match_id,
        event_type=raw.event_type,
        timestamp=timestamp,
        team_id=raw.team_id,
        player_id=raw.player_id,
        metadata=raw.metadata,
        fingerprint=payload_fingerprint(raw, timestamp, metadata_json),
    )


def _in_utc(timestamp: datetime) -> datetime:
    """The timestamp in UTC. One whose UTC form leaves years 1-9999 (`9999-12-31T23:59-23:59`,
    `0001-01-01T00:00+01:00`) makes `astimezone` raise OverflowError: it becomes the calendar's
    end it passed, which the range checks then refuse like any other out-of-range time."""
    try:
        return timestamp.astimezone(UTC)
    except OverflowError:
        end = datetime.max if timestamp.year == MAXYEAR else datetime.min
        return end.replace(tzinfo=UTC)


def check_metadata(
    metadata: dict[str, Any], path: str, encoded: bytes | None = None
) -> list[FieldError]:
    """Size, depth, and what MongoDB can store: keys without `$`, `.` or NUL; 64-bit integers.

    `encoded` is the metadata's JSON when the caller has it. Only containers go on the walk's
    stack and scalars are checked where they stand: a 16 KiB list of integers costs ~0.2 ms."""
    size = len(encoded if encoded is not None else msgspec.json.encode(metadata))
    if size > MAX_METADATA_BYTES:
        return [FieldError(path, f"at most {MAX_METADATA_BYTES} bytes serialised, got {size}")]
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(metadata, 1)]
    while stack:  # iterative: a deeply nested body must not exhaust the interpreter's stack
        container, depth = stack.pop()
        if depth > MAX_METADATA_DEPTH:
            return [FieldError(path, f"at most {MAX_METADATA_DEPTH} levels deep")]
        if type(container) is dict:
            for key in container:
                if key.startswith("$") or "." in key or "\x00" in key:
                    return [
                        FieldError(path, f"keys may not start with $ or hold '.' or NUL: {key!r}")
                    ]
            values: Any = container.values()
        else:
            values = container
        for value in values:
            kind = type(value)
            if kind is dict or kind is list:
                stack.append((value, depth + 1))
            elif kind is int and not (INT64_MIN <= value <= INT64_MAX):
                return [FieldError(path, "integers must fit in 64 bits (MongoDB's widest integer)")]
    return []


def payload_fingerprint(
    raw: MatchEventIn, timestamp: datetime, metadata_json: bytes | None = None
) -> str:
    """Hash of everything the producer said except the eventId: equal payloads, equal hashes.

    `metadata_json` is the metadata already encoded with sorted keys (spliced in as is: the
    canonical bytes, and so the hash, are the same as encoding it here)."""
    metadata: Any = raw.metadata
    if metadata_json is not None:
        metadata = msgspec.Raw(metadata_json)
    canonical = msgspec.json.encode(
        {
            "matchId": raw.match_id,
            "eventType": raw.event_type,
            "timestamp": timestamp.isoformat(),
            "teamId": raw.team_id,
            "playerId": raw.player_id,
            "metadata": metadata,
        },
        order="sorted",
    )
    return hashlib.sha256(canonical).hexdigest()


_NAMED_FIELD = re.compile(r"\AObject (?:contains unknown|missing required) field `([^`]+)`\Z")
# A \uD800-\uDBFF escape not followed by a \uDC00-\uDFFF one, or a \uDC00-\uDFFF one on its
# own; the escape's backslash must not itself be escaped (an odd run of backslashes).
_LONE_SURROGATE = re.compile(
    rb"(?<!\\)(?:\\\\)*(?P<escape>\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2})"
)
_UTF8_BOM = b"\xef\xbb\xbf"


def _field_error(exc: msgspec.ValidationError, base: str) -> FieldError:
    """Map msgspec's "message - at `$.path`" to a FieldError whose path names the field itself."""
    text = str(exc)
    message, _, location = text.rpartition(" - at `")
    if not message:
        message, location = text, "$`"
    path = base + location.rstrip("`")[1:]
    named = _NAMED_FIELD.match(message)
    if named:  # msgspec reports these at the enclosing object; point at the field
        path = f"{path}.{named.group(1)}"
    return FieldError(path, message)


def _decode_reason(exc: msgspec.DecodeError | UnicodeDecodeError, body: bytes) -> str:
    """What is wrong with the bytes, with the offset in the body where msgspec's message would
    mislead (its UTF-8 offsets are relative to one string, and a lone surrogate reads as
    "truncated")."""
    if not body.strip():
        return "the request body is empty"
    if isinstance(exc, UnicodeDecodeError):
        try:
            body.decode()
        except UnicodeDecodeError as whole:
            return (
                f"the body is not valid UTF-8: byte 0x{body[whole.start]:02x} at offset "
                f"{whole.start} ({whole.reason}); JSON must be sent as UTF-8"
            )
    message = str(exc)
    surrogate = (  # msgspec says "truncated", "end of hex escape" or "surrogate pair" for these
        _LONE_SURROGATE.search(body)
        if any(word in message for word in ("truncated", "escape", "surrogate"))
        else None
    )
    if surrogate is not None:
        return (
            "the body is not valid JSON: lone UTF-16 surrogate escape "
            f"{surrogate.group('escape').decode()} at offset {surrogate.start('escape')} "
            "(a string must hold whole Unicode characters)"
        )
    if body.startswith(_UTF8_BOM):
        return "the body is not valid JSON: it starts with a UTF-8 byte order mark"
    return f"the body is not valid JSON: {message}"
