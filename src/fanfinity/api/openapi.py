"""OpenAPI for bodies the handlers decode themselves (raw bytes, for precise 400/415/422 answers).

Litestar documents request bodies from a `data` parameter; ours are read as bytes, so this module
puts msgspec's JSON Schema for the Struct, with its `$defs` inlined, into the operation. Patterns
are written for Python (``\\A...\\Z``, a full match) and stated for ECMA-262, the dialect of JSON
Schema, as `^...$` (which there never accepts a trailing newline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.openapi.spec import Operation


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


def operation_with_json_body(schema_type: Any, example: Any, description: str) -> type[Operation]:
    """An `Operation` class whose request body is `schema_type` as application/json."""
    request_body = {
        "required": True,
        "description": description,
        "content": {
            "application/json": {"schema": inline_json_schema(schema_type), "example": example}
        },
    }

    @dataclass
    class JsonBodyOperation(Operation):
        def to_schema(self) -> dict[str, Any]:
            document = super().to_schema()
            document["requestBody"] = request_body
            return document

    return JsonBodyOperation
