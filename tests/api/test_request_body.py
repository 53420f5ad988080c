"""How an event body is read off the connection (`validation.read_body`): in pieces, without a
Content-Length, over the limit, cut off by a disconnect, or with a Content-Length that is not a
number. Driven through the whole app at the ASGI level, where the body's messages can be scripted
as a server would deliver them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import msgspec
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.conftest import PRODUCER_KEY
from tests.factories import event_body as goal

LIMIT = 32 * 1024  # MAX_EVENT_BYTES of POST /api/events


async def post_in_messages(
    app: Litestar, messages: Iterable[dict[str, Any]], content_length: int | str | None = None
) -> tuple[int, dict[str, Any]]:
    """POST /api/events with its body delivered as `messages`; the status and decoded answer."""
    headers = [(b"content-type", b"application/json"), (b"x-api-key", PRODUCER_KEY.encode())]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 40000),
        "scheme": "http",
        "root_path": "",
        "method": "POST",
        "path": "/api/events",
        "raw_path": b"/api/events",
        "query_string": b"",
        "headers": headers,
        "state": {},
    }
    pending = list(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await asyncio.sleep(3600)  # a server has nothing more to deliver until the client acts
        raise AssertionError("the app read past the end of the body")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    status = sent[0]["status"]
    body = b"".join(message.get("body", b"") for message in sent[1:])
    return status, msgspec.json.decode(body)


def pieces(body: bytes, size: int) -> list[dict[str, Any]]:
    chunks = [body[start : start + size] for start in range(0, len(body), size)]
    return [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks)
    ]


async def stored(client: AsyncTestClient[Litestar], event_id: str) -> bool:
    response = await client.get(f"/api/events/{event_id}")
    return response.status_code == 200


async def test_a_body_in_pieces_without_content_length_is_stored(
    app: Litestar, client: AsyncTestClient[Litestar]
) -> None:
    event = goal()
    messages = [*pieces(msgspec.json.encode(event), 7), {"type": "http.request", "body": b""}]
    status, answer = await post_in_messages(app, messages)
    assert (status, answer["eventId"]) == (202, event["eventId"])
    assert await stored(client, event["eventId"])


async def test_pieces_past_the_limit_are_413_and_nothing_is_stored(
    app: Litestar, client: AsyncTestClient[Litestar]
) -> None:
    event = goal(metadata={"note": "x" * LIMIT})
    status, answer = await post_in_messages(app, pieces(msgspec.json.encode(event), 4096))
    assert (status, answer["status"]) == (413, 413)
    assert not await stored(client, event["eventId"])


async def test_an_announced_length_past_the_limit_is_413_before_any_piece_is_read(
    app: Litestar, client: AsyncTestClient[Litestar]
) -> None:
    status, answer = await post_in_messages(app, [], content_length=LIMIT + 1)
    assert (status, answer["status"]) == (413, 413)


async def test_a_disconnect_mid_body_is_a_client_problem_and_nothing_is_stored(
    app: Litestar, client: AsyncTestClient[Litestar]
) -> None:
    event = goal()
    first_half = pieces(msgspec.json.encode(event), 40)[:1]
    status, answer = await post_in_messages(app, [*first_half, {"type": "http.disconnect"}])
    assert status == 400
    assert answer["type"] == "urn:fanfinity:problem:client-disconnected"
    assert not await stored(client, event["eventId"])


async def test_a_content_length_that_is_no_number_is_400_not_500(
    app: Litestar, client: AsyncTestClient[Litestar]
) -> None:
    body = msgspec.json.encode(goal())
    status, answer = await post_in_messages(app, pieces(body, len(body)), content_length="12x")
    assert (status, answer["status"]) == (400, 400)
    assert "content-length" in answer["detail"].lower()


async def test_messages_as_the_asgi_spec_allows_them_are_read_whole(
    app: Litestar, client: AsyncTestClient[Litestar]
) -> None:
    """`body` may be left out of a message (it defaults to empty) and a piece may be any
    bytes-like object; the event is still read whole and stored."""
    event = goal()
    body = msgspec.json.encode(event)
    messages = [
        {"type": "http.request", "more_body": True},
        {"type": "http.request", "body": memoryview(body[:10]), "more_body": True},
        {"type": "http.request", "body": bytearray(body[10:]), "more_body": True},
        {"type": "http.request"},
    ]
    status, answer = await post_in_messages(app, messages)
    assert (status, answer["eventId"]) == (202, event["eventId"])
    assert await stored(client, event["eventId"])
