"""API fuzzing from the service's own OpenAPI document (schemathesis, bounded).

Schemathesis reads /schema/openapi.json from the ASGI app in this process (its lifespan runs, so
the batcher, the aggregator and the embedded store are real), generates valid and invalid
requests for every documented operation, and checks each answer: never a 5xx, a status code,
content type, headers and body the document declares, and every 4xx/5xx an RFC 9457
application/problem+json body with type, title, status and detail. Every request carries a
producer key, so the fuzzing reaches the handlers rather than stopping at 401.

The live SSE stream is left out: an open stream only ends at full time, and its 404/400 answers
are covered by tests/api/test_stream_api.py.
"""

from __future__ import annotations

from typing import Any

import pytest

schemathesis = pytest.importorskip(
    "schemathesis",
    reason="schemathesis is not installed: add it to the dev group to fuzz the API",
)

from hypothesis import HealthCheck, settings  # noqa: E402

from fanfinity.api.app import create_app  # noqa: E402
from fanfinity.config import Settings  # noqa: E402
from tests.reliability.service import PROBLEM_JSON, PRODUCER_KEY  # noqa: E402

MAX_EXAMPLES = 30

app = create_app(
    Settings(
        api_keys=frozenset({PRODUCER_KEY}),
        batch_linger_ms=1.0,
        metrics_cache_ms=0.0,
        store_timeout_s=5.0,
        log_level="ERROR",
    )
)
schema = schemathesis.openapi.from_asgi("/schema/openapi.json", app).exclude(path_regex=r"/stream$")

# A service answer to a probe that says "not ready" is a health document, as declared.
HEALTH_DOCUMENT = {("GET", "/health/ready", 503)}


def problem_details_on_errors(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx is application/problem+json with type, title, status and detail."""
    if response.status_code < 400:
        return None
    if (case.method.upper(), case.operation.path, response.status_code) in HEALTH_DOCUMENT:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.startswith(PROBLEM_JSON), (
        f"{response.status_code} with content type {content_type!r}, not {PROBLEM_JSON}"
    )
    body = response.json()
    assert isinstance(body, dict), body
    for member in ("type", "title", "detail"):
        assert isinstance(body.get(member), str), f"problem without a string {member!r}: {body}"
        assert body[member], f"problem with an empty {member!r}: {body}"
    assert body.get("status") == response.status_code, body
    assert "Traceback" not in response.text, "a stack trace reached the client"
    return True


CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
    problem_details_on_errors,
]


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_every_documented_operation_answers_as_documented_and_never_5xx(case: Any) -> None:
    case.call_and_validate(headers={"X-API-Key": PRODUCER_KEY}, checks=CHECKS)
