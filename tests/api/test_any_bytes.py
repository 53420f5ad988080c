"""Whatever bytes a producer sends, the answer is a 2xx or a 4xx problem, never a 5xx.

Schema-driven fuzzing (tests/reliability/test_fuzz.py) only ever sends valid UTF-8 JSON; these
properties throw arbitrary bytes and mutated valid bodies at both write endpoints, and control
characters at every query and path parameter, through HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from fanfinity.api.app import create_app
from fanfinity.config import Settings
from tests.conftest import PRODUCER_KEY
from tests.factories import event_body

PROBLEM = "application/problem+json"
WRITES = ("/api/events", "/api/events/batch")
FUZZ = settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient[Any]]:
    app = create_app(
        Settings(
            api_keys=frozenset({PRODUCER_KEY}),
            batch_linger_ms=1.0,
            store_timeout_s=5.0,
            log_level="ERROR",
        )
    )
    with TestClient(app) as test_client:
        test_client.headers["X-API-Key"] = PRODUCER_KEY
        yield test_client


def assert_answered(response: Any) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith(PROBLEM), response.headers
        problem = response.json()
        assert problem["status"] == response.status_code
        assert problem["type"].startswith("urn:fanfinity:problem:")
        assert problem["detail"]


def post(client: TestClient[Any], path: str, body: bytes) -> None:
    assert_answered(client.post(path, content=body, headers={"content-type": "application/json"}))


VALID_BODIES = {
    "/api/events": msgspec.json.encode(event_body(eventId=None)),
    "/api/events/batch": msgspec.json.encode([event_body(eventId=None) for _ in range(3)]),
}


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """A valid body with a few bytes replaced, inserted or cut: mostly-JSON with bad spots."""
    body = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(body)))
        action = draw(st.sampled_from(["replace", "insert", "truncate"]))
        if action == "truncate":
            del body[position:]
        elif action == "insert" or position == len(body):
            body[position:position] = draw(st.binary(min_size=1, max_size=4))
        else:
            body[position] = draw(st.integers(0, 255))
    return bytes(body)


@FUZZ
@given(path=st.sampled_from(WRITES), body=st.binary(max_size=2_048))
def test_arbitrary_bytes_are_never_a_server_error(
    client: TestClient[Any], path: str, body: bytes
) -> None:
    post(client, path, body)


@FUZZ
@given(data=st.data(), path=st.sampled_from(WRITES))
def test_mutated_valid_bodies_are_never_a_server_error(
    client: TestClient[Any], data: st.DataObject, path: str
) -> None:
    post(client, path, data.draw(mutated(VALID_BODIES[path])))


CONTROL = st.text(
    alphabet=st.characters(categories=["Cc", "Cf", "Zl", "Zp", "Zs"]), min_size=1, max_size=3
)
WORD = st.sampled_from(["", "live", "m1", "20", "alhilal-vs-alnassr"])


@FUZZ
@given(
    name=st.sampled_from(["status", "limit", "offset"]),
    before=WORD,
    control=CONTROL,
    after=WORD,
)
def test_control_characters_in_query_parameters_are_4xx_problems(
    client: TestClient[Any], name: str, before: str, control: str, after: str
) -> None:
    response = client.get("/api/matches", params={name: before + control + after})
    assert response.status_code == 400, response.text
    assert_answered(response)


@FUZZ
@given(before=WORD, control=CONTROL, after=WORD)
def test_control_characters_in_path_ids_are_404_problems(
    client: TestClient[Any], before: str, control: str, after: str
) -> None:
    identifier = quote(before + control + after, safe="")
    for path in (f"/api/matches/{identifier}/metrics", f"/api/events/{identifier}"):
        response = client.get(path)
        assert response.status_code == 404, (path, response.text)
        assert_answered(response)
