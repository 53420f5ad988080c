"""The OpenAPI document tells clients which calls need an X-API-Key, and it must say the truth.

Health probes are open (a kubelet sends no key); reads are open unless FANFINITY_READ_API_KEYS is
set, so a key is optional there; writes always need a producer key. A generated client or
Swagger UI that believes the document otherwise sends keys where none is needed, or none where
one is. Schemathesis reports the same mismatch as "API accepts requests without authentication".
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from fanfinity.api.app import create_app
from fanfinity.config import Settings
from tests.reliability.service import PRODUCER_KEY

KEY_REQUIRED = [{"apiKey": []}]
# OpenAPI: an empty requirement object ({}) means "no credentials"; an empty list, "none needed".
OPEN: tuple[list[dict[str, list[str]]], ...] = ([], [{}])


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient[Any]]:
    """The app with producer keys and no read keys (the default), and no key on requests."""
    app = create_app(Settings(api_keys=frozenset({PRODUCER_KEY}), log_level="ERROR"))
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def openapi(client: TestClient[Any]) -> dict[str, Any]:
    document: dict[str, Any] = client.get("/schema/openapi.json").json()
    return document


def security_of(document: dict[str, Any], method: str, path: str) -> list[dict[str, list[str]]]:
    operation = document["paths"][path][method]
    security: list[dict[str, list[str]]] = operation.get("security", document.get("security", []))
    return security


def operations(document: dict[str, Any], prefix: str, method: str) -> list[str]:
    return [
        path
        for path, item in document["paths"].items()
        if path.startswith(prefix) and method in item
    ]


def test_every_write_is_documented_as_needing_a_producer_key(
    client: TestClient[Any], openapi: dict[str, Any]
) -> None:
    writes = operations(openapi, "/api/", "post")
    assert writes
    for path in writes:
        assert client.post(path, json={}).status_code == 401, path
        assert security_of(openapi, "post", path) == KEY_REQUIRED, path


def test_health_probes_are_documented_as_open(
    client: TestClient[Any], openapi: dict[str, Any]
) -> None:
    for path in ("/health/live", "/health/ready"):
        assert client.get(path).status_code == 200, path
        assert security_of(openapi, "get", path) in OPEN, (
            f"GET {path} answers without a key but the document requires one"
        )


def test_reads_are_documented_with_an_optional_key(
    client: TestClient[Any], openapi: dict[str, Any]
) -> None:
    assert client.get("/api/matches").status_code == 200  # no read keys configured: open
    reads = operations(openapi, "/api/", "get")
    assert reads
    for path in reads:
        security = security_of(openapi, "get", path)
        assert {} in security, f"GET {path} is open without FANFINITY_READ_API_KEYS: {security}"
        assert {"apiKey": []} in security, path
