"""OpenAPI for the metrics reads where Litestar's generated document cannot say it all.

The plain read gains its caching headers and the 304 of a conditional request; the stream says
what each Server-Sent Event carries (OpenAPI 3.1 has a sequential media type's `schema` describe
one event, and `contentSchema` the JSON inside its `data` string), so a contract tester such as
schemathesis can check every frame against the metrics object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar.openapi.spec import Operation

from fanfinity.pipeline.reads import SHARED_CACHE_CONTROL

METRICS_REF = {"$ref": "#/components/schemas/MatchMetrics"}
CACHE_HEADERS = {
    "ETag": {
        "description": "Weak entity tag of the body; changes exactly when the summary changes",
        "schema": {"type": "string", "examples": ['W/"5d41402abc4b2a76b9719d91"']},
    },
    "Cache-Control": {
        "description": (
            f"`{SHARED_CACHE_CONTROL}` while reads are open (a CDN may share the body); "
            "`private, max-age=1` when FANFINITY_READ_API_KEYS is set"
        ),
        "schema": {"type": "string"},
    },
}
NOT_MODIFIED = {
    "description": "Not Modified: the If-None-Match tag is current; no body",
    "headers": CACHE_HEADERS,
}
STREAM_EVENT = {
    "oneOf": [
        {
            "type": "object",
            "description": "The match's current metrics (the body of the metrics endpoint)",
            "required": ["event", "data"],
            "properties": {
                "event": {"const": "metrics"},
                "id": {"type": "string", "description": "Sequence number of the update"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": METRICS_REF,
                },
            },
        },
        {
            "type": "object",
            "description": "Full time (or shutdown): the stream ends after this event",
            "required": ["event", "data"],
            "properties": {
                "event": {"const": "end"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"type": "object", "maxProperties": 0},
                },
            },
        },
    ]
}


@dataclass
class MetricsReadOperation(Operation):
    """The metrics read with its ETag/Cache-Control headers and its 304."""

    def to_schema(self) -> dict[str, Any]:
        document = super().to_schema()
        responses = document.setdefault("responses", {})
        responses.setdefault("200", {"description": "Metrics"})["headers"] = CACHE_HEADERS
        responses["304"] = NOT_MODIFIED
        parameters = document.setdefault("parameters", [])
        parameters.append(
            {
                "name": "If-None-Match",
                "in": "header",
                "required": False,
                "description": "An ETag from an earlier response: 304 without a body if current",
                "schema": {"type": "string"},
            }
        )
        return document


@dataclass
class MetricsStreamOperation(Operation):
    """The SSE stream whose events' `data` is the metrics object."""

    def to_schema(self) -> dict[str, Any]:
        document = super().to_schema()
        ok = document.setdefault("responses", {}).setdefault("200", {})
        ok["description"] = "Server-Sent Events: `metrics` events, then one `end` event"
        ok["content"] = {"text/event-stream": {"schema": STREAM_EVENT}}
        return document
