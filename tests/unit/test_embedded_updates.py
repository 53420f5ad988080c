"""The lean `update_one` of the embedded engine gives exactly what mongomock's own update gives."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import mongomock
import mongomock.collection
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from mongomock import helpers
from mongomock.collection import Collection

from fanfinity.storage import embedded
from fanfinity.storage.transactions import UndoJournal
from tests.same_documents import same

KEYS = st.sampled_from(["a", "b", "c"])
NAIVE = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1))
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
NUMBERS = st.one_of(st.integers(-5, 5), st.integers(), FLOATS)  # an $inc may pass 8 bytes
STORABLE_NUMBERS = st.one_of(st.integers(-5, 5), st.integers(-(2**63), 2**63 - 1), FLOATS)
STORED_LEAVES = st.one_of(
    STORABLE_NUMBERS, STORABLE_NUMBERS, NAIVE, st.booleans(), st.none(), st.text(max_size=3)
)
STORED = st.recursive(
    STORED_LEAVES,
    lambda children: st.one_of(
        st.dictionaries(KEYS, children, max_size=3),
        st.dictionaries(KEYS, children, max_size=3),
        st.lists(children, max_size=2),
    ),
    max_leaves=12,
)
# Documents of counters and moments (the lean path's), or of anything.
PLAIN = st.recursive(
    st.one_of(STORABLE_NUMBERS, NAIVE),
    lambda children: st.dictionaries(KEYS, children, max_size=3),
    max_leaves=8,
)
DOCUMENTS = st.one_of(
    st.dictionaries(KEYS, PLAIN, max_size=3), st.dictionaries(KEYS, STORED, max_size=3)
)
OFFSET = timezone(timedelta(hours=-3))
MOMENTS = st.one_of(
    NAIVE,
    NAIVE.map(lambda moment: moment.replace(tzinfo=UTC)),
    NAIVE.map(lambda moment: moment.replace(tzinfo=OFFSET)),
)
PATHS = st.lists(KEYS, min_size=1, max_size=3).map(".".join)
# Updates of the kinds the lean path takes (it may still refuse them: stored kinds, overlaps)...
LEAN_UPDATES = st.fixed_dictionaries(
    {"$inc": st.dictionaries(PATHS, NUMBERS, min_size=1, max_size=4)},
    optional={
        "$min": st.dictionaries(PATHS, st.one_of(NUMBERS, MOMENTS), min_size=1, max_size=2),
        "$max": st.dictionaries(PATHS, st.one_of(NUMBERS, MOMENTS), min_size=1, max_size=2),
        "$set": st.dictionaries(PATHS, st.one_of(NUMBERS, MOMENTS, st.text(max_size=3))),
    },
)
# ... and any other: odd paths, operators and values, empty operators.
UPDATE_VALUES = st.one_of(
    NUMBERS,
    MOMENTS,
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.integers(2**63, 2**64),  # BSON cannot encode these: mongomock's `$set` refuses them
    st.lists(st.integers(0, 3), max_size=2),
)
ODD_PATHS = st.one_of(PATHS, st.sampled_from(["_id", "a..b", "a.", "0", "a.0", "a.$", "$a", ""]))
OPERATORS = st.sampled_from(["$inc", "$min", "$max", "$set", "$unset", "$rename"])
ODD_UPDATES = st.dictionaries(
    OPERATORS, st.dictionaries(ODD_PATHS, UPDATE_VALUES, max_size=4), min_size=1, max_size=3
)
UPDATES = st.one_of(LEAN_UPDATES, ODD_UPDATES)
FILTERS = st.sampled_from(
    [{"_id": "m"}, {"_id": "m"}, {"_id": {"$eq": "m"}}, {"_id": {"$in": ["m"]}}, {"_id": "other"}]
)


def _outcome(update_one: Callable[[], Any]) -> Any:
    try:
        result = update_one()
    except Exception as exc:
        return type(exc)
    return result.raw_result, result.matched_count, result.modified_count, result.upserted_id


def _pristine_mongomock() -> pytest.MonkeyPatch:
    """mongomock with its own functions, none of the embedded engine's shortcuts."""
    patch = pytest.MonkeyPatch()
    patch.setattr(helpers, "patch_datetime_awareness_in_document", embedded._patch_datetimes)
    patch.setattr(mongomock.collection, "copy", copy)
    patch.setattr(Collection, "_iter_documents", embedded._scan)
    return patch


def _lean_or_mongomock(collection: Any, filter: Any, update: Any, upsert: bool) -> Any:
    """What `LeanUpdates.update_one` does, on a synchronous mongomock collection."""
    embedded.install_shortcuts()
    result = embedded.lean_update_one(
        collection._store, filter, update, collection.database.client._id
    )
    if result is None:
        return collection.update_one(filter, update, upsert=upsert)
    return result


def _both(
    document: dict[str, Any], filter: Any, update: Any, upsert: bool = False
) -> tuple[tuple[Any, Any], tuple[Any, Any]]:
    """The same update on two copies of the document: mongomock's, then the lean path's."""
    client = mongomock.MongoClient()
    reference, lean = client.db.reference, client.db.lean
    for collection in (reference, lean):
        collection.insert_one({"_id": "m", **copy.deepcopy(document)})
    patch = _pristine_mongomock()
    try:
        expected = _outcome(lambda: reference.update_one(filter, update, upsert=upsert))
    finally:
        patch.undo()
    got = _outcome(lambda: _lean_or_mongomock(lean, filter, update, upsert))
    return (expected, _stored(reference)), (got, _stored(lean))


def _stored(collection: Any) -> list[Any]:
    return list(collection._store._documents.items())


@given(document=DOCUMENTS, filter=FILTERS, update=UPDATES, upsert=st.booleans())
def test_the_lean_update_is_mongomocks(
    document: dict[str, Any], filter: Any, update: Any, upsert: bool
) -> None:
    """Same result (or exception type), same stored documents, types and key order included."""
    expected, got = _both(document, filter, update, upsert)
    assert same(got, expected)
    event("lean" if _lean_takes(document, filter, update) else "mongomock")


def _lean_takes(document: dict[str, Any], filter: Any, update: Any) -> bool:
    client = mongomock.MongoClient()
    client.db.lean.insert_one({"_id": "m", **copy.deepcopy(document)})
    return embedded.lean_update_one(client.db.lean._store, filter, update, 0) is not None


COUNTERS = st.dictionaries(
    st.sampled_from(["goal", "foul", "corner"]), STORABLE_NUMBERS, max_size=3
)
SUMMARIES = st.fixed_dictionaries(
    {"total": st.integers(0, 100), "byType": COUNTERS},
    optional={"firstEventAt": NAIVE, "lastEventAt": NAIVE, "statusRank": st.integers(0, 2)},
)


@given(
    document=SUMMARIES,
    increments=st.dictionaries(
        st.sampled_from(["total", "byType.goal", "byType.foul", "perMinute.18:03", "lag.b1"]),
        NUMBERS,
        min_size=1,
    ),
    first=MOMENTS,
    last=MOMENTS,
    rank=st.integers(0, 2),
)
def test_summary_updates_take_the_lean_path_and_give_mongomocks_result(
    document: dict[str, Any],
    increments: dict[str, Any],
    first: datetime,
    last: datetime,
    rank: int,
) -> None:
    """Updates shaped like `SummaryIncrement.as_update`: always lean, always mongomock's."""
    update = {
        "$inc": increments,
        "$min": {"firstEventAt": first},
        "$max": {"lastEventAt": last, "statusRank": rank},
    }
    assert _lean_takes(document, {"_id": "m"}, update)
    expected, got = _both(document, {"_id": "m"}, update)
    assert same(got, expected)


def _taken(document: dict[str, Any], update: Any, filter: Any = None, upsert: bool = False) -> bool:
    """Whether the lean path takes the update (after checking it gives mongomock's result)."""
    expected, got = _both(document, filter or {"_id": "m"}, update, upsert)
    assert same(got, expected)
    client = mongomock.MongoClient()
    client.db.lean.insert_one({"_id": "m", **copy.deepcopy(document)})
    store = client.db.lean._store
    before = copy.deepcopy(store._documents)
    taken = embedded.lean_update_one(store, filter or {"_id": "m"}, update, 0) is not None
    if not taken:
        assert same(list(store._documents.items()), list(before.items()))  # nothing touched
    return taken


AT = datetime(2025, 5, 10, 18, 3)


@pytest.mark.parametrize(
    ("document", "update"),
    [
        ({"a": [1, 2]}, {"$inc": {"a.0": 1}}),  # a list on the path
        ({"a": {"b": [1]}}, {"$inc": {"a.b.0": 1}}),
        ({"a": 5}, {"$inc": {"a.b": 1}}),  # mongomock's walk stops at a number, silently
        ({"a": 1}, {"$unset": {"a": ""}}),
        ({"a": 1}, {"$inc": {"a": 1}, "$unset": {"b": ""}}),
        ({"a": "x"}, {"$inc": {"a": 1}}),  # $inc on a string
        ({"a": {"b": 1, "c": "x"}}, {"$inc": {"a.b": 1, "a.c": 1}}),  # the second of a group
        ({"a": True}, {"$inc": {"a": 1}}),  # on a bool
        ({"a": 1}, {"$inc": {"a": True}}),  # by a bool
        ({"a": 1}, {"$max": {"a": AT}}),  # mixed kinds
        ({"a": AT}, {"$max": {"a": 1}}),
        ({"a": AT}, {"$min": {"a": None}}),  # None values
        ({"a": None}, {"$min": {"a": AT}}),  # a stored null
        ({"a": {"b": 1}}, {"$inc": {"a": 1, "a.b": 1}}),  # conflicting paths
        ({"a": {"b": 1}}, {"$inc": {"a.b": 1}, "$max": {"a.b": 2}}),
        ({"a": 1}, {"$inc": {}}),  # empty operator
        ({"a": 1}, {"$inc": {"_id": 1}}),
        ({"a": 1}, {"$set": {"a": [1, 2]}}),  # a value mongomock copies
        ({"a": 1}, {"$set": {"a": 2**64}}),  # one BSON cannot encode
        ({"a": 1}, {"$inc": {"a..b": 1}}),
        ({"a": 1}, {"$inc": {"a": 1}, "$push": {"b": 1}}),
    ],
)
def test_unsupported_updates_go_to_mongomock(document: dict[str, Any], update: Any) -> None:
    assert not _taken(document, update)


@pytest.mark.parametrize(
    ("filter", "upsert"),
    [
        ({"_id": "other"}, True),  # an upsert that inserts
        ({"_id": "other"}, False),  # no document
        ({"_id": "m", "total": 1}, False),  # more than the `_id`
        ({"_id": {"$in": ["m", "n"]}}, False),
        ({"total": 1}, False),
    ],
)
def test_other_filters_go_to_mongomock(filter: Any, upsert: bool) -> None:
    assert not _taken({"total": 1}, {"$inc": {"total": 1}}, filter, upsert)


@pytest.mark.parametrize(
    ("document", "update"),
    [
        ({"a": {"b": 1}}, {"$inc": {"a.b": 1, "a.c": 2.5, "d.e.f": 1, "d.e.g": 1, "x": -0.0}}),
        ({"a": 5}, {"$inc": {"a": 0.0}}),  # an int becomes a float, and nothing is modified
        ({"a": AT}, {"$max": {"a": AT.replace(tzinfo=UTC)}}),  # equal: nothing modified
        ({"a": AT}, {"$max": {"a": AT.replace(microsecond=999_999, tzinfo=UTC)}}),  # ms only
        ({"a": 5}, {"$max": {"a": 5.0}, "$min": {"b": 3}}),
        ({"a": {"b": [1]}}, {"$set": {"a.c": "x", "z": None, "y": AT}}),
    ],
)
def test_lean_updates_give_mongomocks_result(document: dict[str, Any], update: Any) -> None:
    assert _taken(document, update)


async def test_the_embedded_engine_applies_summary_updates_without_mongomocks_update(
    engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The aggregator's per-match update takes the lean path: mongomock's `_update` is not run
    once the summary exists, and the undo journal still takes the update back."""
    calls: list[Any] = []
    mongomock_update = Collection._update

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return mongomock_update(self, *args, **kwargs)

    monkeypatch.setattr(Collection, "_update", counted)
    collection = engine.summaries._collection
    update = {"$inc": {"total": 1, "byType.goal": 1}, "$max": {"statusRank": 1}}
    await collection.update_one({"_id": "m"}, update, upsert=True)  # inserts: mongomock's
    assert len(calls) == 1
    journal = UndoJournal()
    result = await collection.update_one({"_id": "m"}, update, upsert=True, session=journal)
    assert (result.matched_count, result.modified_count, result.upserted_id) == (1, 1, None)
    assert len(calls) == 1
    assert (await engine.summaries.get("m"))["byType"] == {"goal": 2}
    await journal.undo()
    assert (await engine.summaries.get("m"))["byType"] == {"goal": 1}


async def test_the_journal_reads_its_before_image_as_mongomock_finds_it(engine: Any) -> None:
    """`LeanUpdates._iter_documents` yields what mongomock's yields, for every filter."""
    summaries = engine.summaries._collection._collection
    await summaries.insert_one({"_id": "m", "total": 1})
    await summaries.insert_one({"_id": 7, "total": 2})
    for query in ({"_id": "m"}, {"_id": {"$in": ["m"]}}, {"_id": 7}, {"_id": "x"}, {"total": 2}):
        mongomock_found = list(summaries._collection._iter_documents(query))
        found = list(summaries._iter_documents(query))
        assert len(found) == len(mongomock_found)
        assert all(a is b for a, b in zip(found, mongomock_found, strict=True))


def test_an_id_of_another_type_that_a_dict_lookup_would_find_goes_to_mongomock() -> None:
    """`True` and `1` are one key to a dict; MongoDB's `_id` equality keeps them apart."""
    collection = mongomock.MongoClient().db.summaries
    collection.insert_one({"_id": True, "total": 1})
    assert (
        embedded.lean_update_one(collection._store, {"_id": 1}, {"$inc": {"total": 1}}, 0) is None
    )
    assert collection.find_one({"_id": True})["total"] == 1


def test_a_stored_aware_datetime_goes_to_mongomock() -> None:
    """mongomock stores datetimes naive; one planted aware does not compare with a naive one."""
    collection = mongomock.MongoClient().db.summaries
    collection.insert_one({"_id": "m"})
    collection._store._documents["m"]["at"] = AT.replace(tzinfo=UTC)
    update = {"$max": {"at": AT}}
    assert embedded.lean_update_one(collection._store, {"_id": "m"}, update, 0) is None
    with pytest.raises(TypeError):
        collection.update_one({"_id": "m"}, update)
