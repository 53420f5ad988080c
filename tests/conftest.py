"""Shared fixtures: settings, an engine on mongomock, and the app through Litestar's test client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import hypothesis
import pytest
import uvicorn
from litestar import Litestar
from litestar.testing import AsyncTestClient

from fanfinity.api.app import create_app
from fanfinity.config import Settings
from fanfinity.storage.engine import Engine, open_engine

# CI gates merges, so there the property and fuzz tests replay the same examples every run;
# locally they explore new ones each time.
hypothesis.settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis.settings.load_profile("ci")

PRODUCER_KEY = "test-producer-key-0001"
OTHER_PRODUCER_KEY = "test-producer-key-0002"


@pytest.fixture
def settings() -> Settings:
    return Settings(
        api_keys=frozenset({PRODUCER_KEY, OTHER_PRODUCER_KEY}),
        batch_linger_ms=1.0,
        metrics_cache_ms=0.0,
        store_timeout_s=2.0,
        log_level="WARNING",
    )


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[Engine]:
    engine = await open_engine(settings)
    yield engine
    engine.close()


@pytest.fixture
def app(settings: Settings) -> Litestar:
    return create_app(settings)


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=app) as test_client:
        test_client.headers["X-API-Key"] = PRODUCER_KEY
        yield test_client


def with_settings(settings: Settings, **changes: object) -> Settings:
    return replace(settings, **changes)  # type: ignore[arg-type]


async def post_concurrently(
    client: AsyncTestClient[Litestar], path: str, bodies: list[dict[str, Any]]
) -> list[httpx.Response]:
    """Really concurrent POSTs: AsyncTestClient runs each request to completion on its portal's
    loop, so gathering its own calls would send them one at a time."""

    async def post_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=client.app),
            base_url="http://testserver.local",
            headers={"X-API-Key": PRODUCER_KEY},
        ) as http:
            return await asyncio.gather(*(http.post(path, json=body) for body in bodies))

    return await asyncio.to_thread(client.blocking_portal.call, post_all)


def free_port() -> int:
    """A port nobody listens on right now (the kernel picks it; the server binds it next)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def serving(app: Litestar, **config: Any) -> AsyncIterator[str]:
    """The app behind a real uvicorn socket on this event loop (streams need a real server);
    yields its base URL. `config` goes to uvicorn (for example `http=` a protocol class)."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on", **config)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
