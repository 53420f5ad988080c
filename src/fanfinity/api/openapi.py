"""OpenAPI for bodies the handlers decode themselves (raw bytes, for precise 400/415/422 answers).

Litestar documents request bodies from a `data` parameter; ours are read as bytes, so this module
puts msgspec's JSON Schema for the Struct, with its `$defs` inlined, into the operation. Patterns
are written for Python (``\\A...\\Z``, a full match) and stated for ECMA-262, the dialect of JSON
Schema, as `^...$` (which there never accepts a trailing newline).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import msgspec
from litestar.openapi.spec import Operation

from fanfinity.schemas import (
    EARLIEST_TIMESTAMP,
    MAX_BATCH_EVENTS,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MatchEventIn,
)


def inline_json_schema(schema_type: Any) -> dict[str, Any]:
    """msgspec's JSON Schema for a type with every ``$ref`` replaced by its definition."""
    schema = msgspec.json.schema(schema_type)
    definitions: dict[str, Any] = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            reference = node.get("$ref")
            if isinstance(reference, str) and reference.startswith("#/$defs/"):
                return resolve(definitions[reference.removeprefix("#/$defs/")])
            return {
                key: ecma_pattern(value) if key == "pattern" else resolve(value)
                for key, value in node.items()
            }
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def ecma_pattern(pattern: Any) -> Any:
    """A Python full-match pattern (``\\A...\\Z``) in ECMA-262 terms (``^...$``)."""
    if isinstance(pattern, str) and pattern.startswith("\\A") and pattern.endswith("\\Z"):
        return f"^{pattern[2:-2]}$"
    return pattern


def event_body_schema(today: date | None = None) -> dict[str, Any]:
    """`MatchEventIn`'s schema plus what the validator checks after decoding, where JSON Schema
    can say it: the timestamp's years (2000 to next year; the exact bound, 24 hours from now,
    is in the description) and the metadata keys MongoDB can store."""
    schema = inline_json_schema(MatchEventIn)
    properties = schema["properties"]
    last_year = (today or datetime.now(UTC).date()).year + 1
    properties["timestamp"]["pattern"] = (
        f"^(?:{_year_alternatives(EARLIEST_TIMESTAMP.year, last_year)})-"
    )
    properties["timestamp"]["description"] = (
        "ISO 8601 with a zone offset or Z, stored in UTC; from 2000-01-01T00:00:00Z to at most "
        "24 hours after the server's clock"
    )
    metadata = properties["metadata"]
    for branch in metadata["anyOf"]:
        if branch.get("type") == "object":
            # MongoDB refuses keys starting with $ or holding . or NUL (checked at any depth)
            branch["propertyNames"] = {"pattern": "^(?:[^$.\\u0000][^.\\u0000]*)?$"}
            branch["maxProperties"] = MAX_METADATA_BYTES // 4  # '"":0,' is the smallest member
    metadata["description"] = (
        f"Free-form JSON object, at most {MAX_METADATA_BYTES} bytes serialised and "
        f"{MAX_METADATA_DEPTH} levels deep; integers within 64 bits; no key (at any depth) "
        "starting with $ or holding . or NUL"
    )
    return schema


def batch_body_schema(event_schema: dict[str, Any]) -> dict[str, Any]:
    """1 to 500 items, as an array or as `{"events": [...]}`. Items are not refused with the
    batch: each is validated as a single event and an invalid one is reported `invalid` in its
    result, so any JSON value is an acceptable item."""
    item = {
        "anyOf": [event_schema, {}],
        "description": "an event; anything else is answered `invalid` in its item's result",
    }
    items = {"type": "array", "minItems": 1, "maxItems": MAX_BATCH_EVENTS, "items": item}
    wrapped = {
        "type": "object",
        "properties": {"events": items},
        "required": ["events"],
        "additionalProperties": False,
    }
    return {"anyOf": [items, wrapped]}


def _year_alternatives(first: int, last: int) -> str:
    return "|".join(str(year) for year in range(first, last + 1))


def operation_with_json_body(
    schema: dict[str, Any], example: Any, description: str
) -> type[Operation]:
    """An `Operation` class whose request body is `schema` as application/json."""
    request_body = {
        "required": True,
        "description": description,
        "content": {"application/json": {"schema": schema, "example": example}},
    }

    @dataclass
    class JsonBodyOperation(Operation):
        def to_schema(self) -> dict[str, Any]:
            document = super().to_schema()
            document["requestBody"] = request_body
            return document

    return JsonBodyOperation
