"""Inputs a hostile fuzz found turning into 500s: timestamps whose UTC form leaves the calendar,
Host headers whose port does not parse, static paths no file system can hold, and a path that
would forge a line in the log of an unexpected error. Each must meet a clear 4xx problem+json
(or, for the log, an escaped line)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from litestar import Litestar, get
from litestar.params import FromPath
from litestar.testing import AsyncTestClient
from loguru import logger

from tests.api.test_ingest_api import assert_problem
from tests.conftest import PRODUCER_KEY
from tests.factories import event_body

BAD_HOSTS = ["x:99999999", "a:b:c", "[::1]:x"]
FORGED = "x%0A2026-12-03T06:00:00.000+00:00%20CRITICAL%20forged%1B%5B31m"


@pytest.fixture
async def answers(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """A client that gets the app's 500s as answers, as a real client would, not as raised
    exceptions."""
    async with AsyncTestClient(app=app, raise_server_exceptions=False) as test_client:
        test_client.headers["X-API-Key"] = PRODUCER_KEY
        yield test_client


@pytest.fixture
def log_messages() -> Iterator[list[str]]:
    """Every log message (any logger, any level) written while the test runs."""
    messages: list[str] = []
    sink = logger.add(lambda message: messages.append(message.record["message"]), level="DEBUG")
    yield messages
    logger.remove(sink)


@pytest.mark.parametrize(
    ("timestamp", "message"),
    [
        ("9999-12-31T23:59:59-23:59", "more than 24 hours in the future"),
        ("0001-01-01T00:00:00+01:00", "before 2000-01-01T00:00:00Z"),
    ],
)
async def test_a_timestamp_outside_the_calendar_in_utc_is_a_422_on_timestamp(
    answers: AsyncTestClient[Litestar], timestamp: str, message: str
) -> None:
    response = await answers.post("/api/events", json=event_body(timestamp=timestamp))
    body = assert_problem(response, 422)
    assert body["errors"] == [{"field": "$.timestamp", "message": message}]


async def test_a_batch_item_whose_timestamp_overflows_is_refused_alone(
    answers: AsyncTestClient[Litestar],
) -> None:
    first, last = event_body(), event_body()
    items = [first, event_body(timestamp="9999-12-31T23:59:59-23:59"), last]
    response = await answers.post("/api/events/batch", json=items)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["status"] for item in body["items"]] == ["accepted", "invalid", "accepted"]
    assert body["items"][1]["errors"][0]["field"] == "$[1].timestamp"
    for event in (first, last):
        assert (await answers.get(f"/api/events/{event['eventId']}")).status_code == 200


@pytest.mark.parametrize("host", BAD_HOSTS)
@pytest.mark.parametrize(
    ("method", "path", "key", "status"),
    [
        ("GET", "/nope", PRODUCER_KEY, 404),
        ("POST", "/api/events", "", 401),
        ("DELETE", "/api/events", PRODUCER_KEY, 405),
        ("POST", "/api/events", PRODUCER_KEY, 422),
        ("GET", "/schema/not-a-page", PRODUCER_KEY, 404),
    ],
)
async def test_an_unparsable_host_port_does_not_break_error_answers(
    answers: AsyncTestClient[Litestar], host: str, method: str, path: str, key: str, status: int
) -> None:
    response = await answers.request(
        method, path, headers={"Host": host, "X-API-Key": key}, json={"matchId": "m"}
    )
    assert assert_problem(response, status)["instance"] == path


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/static/%00", id="nul-byte"),
        pytest.param("/static/" + "a" * 256, id="name-too-long"),
        pytest.param("/static" + "/a" * 3000, id="path-too-long"),
        pytest.param("/static/dashboard.js/x", id="file-as-directory"),
    ],
)
async def test_a_static_path_no_file_can_have_is_a_404(
    answers: AsyncTestClient[Litestar], path: str
) -> None:
    assert_problem(await answers.get(path), 404)


async def test_a_forged_static_path_is_a_404_and_forges_no_log_line(
    answers: AsyncTestClient[Litestar], log_messages: list[str]
) -> None:
    assert_problem(await answers.get(f"/static/{FORGED}{'a' * 256}"), 404)
    assert log_messages
    assert all("\n" not in line and "\x1b" not in line for line in log_messages)


async def test_an_unexpected_error_logs_its_path_escaped(
    app: Litestar, answers: AsyncTestClient[Litestar], log_messages: list[str]
) -> None:
    # a route of the test's own: no route of the service fails on purpose
    @get("/boom/{rest:str}", sync_to_thread=False)
    def boom(rest: FromPath[str]) -> None:
        raise RuntimeError("boom")

    app.register(boom)
    assert_problem(await answers.get(f"/boom/{FORGED}"), 500)
    unhandled = [line for line in log_messages if line.startswith("unhandled error")]
    assert unhandled == [
        "unhandled error on GET /boom/x\\n2026-12-03T06:00:00.000+00:00 CRITICAL forged\\x1b[31m"
    ]
