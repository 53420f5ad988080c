"""Repositories on the embedded engine: duplicate reports, summary updates, the checkpoint guard."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pymongo.errors import BulkWriteError

from fanfinity.pipeline.fold import fold_events
from fanfinity.pipeline.reads import match_metrics
from fanfinity.storage.engine import Engine
from fanfinity.storage.repositories import (
    CheckpointConflict,
    InsertReport,
    WriteNotConfirmed,
    insert_report,
)
from tests.factories import stored_event

KICK_OFF = datetime(2025, 5, 10, 19, 0, tzinfo=UTC)


# insert_report


def test_insert_report_separates_duplicates_from_other_write_errors() -> None:
    error = BulkWriteError(
        {
            "writeErrors": [
                {"index": 1, "code": 11000, "errmsg": "E11000 duplicate key error"},
                {"index": 4, "code": 121, "errmsg": "Document failed validation"},
                {"index": 3, "code": 11000, "errmsg": "E11000 duplicate key error"},
            ],
            "nInserted": 2,
        }
    )

    report = insert_report(error)

    assert report.duplicate_indexes == frozenset({1, 3})
    assert report.failed_indexes == {4: "Document failed validation"}


def test_insert_report_of_an_error_without_write_errors_is_clean() -> None:
    assert insert_report(BulkWriteError({"nInserted": 0})) == InsertReport()


def test_write_error_without_a_message_still_fails_its_document() -> None:
    report = insert_report(BulkWriteError({"writeErrors": [{"index": 0, "code": 2}]}))

    assert list(report.failed_indexes) == [0]


# EventRepository


async def test_duplicate_ids_are_reported_and_the_rest_still_land(engine: Engine) -> None:
    await engine.events.insert_many([stored_event("e1")])

    report = await engine.events.insert_many(
        [stored_event("e2"), stored_event("e1"), stored_event("e3")]
    )

    assert report.duplicate_indexes == frozenset({1})
    assert report.failed_indexes == {}
    assert await engine.events.count() == 3


async def test_duplicates_never_reach_the_change_feed(engine: Engine) -> None:
    await engine.events.insert_many([stored_event("e1"), stored_event("e2")])
    await engine.events.insert_many([stored_event("e2"), stored_event("e3"), stored_event("e3")])

    feed = engine.feed.changes({"sequence": 0}, max_batch=100, max_wait_s=0.01)
    batch = await anext(feed)
    await feed.aclose()

    assert [event["_id"] for event in batch.events] == ["e1", "e2", "e3"]


async def test_fingerprints_are_read_back_by_event_id(engine: Engine) -> None:
    await engine.events.insert_many([stored_event("e1"), stored_event("e2")])

    assert await engine.events.fingerprints(["e2", "missing"]) == {"e2": "fp-e2"}


async def test_events_are_counted_per_match(engine: Engine) -> None:
    await engine.events.insert_many(
        [stored_event("e1"), stored_event("e2"), stored_event("e3", match_id="other")]
    )

    assert await engine.events.count() == 3
    assert await engine.events.count("other") == 1


# SummaryRepository


async def test_applied_increments_accumulate_in_the_summary(engine: Engine) -> None:
    first = [stored_event("e1", event_type="match_start"), stored_event("e2", minute=12)]
    second = [stored_event("e3", team_id="al-nassr", minute=12)]

    await engine.summaries.apply(fold_events(first, KICK_OFF).values(), KICK_OFF)
    await engine.summaries.apply(fold_events(second, KICK_OFF).values(), KICK_OFF)

    summary = await engine.summaries.get("alhilal-vs-alnassr")
    assert summary is not None
    assert summary["total"] == 3
    assert summary["byType"] == {"match_start": 1, "goal": 2}
    assert summary["byTeam"] == {"al-hilal": 2, "al-nassr": 1}
    assert summary["perMinute"] == {"2025-05-10T19:00": 1, "2025-05-10T19:12": 2}
    assert summary["firstEventAt"] == KICK_OFF
    assert summary["lastEventAt"] == KICK_OFF + timedelta(minutes=12)
    assert summary["statusRank"] == 1


@pytest.mark.parametrize("team_id", ["al.hilal", "fc:barcelona", "team_1-a"])
async def test_team_id_with_any_allowed_character_is_counted_under_its_own_name(
    engine: Engine, team_id: str
) -> None:
    """teamId allows letters, digits and - _ . : (see schemas.IDENTIFIER_PATTERN)."""
    events = [stored_event("e1", team_id=team_id), stored_event("e2", team_id=team_id)]

    await engine.summaries.apply(fold_events(events, KICK_OFF).values(), KICK_OFF)

    summary = await engine.summaries.get("alhilal-vs-alnassr")
    assert summary is not None
    assert match_metrics(summary, KICK_OFF).events_by_team == {team_id: 2}
    assert len(summary["byTeam"]) == 1  # one flat key, not a nested path


async def test_rebuilt_counts_replace_the_old_ones_but_keep_latencies(engine: Engine) -> None:
    events = [stored_event("e1"), stored_event("e2")]
    await engine.summaries.apply(fold_events(events, KICK_OFF).values(), KICK_OFF)
    await engine.summaries.add_ingest_latency({"alhilal-vs-alnassr": {10: 2}})
    await engine.summaries.apply(fold_events(events, KICK_OFF).values(), KICK_OFF)  # double count

    rebuilt = {
        "total": 2,
        "byType": {"goal": 2},
        "byTeam": {"al-hilal": 2},
        "perMinute": {"2025-05-10T19:00": 2},
        "firstEventAt": KICK_OFF,
        "lastEventAt": KICK_OFF,
        "statusRank": 0,
    }
    await engine.summaries.replace_counts({"alhilal-vs-alnassr": rebuilt}, KICK_OFF)

    summary = await engine.summaries.get("alhilal-vs-alnassr")
    assert summary is not None
    assert summary["total"] == 2
    assert summary["byType"] == {"goal": 2}
    assert summary["ingestLatency"] == {"b10": 2}


async def test_reset_counts_empties_matches_that_no_longer_have_events(engine: Engine) -> None:
    gone = [stored_event("e1", match_id="cancelled-match")]
    await engine.summaries.apply(fold_events(gone, KICK_OFF).values(), KICK_OFF)

    await engine.summaries.reset_counts(["cancelled-match"], KICK_OFF)

    summary = await engine.summaries.get("cancelled-match")
    assert summary is not None
    assert summary["total"] == 0
    assert summary["byType"] == {}


async def test_match_list_holds_only_matches_with_events(engine: Engine) -> None:
    await engine.summaries.apply(fold_events([stored_event("e1")], KICK_OFF).values(), KICK_OFF)
    await engine.summaries.add_ingest_latency({"latency-only": {3: 1}})

    items, total = await engine.summaries.list(status_rank=None, limit=10, offset=0)

    assert [item["_id"] for item in items] == ["alhilal-vs-alnassr"]
    assert total == 1


# CheckpointRepository


async def test_checkpoint_moves_one_generation_at_a_time(engine: Engine) -> None:
    first = await engine.checkpoints.advance(None, {"sequence": 0}, KICK_OFF)
    second = await engine.checkpoints.advance(first, {"sequence": 10}, KICK_OFF)

    checkpoint = await engine.checkpoints.load()
    assert (first, second) == (1, 2)
    assert checkpoint is not None
    assert checkpoint["generation"] == 2
    assert checkpoint["position"] == {"sequence": 10}


async def test_second_first_checkpoint_is_a_conflict(engine: Engine) -> None:
    await engine.checkpoints.advance(None, {"sequence": 0}, KICK_OFF)

    with pytest.raises(CheckpointConflict):
        await engine.checkpoints.advance(None, {"sequence": 5}, KICK_OFF)


async def test_advancing_from_a_stale_generation_is_a_conflict_and_moves_nothing(
    engine: Engine,
) -> None:
    await engine.checkpoints.advance(None, {"sequence": 0}, KICK_OFF)
    await engine.checkpoints.advance(1, {"sequence": 10}, KICK_OFF)

    with pytest.raises(CheckpointConflict):
        await engine.checkpoints.advance(1, {"sequence": 20}, KICK_OFF)

    checkpoint = await engine.checkpoints.load()
    assert checkpoint is not None
    assert (checkpoint["generation"], checkpoint["position"]) == (2, {"sequence": 10})


def test_write_concern_error_means_no_event_of_the_batch_is_confirmed() -> None:
    """A step-down can leave every insert applied but not majority-committed: none is durable."""
    error = BulkWriteError(
        {
            "nInserted": 3,
            "writeErrors": [],
            "writeConcernErrors": [{"code": 91, "errmsg": "Replication is being shut down"}],
        }
    )
    with pytest.raises(WriteNotConfirmed, match="Replication is being shut down"):
        insert_report(error)


async def test_an_unstorable_document_fails_alone_and_the_rest_land_and_are_fed(
    engine: Engine,
) -> None:
    """Validation should stop such documents; if one slips through it must not take its batch
    down, nor leave stored events out of the change feed."""
    bad = {**stored_event("bad"), "metadata": {"n": 2**64}}
    report = await engine.events.insert_many([stored_event("good-1"), bad, stored_event("good-2")])

    assert set(report.failed_indexes) == {1}
    assert "not storable" in report.failed_indexes[1]
    assert await engine.events.get("good-1") is not None
    assert await engine.events.get("good-2") is not None
    assert await engine.events.get("bad") is None
    feed = engine.feed.changes({"sequence": 0}, max_batch=10, max_wait_s=0.01)
    batch = await anext(feed)
    assert [event["_id"] for event in batch.events] == ["good-1", "good-2"]
    await feed.aclose()
