"""The stored event document and the Beanie `Event` model describe the same thing.

Ingest writes `event_document(...)` through the raw collection (no ODM on the hot path); the
data team, the indexes and `Event` itself read those documents. If a field were renamed on one
side only, nothing on the hot path would notice: these tests do.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fanfinity.schemas import EventType, ValidEvent
from fanfinity.storage.engine import Engine
from fanfinity.storage.models import Event, event_document

RECEIVED = datetime(2025, 5, 10, 16, 42, 8, tzinfo=UTC)


def valid_event(**changes: object) -> ValidEvent:
    fields: dict[str, object] = {
        "event_id": "3f2504e0-4f89-41d3-9a0c-0305e82c3301",
        "match_id": "alhilal-vs-alnassr",
        "event_type": EventType.GOAL,
        "timestamp": datetime(2025, 5, 10, 16, 42, 7, tzinfo=UTC),
        "team_id": "al-hilal",
        "player_id": "player-9",
        "metadata": {"minute": 42},
        "fingerprint": "f" * 64,
    }
    fields.update(changes)
    return ValidEvent(**fields)  # type: ignore[arg-type]


def stored_names() -> set[str]:
    """The field names `Event` stores, by their stored (alias) names."""
    return {field.alias or name for name, field in Event.model_fields.items()} - {"revision_id"}


def required_names() -> set[str]:
    return {
        field.alias or name for name, field in Event.model_fields.items() if field.is_required()
    }


def test_a_full_event_document_has_exactly_the_model_fields() -> None:
    assert set(event_document(valid_event(), RECEIVED)) == stored_names()


def test_a_minimal_event_document_has_every_required_model_field() -> None:
    document = event_document(valid_event(player_id=None, metadata=None), RECEIVED)

    assert required_names() <= set(document) <= stored_names()
    assert "playerId" not in document
    assert "metadata" not in document


async def test_the_model_reads_a_stored_document_back_unchanged(engine: Engine) -> None:
    """What ingest wrote, read through Beanie (initialised by the engine), is what was written."""
    await engine.events.insert_many([event_document(valid_event(), RECEIVED)])
    document = event_document(valid_event(), RECEIVED)

    event = await Event.get(document["_id"])

    assert event is not None
    assert event.model_dump(by_alias=True, exclude={"revision_id"}) == document
