"""The embedded engine's shortcuts give exactly what mongomock's own code gives."""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import bson
import mongomock
import mongomock.collection
import pytest
from bson import ObjectId
from hypothesis import given
from hypothesis import strategies as st
from mongomock import helpers
from pymongo.errors import BulkWriteError

from fanfinity.storage import embedded
from tests.loop_turns import other_task_turns
from tests.same_documents import same

OFFSETS = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
DATETIMES = st.one_of(
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1)),
    st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=OFFSETS),
)
LEAVES = st.one_of(
    st.text(max_size=8),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    st.binary(max_size=8),
    st.builds(ObjectId),
    DATETIMES,
)
KEYS = st.text(min_size=1, max_size=6)
VALUES = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(KEYS, children, max_size=4),
        st.dictionaries(KEYS, children, max_size=4).map(OrderedDict),
    ),
    max_leaves=20,
)
DOCUMENTS = st.dictionaries(KEYS, VALUES, max_size=6)


# In each property, mongomock's own function is put back for the reference result, so that its
# recursion runs its own code all the way down.


@given(document=DOCUMENTS)
def test_stored_form_is_mongomocks_datetime_patch(document: dict[str, Any]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(helpers, "patch_datetime_awareness_in_document", embedded._patch_datetimes)
        expected = embedded._patch_datetimes(document)
        assert same(embedded.stored_form(document), expected)


@given(document=DOCUMENTS)
def test_aware_form_is_mongomocks_timezone_patch(document: dict[str, Any]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            helpers, "make_datetime_timezone_aware_in_document", embedded._aware_datetimes
        )
        stored = embedded._patch_datetimes(document)
        assert same(embedded.aware_form(stored), embedded._aware_datetimes(stored))


@given(document=DOCUMENTS)
def test_copied_is_mongomocks_copy_and_shares_nothing_mutable(document: dict[str, Any]) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mongomock.collection, "_copy_field", embedded._copy_field)
        assert same(embedded.copied(document, dict), embedded._copy_field(document, dict))
    stored = embedded.stored_form(document)  # what reads copy: no tuples left, lists instead
    copy = embedded.copied(stored, dict)
    assert not any(a is b for a, b in zip(_mutables(copy), _mutables(stored), strict=True))


@given(document=DOCUMENTS)
def test_deep_copied_is_copy_deepcopy_and_shares_nothing_mutable(document: dict[str, Any]) -> None:
    for value in (document, embedded.stored_form(document), OrderedDict(document)):
        copy_ = embedded.deep_copied(value)
        assert same(copy_, copy.deepcopy(value))
        assert not any(a is b for a, b in zip(_mutables(copy_), _mutables(value), strict=True))


def test_deep_copied_keeps_a_shared_container_shared_as_deepcopy_does() -> None:
    shared = {"n": [1]}
    copy_ = embedded.deep_copied({"a": shared, "b": [shared]})
    assert copy_["a"] is copy_["b"][0]
    assert copy_["a"] is not shared


def _mutables(value: Any) -> Iterator[Any]:
    if isinstance(value, dict | list):
        yield value
        for child in value.values() if isinstance(value, dict) else value:
            yield from _mutables(child)


IDS = st.sampled_from([f"m{n}" for n in range(12)])


@given(
    stored=st.lists(IDS, unique=True, max_size=10),
    wanted=st.lists(IDS, max_size=6),
    ranks=st.lists(st.integers(0, 3), min_size=10, max_size=10),
)
def test_id_lookups_find_what_a_scan_finds_in_id_order(
    stored: list[str], wanted: list[str], ranks: list[int]
) -> None:
    collection = mongomock.MongoClient().db.summaries
    for document_id, rank in zip(stored, ranks, strict=False):
        collection.insert_one({"_id": document_id, "statusRank": rank})
    filters: list[dict[str, Any]] = [
        {"_id": {"$in": wanted}},
        {"_id": {"$in": wanted}, "statusRank": {"$gte": 2}},
        *({"_id": one} for one in wanted[:2]),
        *({"_id": {"$eq": one}, "statusRank": 1} for one in wanted[:2]),
    ]
    for query in filters:
        assert embedded.plain_ids(query) is not None
        scanned = list(embedded._scan(collection, query))
        found = list(embedded._iter_documents(collection, query))
        assert found == sorted(scanned, key=lambda document: document["_id"])


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"matchId": "m1"},
        {"_id": {"$gt": "m1"}},
        {"_id": {"$in": ["m1", 1]}},  # mixed types: MongoDB's order across types is not ours
        {"_id": {"$in": ["m1"], "$ne": "m2"}},
        {"_id": True},  # a dict lookup would take True for 1
        {"_id": {"a": 1}},
    ],
)
def test_other_filters_are_left_to_mongomocks_scan(query: dict[str, Any]) -> None:
    assert embedded.plain_ids(query) is None


async def test_the_embedded_engine_reads_and_writes_through_the_shortcuts(engine: Any) -> None:
    """After the engine opens, a round trip keeps mongomock's contract: aware UTC datetimes to
    the millisecond come back, and what a caller holds is a copy."""
    assert helpers.patch_datetime_awareness_in_document is embedded.stored_form
    sent = datetime(2025, 5, 10, 21, 30, 15, 123456, tzinfo=timezone(timedelta(hours=3)))
    collection = engine.database["shortcut_check"]
    await collection.insert_one({"_id": "a", "at": sent, "nested": {"list": [1, {"b": 2}]}})
    found = await collection.find_one({"_id": "a"})
    assert found["at"] == datetime(2025, 5, 10, 18, 30, 15, 123000, tzinfo=UTC)
    assert found["at"].utcoffset() == timedelta(0)
    found["nested"]["list"].append(3)
    again = await collection.find_one({"_id": "a"})
    assert again["nested"] == {"list": [1, {"b": 2}]}


INSERT_IDS = st.one_of(
    st.sampled_from(["e1", "e2", "e3", 7]),
    st.fixed_dictionaries({"k": st.sampled_from([1, 2])}),
)
# Keys mongomock's checks refuse (a leading `$`, a null character, a key that is no string),
# nested or not, beside the arbitrary fields (whose big integers BSON cannot encode).
HOSTILE_FIELDS = st.dictionaries(
    st.sampled_from(["$set", "a\0b", 5]), st.one_of(st.integers(0, 9), DOCUMENTS), max_size=1
)
INSERTED = st.lists(
    st.tuples(st.one_of(st.none(), INSERT_IDS), DOCUMENTS, HOSTILE_FIELDS), max_size=8
).filter(bool)


def _insert_document(document_id: Any, fields: dict[str, Any], hostile: dict[Any, Any]) -> Any:
    document: dict[Any, Any] = {} if document_id is None else {"_id": document_id}
    document.update({key: value for key, value in fields.items() if key != "_id"})
    if hostile:
        key, value = next(iter(hostile.items()))
        document.update(hostile if len(fields) % 2 else {"nested": {key: value}})
    return document


def _outcome(insert: Any) -> tuple[Any, Any]:
    try:
        return "inserted", insert()
    except BulkWriteError as exc:
        return "write errors", exc.details
    except Exception as exc:
        return type(exc), str(exc)


def _counted_object_ids() -> Iterator[ObjectId]:
    for n in range(1, 1_000):
        yield ObjectId(f"{n:024x}")


@given(existing=st.lists(INSERT_IDS, max_size=3), inserted=INSERTED)
def test_the_lean_unordered_insert_is_mongomocks(existing: list[Any], inserted: list[Any]) -> None:
    """Same ids or write errors or exception, same stored documents, same `_id` filled in."""
    assert same(_insert(existing, inserted, lean=True), _insert(existing, inserted, lean=False))


@given(existing=st.lists(INSERT_IDS, max_size=3), inserted=INSERTED)
def test_an_insert_of_documents_the_caller_encoded_is_mongomocks(
    existing: list[Any], inserted: list[Any]
) -> None:
    """With `encodable` (the caller encoded every document, as `EventRepository` does) only the
    encode is skipped: `$` keys and keys that are not strings still raise what mongomock raises."""
    inserted = [parts for parts in inserted if _encodes(_insert_document(*parts))]
    lean = _insert(existing, inserted, lean=True, encodable=True)
    assert same(lean, _insert(existing, inserted, lean=False))


def _encodes(document: Any) -> bool:
    try:
        bson.encode(document)
    except Exception:
        return False
    return True


def _insert(
    existing: list[Any], inserted: list[Any], lean: bool, encodable: bool = False
) -> tuple[Any, ...]:
    collection = mongomock.MongoClient().db.events
    for document_id in existing:
        collection.update_one({"_id": document_id}, {"$set": {"old": 1}}, upsert=True)
    documents = [_insert_document(*parts) for parts in inserted]
    object_ids = _counted_object_ids()

    def insert() -> list[Any]:
        if lean:
            return embedded.insert_unordered(collection._store, documents, encodable)
        return list(collection.insert_many(documents, ordered=False).inserted_ids)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(helpers, "patch_datetime_awareness_in_document", embedded._patch_datetimes)
        patch.setattr(mongomock.collection, "ObjectId", lambda: next(object_ids))
        patch.setattr(embedded, "ObjectId", lambda: next(object_ids))
        outcome = _outcome(insert)
    return outcome, documents, list(collection._store._documents.items())


async def test_a_collection_with_a_unique_index_inserts_through_mongomock() -> None:
    """Uniqueness beyond `_id` is mongomock's index walk: the lean insert is not used there."""
    from mongomock_motor import AsyncMongoMockClient

    inner = AsyncMongoMockClient().db.events
    await inner.create_index("eventId", unique=True)
    collection = embedded.SlicedInserts(inner, slice_size=2)
    documents = [{"_id": f"c{n}", "eventId": f"e{n % 3}"} for n in range(5)]
    with pytest.raises(BulkWriteError) as raised:
        await collection.insert_many(documents, ordered=False)
    assert [error["index"] for error in raised.value.details["writeErrors"]] == [3, 4]
    assert await collection.count_documents({}) == 3


async def test_a_sliced_unordered_insert_reports_like_one_insert_and_lets_others_run() -> None:
    """Duplicates anywhere in a long unordered insert are reported at their index in the whole
    list, everything else lands, and other tasks get turns of the event loop meanwhile."""
    from mongomock_motor import AsyncMongoMockClient
    from pymongo.errors import BulkWriteError

    collection = embedded.SlicedInserts(AsyncMongoMockClient().db.events, slice_size=4)
    await collection.insert_many([{"_id": "e3"}, {"_id": "e9"}], ordered=False)
    async with other_task_turns() as turns:
        with pytest.raises(BulkWriteError) as raised:
            await collection.insert_many([{"_id": f"e{n}"} for n in range(12)], ordered=False)
    errors = raised.value.details["writeErrors"]
    assert [(error["index"], error["code"]) for error in errors] == [(3, 11000), (9, 11000)]
    assert raised.value.details["nInserted"] == 10
    assert await collection.count_documents({}) == 12
    assert turns.count >= 2  # 12 documents in slices of 4: the loop turned between the slices


async def test_an_ordered_insert_is_left_whole() -> None:
    from mongomock_motor import AsyncMongoMockClient
    from pymongo.errors import BulkWriteError

    collection = embedded.SlicedInserts(AsyncMongoMockClient().db.events, slice_size=2)
    await collection.insert_one({"_id": "e1"})
    with pytest.raises(BulkWriteError) as raised:
        await collection.insert_many([{"_id": f"e{n}"} for n in range(5)], ordered=True)
    assert raised.value.details["nInserted"] == 1  # e0, then it stopped at the duplicate e1
    assert await collection.count_documents({}) == 2
