"""The write path through HTTP on the embedded engine: every status code a producer can get."""

from __future__ import annotations

import re
import uuid
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from loguru import logger

from fanfinity.api.access import SECURITY, Access
from fanfinity.api.app import create_app
from fanfinity.config import Settings
from tests.conftest import OTHER_PRODUCER_KEY, PRODUCER_KEY, post_concurrently, with_settings
from tests.factories import event_body as goal

PROBLEM = "application/problem+json"


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:fanfinity:problem:")
    assert body["title"]
    assert body["detail"]
    assert "Traceback" not in response.text
    return body


async def test_accepted_event_is_stored_and_readable(client: AsyncTestClient[Litestar]) -> None:
    event = goal()
    response = await client.post("/api/events", json=event)
    assert response.status_code == 202
    assert response.json() == {"eventId": event["eventId"], "status": "accepted"}
    assert response.headers["location"] == f"/api/events/{event['eventId']}"

    stored = await client.get(response.headers["location"])
    assert stored.status_code == 200
    body = stored.json()
    assert body["matchId"] == "alhilal-vs-alnassr"
    assert body["timestamp"] == "2025-05-10T16:42:07Z"  # normalised to UTC
    assert body["metadata"] == {"minute": 42}
    assert "receivedAt" in body


async def test_server_generates_an_event_id_when_absent(client: AsyncTestClient[Litestar]) -> None:
    event = goal()
    del event["eventId"]
    response = await client.post("/api/events", json=event)
    assert response.status_code == 202
    generated = response.json()["eventId"]
    assert uuid.UUID(generated).version == 4
    assert (await client.get(f"/api/events/{generated}")).status_code == 200


async def test_three_hundred_events_posted_one_by_one_are_all_accepted(
    client: AsyncTestClient[Litestar],
) -> None:
    ids = set()
    for minute in range(300):
        response = await client.post(
            "/api/events", json=goal(timestamp=f"2025-05-10T19:{minute % 60:02d}:00Z")
        )
        assert response.status_code == 202
        ids.add(response.json()["eventId"])
    assert len(ids) == 300


async def test_exact_retry_is_accepted_again_without_a_second_copy(
    client: AsyncTestClient[Litestar],
) -> None:
    event = goal()
    first = await client.post("/api/events", json=event)
    retry = await client.post("/api/events", json=event)
    assert first.status_code == retry.status_code == 202
    assert retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers


async def test_same_event_id_with_another_payload_is_409(
    client: AsyncTestClient[Litestar],
) -> None:
    event = goal()
    assert (await client.post("/api/events", json=event)).status_code == 202
    clash = await client.post("/api/events", json={**event, "eventType": "red_card"})
    body = assert_problem(clash, 409)
    assert body["eventId"] == event["eventId"]


async def test_concurrent_posts_share_batches_and_all_get_their_own_answer(
    client: AsyncTestClient[Litestar],
) -> None:
    events = [goal() for _ in range(50)]
    responses = await post_concurrently(client, "/api/events", events)
    assert [r.status_code for r in responses] == [202] * 50
    assert {r.json()["eventId"] for r in responses} == {e["eventId"] for e in events}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (goal(eventType="penalty"), "$.eventType"),
        (goal(timestamp="2025-05-10T19:42:07"), "$.timestamp"),
        (goal(matchId="has spaces"), "$.matchId"),
        (goal(matchId="x" * 65), "$.matchId"),
        (goal(teamId=""), "$.teamId"),
        (goal(eventId="not-a-uuid"), "$.eventId"),
        (goal(metadata=[1, 2]), "$.metadata"),
        (goal(metadata={"blob": "x" * 17_000}), "$.metadata"),
        (goal(shirtNumber=9), "$.shirtNumber"),
        ({"matchId": "m1"}, "$.eventType"),
    ],
)
async def test_invalid_fields_are_422_with_the_field_named(
    client: AsyncTestClient[Litestar], body: dict[str, Any], field: str
) -> None:
    response = await client.post("/api/events", json=body)
    problem = assert_problem(response, 422)
    assert problem["errors"][0]["field"] == field
    assert problem["errors"][0]["message"]


async def test_malformed_json_is_400(client: AsyncTestClient[Litestar]) -> None:
    response = await client.post(
        "/api/events", content=b'{"matchId": ', headers={"content-type": "application/json"}
    )
    assert_problem(response, 400)


async def test_empty_body_is_400(client: AsyncTestClient[Litestar]) -> None:
    response = await client.post(
        "/api/events", content=b"", headers={"content-type": "application/json"}
    )
    assert "empty" in assert_problem(response, 400)["detail"]


async def test_wrong_content_type_is_415(client: AsyncTestClient[Litestar]) -> None:
    response = await client.post(
        "/api/events", content=b"matchId=m1", headers={"content-type": "text/plain"}
    )
    assert_problem(response, 415)


async def test_body_over_32_kib_is_413_before_parsing(client: AsyncTestClient[Litestar]) -> None:
    response = await client.post(
        "/api/events",
        content=b"{" + b" " * 40_000 + b"}",
        headers={"content-type": "application/json"},
    )
    assert_problem(response, 413)


async def test_missing_and_wrong_api_keys_are_401(client: AsyncTestClient[Litestar]) -> None:
    missing = await client.post("/api/events", json=goal(), headers={"X-API-Key": ""})
    del client.headers["X-API-Key"]
    absent = await client.post("/api/events", json=goal())
    wrong = await client.post("/api/events", json=goal(), headers={"X-API-Key": "nope" * 5})
    for response in (missing, absent, wrong):
        assert_problem(response, 401)
    assert absent.headers["www-authenticate"].startswith("ApiKey")


async def test_every_configured_key_is_accepted_for_rotation(
    client: AsyncTestClient[Litestar],
) -> None:
    for key in (PRODUCER_KEY, OTHER_PRODUCER_KEY):
        response = await client.post("/api/events", json=goal(), headers={"X-API-Key": key})
        assert response.status_code == 202


async def test_unknown_event_is_404_and_unknown_route_is_404(
    client: AsyncTestClient[Litestar],
) -> None:
    assert_problem(await client.get(f"/api/events/{uuid.uuid4()}"), 404)
    assert_problem(await client.get("/api/events/not-a-uuid"), 404)
    assert_problem(await client.get("/api/nothing-here"), 404)


async def test_wrong_method_is_405(client: AsyncTestClient[Litestar]) -> None:
    assert_problem(await client.delete("/api/events"), 405)


async def test_full_ingest_queue_answers_503_with_retry_after(settings: Settings) -> None:
    tiny = with_settings(settings, ingest_queue_max=1, batch_linger_ms=300.0)
    async with AsyncTestClient(app=create_app(tiny)) as client:
        first, second = await post_concurrently(client, "/api/events", [goal(), goal()])
    statuses = sorted([first.status_code, second.status_code])
    assert statuses == [202, 503]
    refused = first if first.status_code == 503 else second
    problem = assert_problem(refused, 503)
    assert int(refused.headers["retry-after"]) >= 1
    assert uuid.UUID(problem["eventId"])
    assert "waiting" in problem["detail"]


async def test_request_id_is_echoed_or_generated(client: AsyncTestClient[Litestar]) -> None:
    echoed = await client.get("/health/live", headers={"X-Request-ID": "trace-abc-123"})
    generated = await client.get("/health/live")
    hostile = await client.get("/health/live", headers={"X-Request-ID": "bad id\twith spaces"})
    assert echoed.headers["x-request-id"] == "trace-abc-123"
    assert len(generated.headers["x-request-id"]) == 32
    assert hostile.headers["x-request-id"] != "bad id\twith spaces"
    assert echoed.headers["x-content-type-options"] == "nosniff"


class TestBatch:
    async def test_each_item_gets_its_own_outcome_in_order(
        self, client: AsyncTestClient[Litestar]
    ) -> None:
        stored = goal()
        assert (await client.post("/api/events", json=stored)).status_code == 202
        fresh = goal()
        items = [
            fresh,
            stored,
            {**stored, "eventType": "corner"},
            goal(timestamp="yesterday"),
        ]
        response = await client.post("/api/events/batch", json=items)
        assert response.status_code == 200
        body = response.json()
        assert [item["status"] for item in body["items"]] == [
            "accepted",
            "duplicate",
            "conflict",
            "invalid",
        ]
        assert [item["index"] for item in body["items"]] == [0, 1, 2, 3]
        assert body["items"][3]["errors"][0]["field"] == "$[3].timestamp"
        assert (body["accepted"], body["duplicates"], body["rejected"]) == (1, 1, 2)
        assert (await client.get(f"/api/events/{fresh['eventId']}")).status_code == 200

    async def test_wrapped_form_is_accepted(self, client: AsyncTestClient[Litestar]) -> None:
        response = await client.post("/api/events/batch", json={"events": [goal(), goal()]})
        assert response.status_code == 200
        assert response.json()["accepted"] == 2

    async def test_more_than_500_events_is_422(self, client: AsyncTestClient[Litestar]) -> None:
        events = [{"matchId": "m", "eventType": "goal"} for _ in range(501)]
        assert_problem(await client.post("/api/events/batch", json=events), 422)

    async def test_empty_batch_is_422(self, client: AsyncTestClient[Litestar]) -> None:
        assert_problem(await client.post("/api/events/batch", json=[]), 422)

    async def test_body_over_512_kib_is_413(self, client: AsyncTestClient[Litestar]) -> None:
        response = await client.post(
            "/api/events/batch",
            content=b"[" + b" " * (600 * 1024) + b"]",
            headers={"content-type": "application/json"},
        )
        assert_problem(response, 413)

    async def test_batch_needs_a_producer_key(self, client: AsyncTestClient[Litestar]) -> None:
        del client.headers["X-API-Key"]
        assert_problem(await client.post("/api/events/batch", json=[goal()]), 401)


async def test_a_flood_from_one_key_gets_429_with_retry_after(settings: Settings) -> None:
    strict = with_settings(settings, rate_limit_per_s=1.0, rate_limit_burst=2)
    async with AsyncTestClient(app=create_app(strict)) as client:
        client.headers["X-API-Key"] = PRODUCER_KEY
        answers = [await client.post("/api/events", json=goal()) for _ in range(3)]
        other_key = await client.post(
            "/api/events", json=goal(), headers={"X-API-Key": OTHER_PRODUCER_KEY}
        )
    assert [a.status_code for a in answers[:2]] == [202, 202]
    assert answers[0].headers["ratelimit-limit"] == "2"
    problem = assert_problem(answers[2], 429)
    assert "retry" in problem["detail"]
    assert int(answers[2].headers["retry-after"]) >= 1
    assert answers[2].headers["ratelimit-remaining"] == "0"
    assert other_key.status_code == 202


async def test_rate_limit_zero_turns_it_off(settings: Settings) -> None:
    unlimited = with_settings(settings, rate_limit_per_s=0.0, rate_limit_burst=1)
    async with AsyncTestClient(app=create_app(unlimited)) as client:
        client.headers["X-API-Key"] = PRODUCER_KEY
        answers = [await client.post("/api/events", json=goal()) for _ in range(5)]
    assert {a.status_code for a in answers} == {202}
    assert "ratelimit-limit" not in answers[0].headers


@pytest.mark.parametrize(
    ("metadata_json", "reason"),
    [
        ('{"n": 9223372036854775808}', "64 bits"),
        ('{"bad\\u0000key": 1}', "NUL"),
        ('{"a": ' * 20 + "1" + "}" * 20, "levels deep"),
    ],
)
async def test_metadata_mongodb_cannot_store_is_422_not_a_failed_batch(
    client: AsyncTestClient[Litestar], metadata_json: str, reason: str
) -> None:
    body = (
        '{"matchId": "m1", "eventType": "goal", "timestamp": "2025-05-10T18:00:00Z", '
        f'"teamId": "t1", "metadata": {metadata_json}}}'
    )
    for path in ("/api/events", "/api/events/batch"):
        content = body if path == "/api/events" else f"[{body}]"
        response = await client.post(
            path, content=content.encode(), headers={"content-type": "application/json"}
        )
        if path == "/api/events":
            assert reason in assert_problem(response, 422)["detail"]
        else:
            assert response.status_code == 200
            assert response.json()["items"][0]["status"] == "invalid"


async def test_absurdly_deep_json_is_422_not_500(client: AsyncTestClient[Litestar]) -> None:
    deep = '{"a": ' + "[" * 5000 + "]" * 5000 + "}"
    body = (
        '{"matchId": "m1", "eventType": "goal", "timestamp": "2025-05-10T18:00:00Z", '
        f'"teamId": "t1", "metadata": {deep}}}'
    )
    for path, content in (("/api/events", body), ("/api/events/batch", f"[{body}]")):
        response = await client.post(
            path, content=content.encode(), headers={"content-type": "application/json"}
        )
        assert "deep" in assert_problem(response, 422)["detail"]


async def test_batch_items_are_validated_as_strictly_as_single_events(
    client: AsyncTestClient[Litestar],
) -> None:
    numeric_time = goal(timestamp=1764032400)
    single = await client.post("/api/events", json=numeric_time)
    batch = await client.post("/api/events/batch", json=[goal(timestamp=1764032400)])
    assert_problem(single, 422)
    assert batch.json()["items"][0]["status"] == "invalid"
    assert batch.json()["items"][0]["errors"][0]["field"] == "$[0].timestamp"


async def test_successful_requests_are_logged_only_at_debug(settings: Settings) -> None:
    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG", format="{message}")
    try:
        for level in ("INFO", "DEBUG"):
            app = create_app(with_settings(settings, log_level=level))
            async with AsyncTestClient(app=app) as client:
                client.headers["X-API-Key"] = PRODUCER_KEY
                await client.post("/api/events", json=goal(matchId=f"log-{level.lower()}"))
                await client.post("/api/events", json={"matchId": f"log-{level.lower()}"})
    finally:
        logger.remove(sink)
    posts = [line.strip() for line in lines if line.startswith("POST /api/events")]
    statuses = [line.split()[2] for line in posts]
    assert statuses == ["422", "202", "422"]  # INFO: the refusal only; DEBUG: both


async def test_oversized_headers_are_431_problem(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get(
        "/api/matches", headers={f"x-filler-{i}": "x" * 1000 for i in range(20)}
    )
    assert_problem(response, 431)
    assert response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        pytest.param(b'{"matchId": "m\xff"}', "not valid UTF-8", id="invalid-utf8"),
        pytest.param(rb'{"matchId": "\ud800"}', "lone UTF-16 surrogate", id="lone-surrogate"),
    ],
)
async def test_bytes_that_are_not_unicode_are_400_malformed_json_on_both_endpoints(
    client: AsyncTestClient[Litestar], content: bytes, reason: str
) -> None:
    for path, body in (("/api/events", content), ("/api/events/batch", b"[" + content + b"]")):
        response = await client.post(
            path, content=body, headers={"content-type": "application/json"}
        )
        problem = assert_problem(response, 400)
        assert problem["type"] == "urn:fanfinity:problem:malformed-json", path
        assert reason in problem["detail"], path


async def test_a_batch_with_one_bad_byte_stores_none_of_its_events(
    client: AsyncTestClient[Litestar],
) -> None:
    first, second = goal(), goal(playerId="PLACEHOLDER")
    body = msgspec.json.encode([first, second]).replace(b"PLACEHOLDER", b"pl\xe9yer")
    response = await client.post(
        "/api/events/batch", content=body, headers={"content-type": "application/json"}
    )
    assert_problem(response, 400)
    assert_problem(await client.get(f"/api/events/{first['eventId']}"), 404)


@pytest.mark.parametrize(("match_id", "status"), [(".", 422), ("..", 422), ("...", 202)])
async def test_a_match_id_that_clients_would_normalise_away_is_422(
    client: AsyncTestClient[Litestar], match_id: str, status: int
) -> None:
    """`.` and `..` are path segments every client rewrites, so their metrics could never be
    read back; `...` is an ordinary name."""
    response = await client.post("/api/events", json=goal(matchId=match_id))
    assert response.status_code == status
    if status == 422:
        assert assert_problem(response, 422)["errors"][0]["field"] == "$.matchId"


@pytest.mark.parametrize("match_id", ["m\n", "m\r", "m\x00", "m\u2028"])
async def test_identifier_with_a_trailing_control_character_is_422_not_stored(
    client: AsyncTestClient[Litestar], match_id: str
) -> None:
    problem = assert_problem(await client.post("/api/events", json=goal(matchId=match_id)), 422)
    assert problem["errors"][0]["field"] == "$.matchId"
    listed = (await client.get("/api/matches")).json()["items"]
    assert all(item["matchId"] != match_id for item in listed)


@pytest.mark.parametrize(
    "query",
    ["status=live%0A", "status=live%0D%0A", "status=%00", "status=LIVE", "limit=1%0A", "offset=x"],
)
async def test_bad_match_list_query_is_400_problem_naming_the_parameter(
    client: AsyncTestClient[Litestar], query: str
) -> None:
    problem = assert_problem(await client.get(f"/api/matches?{query}"), 400)
    assert problem["errors"][0]["field"] == f"query.{query.split('=')[0]}"


@pytest.mark.parametrize("path_id", ["m%0A", "m%0D", "m%00", "m%09", "%E2%80%A8"])
async def test_path_id_with_a_control_character_is_404_problem(
    client: AsyncTestClient[Litestar], path_id: str
) -> None:
    for path in (f"/api/matches/{path_id}/metrics", f"/api/events/{path_id}"):
        assert_problem(await client.get(path), 404)


class TestRateCost:
    """A write costs its events or its size in 512-byte tokens, whichever is more."""

    async def test_a_large_event_costs_its_size(self, settings: Settings) -> None:
        limited = with_settings(settings, rate_limit_per_s=0.001, rate_limit_burst=100)
        big = goal(metadata={"notes": "x" * 8_000})  # about 8.2 KB: 17 tokens
        async with AsyncTestClient(app=create_app(limited)) as client:
            client.headers["X-API-Key"] = PRODUCER_KEY
            small_answer = await client.post("/api/events", json=goal())
            big_answer = await client.post("/api/events", json=big)
        assert small_answer.headers["ratelimit-remaining"] == "99"
        size = len(msgspec.json.encode(big))
        assert big_answer.headers["ratelimit-remaining"] == str(99 - -(-size // 512))

    async def test_a_batch_costs_its_items_or_its_size(self, settings: Settings) -> None:
        limited = with_settings(settings, rate_limit_per_s=0.001, rate_limit_burst=1_000)
        deep = [goal(metadata={"numbers": list(range(1_500))}) for _ in range(3)]  # ~8 KB each
        async with AsyncTestClient(app=create_app(limited)) as client:
            client.headers["X-API-Key"] = PRODUCER_KEY
            by_items = await client.post("/api/events/batch", json=[goal() for _ in range(10)])
            by_size = await client.post("/api/events/batch", json=deep)
        assert by_items.headers["ratelimit-remaining"] == str(1_000 - 10)
        cost = -(-len(msgspec.json.encode(deep)) // 512)
        assert cost > 3
        assert by_size.headers["ratelimit-remaining"] == str(1_000 - 10 - cost)

    async def test_a_request_costing_more_than_the_burst_passes_on_a_full_bucket(
        self, settings: Settings
    ) -> None:
        tight = with_settings(settings, rate_limit_per_s=0.001, rate_limit_burst=5)
        async with AsyncTestClient(app=create_app(tight)) as client:
            client.headers["X-API-Key"] = PRODUCER_KEY
            first = await client.post("/api/events/batch", json=[goal() for _ in range(20)])
            second = await client.post("/api/events", json=goal())
        assert first.status_code == 200
        assert first.json()["accepted"] == 20
        assert_problem(second, 429)


def test_every_api_route_declares_its_access_and_documents_the_same(app: Litestar) -> None:
    """The access a route declares is what the hook enforces and what the OpenAPI says."""
    document = app.openapi_schema.to_schema()
    checked = 0
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            methods = set(handler.http_methods) - {"HEAD", "OPTIONS"}
            if not route.path.startswith("/api/") or not methods:
                continue
            access = handler.opt.get("access")
            assert access in (Access.PRODUCER, Access.READ), (route.path, methods)
            for method in methods:
                operation = document["paths"][route.path.replace(":str", "")][method.lower()]
                assert operation["security"] == SECURITY[access], (route.path, method)
                checked += 1
    assert checked >= 6


async def test_openapi_event_body_states_the_validators_constraints(
    client: AsyncTestClient[Litestar],
) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    single = document["paths"]["/api/events"]["post"]["requestBody"]["content"]
    event = single["application/json"]["schema"]
    match_id = event["properties"]["matchId"]
    assert match_id["pattern"] == "^(?!\\.{1,2}$)[A-Za-z0-9\\-_.:]{1,64}$"  # ECMA-262
    assert (match_id["minLength"], match_id["maxLength"]) == (1, 64)
    assert "goal" in event["properties"]["eventType"]["enum"]
    assert event["additionalProperties"] is False
    metadata = next(b for b in event["properties"]["metadata"]["anyOf"] if b.get("type"))
    key_rule = re.compile(metadata["propertyNames"]["pattern"])
    assert key_rule.search("assist")
    assert not any(key_rule.search(key) for key in ("$where", "a.b", "nul\x00"))
    batch = document["paths"]["/api/events/batch"]["post"]["requestBody"]["content"]
    array = batch["application/json"]["schema"]["anyOf"][0]
    assert (array["minItems"], array["maxItems"]) == (1, 500)
    example = single["application/json"]["example"]
    assert (await client.post("/api/events", json=example)).status_code == 202
