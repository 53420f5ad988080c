"""Request validation: what a producer's body turns into, and the exact reasons it is refused."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from fanfinity.api.validation import (
    SLICE_BYTES,
    InvalidFields,
    MalformedBody,
    convert_event,
    decode_batch,
    decode_event,
    payload_fingerprint,
    validate_batch,
)
from fanfinity.schemas import EventType, MatchEventIn, ValidEvent
from tests.factories import event_body
from tests.loop_turns import other_task_turns

NOW = datetime(2025, 5, 10, 20, 0, tzinfo=UTC)


def goal(**changes: Any) -> dict[str, Any]:
    return event_body(
        **{
            "eventId": "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
            "metadata": {"minute": 42, "assist": "player-7"},
            **changes,
        }
    )


def without(field: str) -> dict[str, Any]:
    event = goal()
    del event[field]
    return event


def encode(event: Any) -> bytes:
    return json.dumps(event).encode()


def decode(event: Any) -> ValidEvent:
    return decode_event(encode(event), NOW)


def refused_fields(event: Any) -> list[str]:
    with pytest.raises(InvalidFields) as refused:
        decode(event)
    return [error.field for error in refused.value.errors]


def nested(depth: int) -> dict[str, Any]:
    """A metadata object `depth` objects deep (the metadata object itself is level 1)."""
    value: dict[str, Any] = {"leaf": True}
    for _ in range(depth - 1):
        value = {"inner": value}
    return value


# decode_event: accepted


def test_valid_event_is_decoded_with_every_field() -> None:
    event = decode(goal())

    assert event.event_id == "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
    assert event.match_id == "alhilal-vs-alnassr"
    assert event.event_type is EventType.GOAL
    assert event.team_id == "al-hilal"
    assert event.player_id == "player-9"
    assert event.metadata == {"minute": 42, "assist": "player-7"}


def test_timestamp_is_normalised_to_utc() -> None:
    event = decode(goal(timestamp="2025-05-10T19:42:07+03:00"))

    assert event.timestamp == datetime(2025, 5, 10, 16, 42, 7, tzinfo=UTC)
    assert event.timestamp.utcoffset() == timedelta(0)


def test_timestamp_with_z_suffix_is_accepted() -> None:
    event = decode(goal(timestamp="2025-05-10T16:42:07Z"))

    assert event.timestamp == datetime(2025, 5, 10, 16, 42, 7, tzinfo=UTC)


def test_missing_event_id_is_replaced_by_a_fresh_uuid4() -> None:
    first = decode(without("eventId"))
    second = decode(without("eventId"))

    assert uuid.UUID(first.event_id).version == 4
    assert first.event_id != second.event_id


def test_optional_player_and_metadata_may_be_left_out() -> None:
    event = {
        "matchId": "alhilal-vs-alnassr",
        "eventType": "match_start",
        "timestamp": "2025-05-10T19:00:00Z",
        "teamId": "al-hilal",
    }

    decoded = decode(event)

    assert decoded.player_id is None
    assert decoded.metadata is None


def test_identifier_of_64_allowed_characters_is_accepted() -> None:
    match_id = "Al-Hilal_vs.AlNassr:2025-" + "x" * 39

    assert len(match_id) == 64
    assert decode(goal(matchId=match_id)).match_id == match_id


def test_metadata_eight_levels_deep_is_accepted() -> None:
    assert decode(goal(metadata=nested(8))).metadata == nested(8)


def test_metadata_just_under_16_kib_is_accepted() -> None:
    metadata = {"notes": "x" * (16 * 1024 - len('{"notes":""}'))}

    assert len(msgspec.json.encode(metadata)) == 16 * 1024
    assert decode(goal(metadata=metadata)).metadata == metadata


def test_timestamp_just_under_24_hours_ahead_is_accepted() -> None:
    soon = (NOW + timedelta(hours=23, minutes=59)).isoformat()

    assert decode(goal(timestamp=soon)).timestamp == NOW + timedelta(hours=23, minutes=59)


# decode_event: refused with the offending field


@pytest.mark.parametrize(
    ("event", "field"),
    [
        pytest.param(goal(eventType="dance"), "$.eventType", id="unknown-event-type"),
        pytest.param(goal(timestamp="2025-05-10T19:42:07"), "$.timestamp", id="naive-timestamp"),
        pytest.param(goal(timestamp="yesterday"), "$.timestamp", id="not-a-timestamp"),
        pytest.param(goal(matchId="m" * 65), "$.matchId", id="match-id-too-long"),
        pytest.param(goal(matchId=""), "$.matchId", id="match-id-empty"),
        pytest.param(goal(matchId="al hilal"), "$.matchId", id="match-id-with-space"),
        pytest.param(goal(matchId="al/hilal"), "$.matchId", id="match-id-with-slash"),
        pytest.param(goal(teamId="al$hilal"), "$.teamId", id="team-id-with-dollar"),
        pytest.param(goal(playerId=9), "$.playerId", id="player-id-not-a-string"),
        pytest.param(goal(eventId="not-a-uuid"), "$.eventId", id="event-id-not-a-uuid"),
        pytest.param(goal(metadata=[1, 2]), "$.metadata", id="metadata-not-an-object"),
        pytest.param(
            goal(metadata={"notes": "x" * (16 * 1024)}), "$.metadata", id="metadata-over-16-kib"
        ),
        pytest.param(goal(metadata=nested(9)), "$.metadata", id="metadata-nine-levels-deep"),
        pytest.param(
            goal(metadata={"list": [[[[[[[[1]]]]]]]]}), "$.metadata", id="metadata-deep-lists"
        ),
        pytest.param(goal(metadata={"$where": "1"}), "$.metadata", id="metadata-dollar-key"),
        pytest.param(
            goal(metadata={"a": {"b": [{"$gt": 1}]}}), "$.metadata", id="metadata-nested-dollar"
        ),
        pytest.param(goal(metadata={"a.b": 1}), "$.metadata", id="metadata-dotted-key"),
        pytest.param(
            goal(timestamp="2025-05-11T20:00:01Z"), "$.timestamp", id="more-than-24h-ahead"
        ),
        pytest.param(goal(timestamp="1999-12-31T23:59:59Z"), "$.timestamp", id="before-2000"),
        pytest.param(goal(goals=3), "$.goals", id="unknown-top-level-field"),
        pytest.param(without("teamId"), "$.teamId", id="missing-team-id"),
    ],
)
def test_invalid_event_is_refused_naming_the_offending_field(event: Any, field: str) -> None:
    assert refused_fields(event) == [field]


@pytest.mark.parametrize("body", [b"[]", b"42", b'"goal"', b"null"])
def test_json_that_is_not_an_object_is_invalid_fields_not_malformed(body: bytes) -> None:
    with pytest.raises(InvalidFields) as refused:
        decode_event(body, NOW)

    assert [error.field for error in refused.value.errors] == ["$"]


def test_every_refusal_carries_a_readable_message() -> None:
    with pytest.raises(InvalidFields) as refused:
        decode(goal(eventType="dance"))

    assert "dance" in refused.value.errors[0].message
    assert "$.eventType" in str(refused.value)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"matchId": "m1",', id="truncated"),
        pytest.param(b"{matchId: m1}", id="unquoted"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
    ],
)
def test_invalid_json_is_malformed_body(body: bytes) -> None:
    with pytest.raises(MalformedBody, match="not valid JSON"):
        decode_event(body, NOW)


@pytest.mark.parametrize("body", [b"", b"  \n"])
def test_empty_body_is_malformed_body(body: bytes) -> None:
    with pytest.raises(MalformedBody, match="empty"):
        decode_event(body, NOW)


# decode_batch


def raw_items(body: bytes) -> list[Any]:
    return [msgspec.json.decode(item) for item in decode_batch(body)]


def test_batch_array_gives_its_items_unvalidated() -> None:
    items = raw_items(encode([goal(), {"anything": "goes here"}]))

    assert items == [goal(), {"anything": "goes here"}]


def test_batch_wrapped_in_events_object_is_accepted() -> None:
    assert raw_items(encode({"events": [goal()]})) == [goal()]


def test_batch_of_500_events_is_accepted() -> None:
    assert len(decode_batch(encode([goal()] * 500))) == 500


@pytest.mark.parametrize(
    ("batch", "reason"),
    [
        pytest.param([], "empty", id="empty-array"),
        pytest.param({"events": []}, "empty", id="empty-events"),
        pytest.param([goal()] * 501, "at most 500", id="501-events"),
        pytest.param(goal(), "array", id="single-event-object"),
        pytest.param({"events": [goal()], "source": "feed"}, "array", id="events-with-extra-key"),
        pytest.param({"events": goal()}, "array", id="events-not-a-list"),
        pytest.param("goal", "array", id="string"),
    ],
)
def test_batch_outside_the_limits_is_refused_as_a_whole(batch: Any, reason: str) -> None:
    with pytest.raises(InvalidFields) as refused:
        decode_batch(encode(batch))

    assert [error.field for error in refused.value.errors] == ["$"]
    assert reason in refused.value.errors[0].message


@pytest.mark.parametrize("body", [b"", b"[{", b"not json"])
def test_batch_that_is_not_json_is_malformed_body(body: bytes) -> None:
    with pytest.raises(MalformedBody):
        decode_batch(body)


# convert_event (one batch item)


def test_batch_item_is_validated_like_a_single_event() -> None:
    event = convert_event(msgspec.Raw(encode(goal())), NOW, "$[0]")

    assert event == decode(goal())


@pytest.mark.parametrize(
    ("item", "field"),
    [
        pytest.param(goal(teamId=7), "$[3].teamId", id="wrong-type"),
        pytest.param(without("matchId"), "$[3].matchId", id="missing-field"),
        pytest.param(goal(goals=3), "$[3].goals", id="unknown-field"),
        pytest.param(goal(metadata={"$set": 1}), "$[3].metadata", id="bad-metadata"),
        pytest.param(goal(timestamp="2030-01-01T00:00:00Z"), "$[3].timestamp", id="future"),
        pytest.param("goal", "$[3]", id="not-an-object"),
    ],
)
def test_batch_item_errors_name_the_item_position(item: Any, field: str) -> None:
    with pytest.raises(InvalidFields) as refused:
        convert_event(msgspec.Raw(encode(item)), NOW, "$[3]")

    assert [error.field for error in refused.value.errors] == [field]


# payload_fingerprint


def test_same_payload_has_the_same_fingerprint_whatever_the_key_order_and_offset() -> None:
    first = goal(
        timestamp="2025-05-10T19:42:07+03:00",
        metadata={"minute": 42, "var": {"checked": True, "overturned": False}},
    )
    second = {
        "metadata": {"var": {"overturned": False, "checked": True}, "minute": 42},
        "teamId": "al-hilal",
        "timestamp": "2025-05-10T16:42:07Z",
        "playerId": "player-9",
        "eventType": "goal",
        "matchId": "alhilal-vs-alnassr",
    }

    assert decode(first).fingerprint == decode(second).fingerprint


def test_fingerprint_ignores_the_event_id() -> None:
    assert decode(goal()).fingerprint == decode(without("eventId")).fingerprint


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(goal(matchId="alhilal-vs-ittihad"), id="matchId"),
        pytest.param(goal(eventType="own_goal"), id="eventType"),
        pytest.param(goal(timestamp="2025-05-10T19:42:08+03:00"), id="timestamp"),
        pytest.param(goal(teamId="al-nassr"), id="teamId"),
        pytest.param(goal(playerId="player-10"), id="playerId"),
        pytest.param(without("playerId"), id="playerId-absent"),
        pytest.param(goal(metadata={"minute": 43, "assist": "player-7"}), id="metadata-value"),
        pytest.param(goal(metadata={"minute": 42}), id="metadata-key-removed"),
        pytest.param(without("metadata"), id="metadata-absent"),
    ],
)
def test_fingerprint_changes_when_any_payload_field_changes(changed: dict[str, Any]) -> None:
    assert decode(changed).fingerprint != decode(goal()).fingerprint


def test_fingerprint_of_a_struct_uses_the_given_utc_timestamp() -> None:
    raw = MatchEventIn(
        match_id="alhilal-vs-alnassr",
        event_type=EventType.GOAL,
        timestamp=datetime(2025, 5, 10, 16, 42, 7, tzinfo=UTC),
        team_id="al-hilal",
    )

    same = payload_fingerprint(raw, datetime(2025, 5, 10, 16, 42, 7, tzinfo=UTC))
    later = payload_fingerprint(raw, datetime(2025, 5, 10, 16, 42, 8, tzinfo=UTC))

    assert same == payload_fingerprint(raw, raw.timestamp)
    assert same != later


# any bytes: malformed, never an unexpected exception


@pytest.mark.parametrize(
    ("body", "offset"),
    [
        pytest.param(b'{"matchId": "m\xff1"}', 14, id="in-a-string"),
        pytest.param(b'{"metadata": {"note": "caf\xc3"}}', 26, id="truncated-sequence-in-metadata"),
        pytest.param(b'{"m\xe9tadata": 1}', 3, id="in-a-key"),
        pytest.param(b'{"teamId": "\xed\xa0\x80"}', 12, id="encoded-surrogate"),
    ],
)
def test_invalid_utf8_is_malformed_with_its_offset_in_the_body(body: bytes, offset: int) -> None:
    with pytest.raises(MalformedBody, match=f"not valid UTF-8: byte .* at offset {offset} "):
        decode_event(body, NOW)


def test_invalid_utf8_anywhere_in_a_batch_refuses_the_whole_batch() -> None:
    body = encode([goal(), goal()]).replace(b'"player-9"', b'"player-\xff"', 1)
    with pytest.raises(MalformedBody, match="not valid UTF-8"):
        decode_batch(body)


@pytest.mark.parametrize(
    "escape", [rb"\ud800", rb"\udfff", rb"\ud83d\u0041", rb"\u0041\ude00", rb"\ud83d"]
)
def test_lone_surrogate_escape_is_malformed_and_says_so(escape: bytes) -> None:
    body = encode(goal(playerId="PLACEHOLDER")).replace(b"PLACEHOLDER", escape)
    for decode_body in (lambda: decode_event(body, NOW), lambda: decode_batch(b"[" + body + b"]")):
        with pytest.raises(MalformedBody, match="lone UTF-16 surrogate escape"):
            decode_body()


def test_a_surrogate_pair_escape_is_a_character_not_an_error() -> None:
    body = encode(goal(metadata={"chant": "PLACEHOLDER"})).replace(b"PLACEHOLDER", rb"\ud83d\ude00")
    assert decode_event(body, NOW).metadata == {"chant": "\U0001f600"}


def test_an_escaped_backslash_before_u_is_text_not_a_surrogate() -> None:
    body = encode(goal(metadata={"path": "PLACEHOLDER"})).replace(b"PLACEHOLDER", rb"\\ud800")
    assert decode_event(body, NOW).metadata == {"path": "\\ud800"}


# anchored identifiers


@pytest.mark.parametrize("value", ["m\n", "m\r\n", "\nm", "m\x00", "m\t", "m\u2028", "m\x1b"])
@pytest.mark.parametrize("field", ["matchId", "teamId", "playerId"])
def test_identifier_with_a_control_character_is_refused(field: str, value: str) -> None:
    assert refused_fields(goal(**{field: value})) == [f"$.{field}"]


# validate_batch


async def test_a_batch_is_validated_in_order_with_invalid_items_keeping_their_reasons() -> None:
    items = decode_batch(encode([goal(), goal(eventType="dance"), without("eventId")]))

    results = await validate_batch(items, NOW)

    assert isinstance(results[0], ValidEvent)
    assert isinstance(results[2], ValidEvent)
    assert results[0] == decode(goal())
    assert isinstance(results[1], list)
    assert [error.field for error in results[1]] == ["$[1].eventType"]


async def test_a_large_batch_is_validated_in_slices_that_let_other_requests_run() -> None:
    body = encode([goal(metadata={"numbers": list(range(1_000))}) for _ in range(100)])
    items = decode_batch(body)
    async with other_task_turns() as turns:
        results = await validate_batch(items, NOW)

    assert all(isinstance(result, ValidEvent) for result in results)
    # ~500 KB in slices of about SLICE_BYTES: it ran between them (in one go it would run once)
    assert turns.count >= len(body) // (2 * SLICE_BYTES)


def test_fingerprint_from_pre_encoded_metadata_is_the_fingerprint_of_the_payload() -> None:
    """Validation splices the metadata it already encoded into the fingerprint; the hash must
    be the one of the whole payload, or retries of events stored earlier would turn into 409s."""
    metadata = {"z": [1, {"b": True, "a": None}], "a": {"y": 1.5, "x": "é"}}
    raw = MatchEventIn(
        match_id="alhilal-vs-alnassr",
        event_type=EventType.GOAL,
        timestamp=datetime(2025, 5, 10, 16, 42, 7, tzinfo=UTC),
        team_id="al-hilal",
        metadata=metadata,
    )
    spliced = payload_fingerprint(raw, raw.timestamp, msgspec.json.encode(metadata, order="sorted"))

    assert spliced == payload_fingerprint(raw, raw.timestamp)
    assert decode(goal(metadata=metadata, playerId=None)).fingerprint == spliced
