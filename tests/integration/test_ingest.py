"""Group commit on a real replica set: concurrent submits, durable acks, idempotent retries."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest
from pymongo.read_concern import ReadConcern

from fanfinity.pipeline.ingest import WriteOutcome, event_document
from fanfinity.storage.engine import Engine
from fanfinity.storage.models import EVENTS
from tests.integration.conftest import (
    TEAMS,
    event_batch,
    ingest,
    match_event,
    new_match_id,
    running_batcher,
)

pytestmark = pytest.mark.integration


async def test_concurrent_submits_are_acknowledged_only_once_majority_readable(
    engine: Engine,
) -> None:
    documents = event_batch([new_match_id("ingest-a"), new_match_id("ingest-b")], 240)

    async with running_batcher(engine, max_batch=50) as batcher:
        outcomes = await ingest(batcher, documents)
        acknowledged = batcher.acknowledged

    assert outcomes == [WriteOutcome.ACCEPTED] * len(documents)
    assert acknowledged == len(documents)
    majority = engine.database.get_collection(EVENTS, read_concern=ReadConcern("majority"))
    stored = {
        document["_id"]: document
        async for document in majority.find({"_id": {"$in": [doc["_id"] for doc in documents]}})
    }
    assert set(stored) == {document["_id"] for document in documents}
    for document in documents:
        assert stored[document["_id"]]["fingerprint"] == document["fingerprint"]
        assert stored[document["_id"]]["matchId"] == document["matchId"]


async def test_retry_is_a_duplicate_and_a_changed_payload_is_a_conflict(engine: Engine) -> None:
    match_id = new_match_id("retry")
    original = match_event(match_id, "goal", TEAMS[0], minute=42)
    first_receipt = event_document(original, datetime.now(UTC))

    async with running_batcher(engine) as batcher:
        assert await ingest(batcher, [first_receipt]) == [WriteOutcome.ACCEPTED]

        # The producer timed out and sends the very same event again (a new receipt time).
        retry = event_document(original, datetime.now(UTC))
        assert await ingest(batcher, [retry]) == [WriteOutcome.DUPLICATE]

        # The same eventId with another team: a different event wearing a used id.
        clash = event_document(
            match_event(match_id, "goal", TEAMS[1], minute=42, event_id=original.event_id),
            datetime.now(UTC),
        )
        assert clash["fingerprint"] != first_receipt["fingerprint"]
        assert await ingest(batcher, [clash]) == [WriteOutcome.CONFLICT]

        # All three kinds in one unordered batch, plus the same new event twice at once.
        newcomer = event_document(match_event(match_id, "corner", minute=43), datetime.now(UTC))
        mixed = await ingest(batcher, [retry, clash, newcomer, dict(newcomer)])

    assert mixed[:2] == [WriteOutcome.DUPLICATE, WriteOutcome.CONFLICT]
    assert Counter(mixed[2:]) == Counter({WriteOutcome.ACCEPTED: 1, WriteOutcome.DUPLICATE: 1})
    stored = await engine.events.get(original.event_id)
    assert stored is not None
    assert stored["teamId"] == TEAMS[0]  # neither the retry nor the clash changed what was stored
    assert stored["fingerprint"] == first_receipt["fingerprint"]
    assert await engine.events.count(match_id) == 2
