"""mongomock made cheaper and fairer where our hot paths use it, giving the very results it gives.

The embedded engine is mongomock, whose every operation walks documents in Python; under load
those walks were most of the service's cost (profiled with py-spy under `make bench`). Two kinds
of shortcut, both installed once when the embedded engine opens, and one wrapper:

**An `_id` index.** mongomock tests every document of a collection against every filter
(`Collection._iter_documents`), so each `find_one({"_id": ...})` or `update_one({"_id": ...})`
costs a pass over the whole collection. MongoDB answers those from the `_id` index, and our hot
paths use nothing else: the aggregator's per-match summary updates and their undo journal, the
checkpoint's compare-and-set, the idempotency lookups on `events`. mongomock already keeps each
collection's documents in a dict keyed by `_id` (`CollectionStore`), so an `_id` equality or `$in`
of plain ids can be answered from that dict. The rest of the filter is still applied to what is
found, so results are the same documents mongomock would find; they come in `_id` order, as from
MongoDB's index scan.

**Leaner document walks.** Every insert and update converts datetimes to naive UTC milliseconds
(`helpers.patch_datetime_awareness_in_document`), every read copies the document
(`collection._copy_field`) and makes its datetimes aware again
(`helpers.make_datetime_timezone_aware_in_document`). The replacements below do the same walk
with one type test per value, hand every value that is not a plain dict, list or immutable
scalar to mongomock's own function, and are checked against it by property tests
(tests/unit/test_embedded.py).

**Inserts that yield.** A MongoDB `insert_many` waits for the server, and the event loop serves
other requests meanwhile; mongomock-motor's runs to the end without ever yielding. A group commit
of 500 events with deep metadata then held every other request for the whole insert (a single
event's p99 went to ~420 ms while such batches arrived). `SlicedInserts` runs an unordered
`insert_many` as consecutive slices with a turn of the event loop between them, and reports the
slices' results as one (indexes of write errors relative to the whole list, as MongoDB does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import mongomock.collection
from bson import ObjectId
from mongomock import helpers
from mongomock.collection import Collection
from mongomock.filtering import filter_applies as _filter_applies
from pymongo.errors import BulkWriteError
from pymongo.results import InsertManyResult

from fanfinity.gc_tuning import documents_stored

# Documents per slice of an unordered insert: 32 events with metadata as deep as validation
# allows take about 8 ms of mongomock's time, plain events about 2 ms.
INSERT_SLICE = 32

# Only ids whose dict lookup agrees with MongoDB's equality (no bool: True == 1 in a dict).
PLAIN_ID_TYPES = (str, ObjectId, int)

filter_applies: Callable[[Mapping[str, Any], Any], bool] = _filter_applies
_scan: Callable[[Any, Mapping[str, Any]], Iterator[dict[str, Any]]] = Collection._iter_documents


def plain_ids(filter: Mapping[str, Any]) -> list[Any] | None:
    """The `_id` values a filter is restricted to, or None when it is not such a filter.

    Recognised: ``{"_id": v}``, ``{"_id": {"$eq": v}}`` and ``{"_id": {"$in": [...]}}`` (other
    top-level conditions may sit beside them), with every v a plain id of one type."""
    if not isinstance(filter, Mapping) or "_id" not in filter:
        return None
    condition = filter["_id"]
    if isinstance(condition, Mapping):
        if len(condition) != 1:
            return None
        if "$eq" in condition:
            candidates = [condition["$eq"]]
        elif "$in" in condition and isinstance(condition["$in"], list | tuple):
            candidates = list(condition["$in"])
        else:
            return None
    else:
        candidates = [condition]
    kinds = {type(value) for value in candidates}
    if len(kinds) > 1 or not all(kind in PLAIN_ID_TYPES for kind in kinds):
        return None
    return sorted(set(candidates))


def _iter_documents(self: Any, filter: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    ids = plain_ids(filter)
    if ids is None:
        return _scan(self, filter)
    store = self._store
    found = [store[document_id] for document_id in ids if document_id in store]
    if not found:
        filter_applies(filter, {})  # a malformed filter raises, as mongomock's scan would
    return (document for document in found if filter_applies(filter, document))


# Values that every one of the three walks returns unchanged (copying an immutable is a no-op).
UNCHANGED = frozenset({str, int, float, bool, type(None), bytes, ObjectId})

_patch_datetimes: Callable[[Any], Any] = helpers.patch_datetime_awareness_in_document
_aware_datetimes: Callable[[Any], Any] = helpers.make_datetime_timezone_aware_in_document
_copy_field: Callable[[Any, Any], Any] = mongomock.collection._copy_field


def stored_form(value: Any) -> Any:
    """`patch_datetime_awareness_in_document`: datetimes as naive UTC, to the millisecond."""
    kind = type(value)
    if kind is dict:
        return {k: v if type(v) in UNCHANGED else stored_form(v) for k, v in value.items()}
    if kind in UNCHANGED:
        return value
    if kind is list:
        return [item if type(item) in UNCHANGED else stored_form(item) for item in value]
    if kind is datetime and value.tzinfo is None:
        return value.replace(microsecond=value.microsecond // 1000 * 1000)
    return _patch_datetimes(value)  # aware datetimes, tuples, OrderedDicts, Timestamps, ...


def aware_form(value: Any) -> Any:
    """`make_datetime_timezone_aware_in_document`: stored datetimes handed out as UTC."""
    kind = type(value)
    if kind is dict:
        return {k: v if type(v) in UNCHANGED else aware_form(v) for k, v in value.items()}
    if kind in UNCHANGED:
        return value
    if kind is list:
        return [item if type(item) in UNCHANGED else aware_form(item) for item in value]
    return _aware_datetimes(value)


def copied(value: Any, container: Any) -> Any:
    """`collection._copy_field`: a copy of a stored value, dicts rebuilt as `container`."""
    kind = type(value)
    if kind in UNCHANGED:
        return value
    if kind is dict and container is dict:
        return {k: v if type(v) in UNCHANGED else copied(v, dict) for k, v in value.items()}
    if kind is list:
        return [item if type(item) in UNCHANGED else copied(item, container) for item in value]
    return _copy_field(value, container)


def install_shortcuts() -> None:
    """Install the `_id` index and the lean walks into mongomock (idempotent).

    mongomock looks these functions up at call time (`helpers.<name>`, module globals), so the
    replacements serve every collection, including those created before."""
    Collection._iter_documents = _iter_documents  # type: ignore[method-assign]
    helpers.patch_datetime_awareness_in_document = stored_form
    helpers.make_datetime_timezone_aware_in_document = aware_form
    mongomock.collection._copy_field = copied


class SlicedInserts:
    """A mongomock-motor collection whose unordered `insert_many` yields between slices."""

    def __init__(self, collection: Any, slice_size: int = INSERT_SLICE) -> None:
        self._collection = collection
        self._slice_size = slice_size

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)

    async def insert_many(
        self, documents: Sequence[Mapping[str, Any]], ordered: bool = True, **options: Any
    ) -> Any:
        """An ordered insert stops at its first error, so it is left whole; an unordered one is
        sliced, and its errors are gathered into one `BulkWriteError` as mongomock raises it."""
        documents = list(documents)
        try:
            return await self._insert_many(documents, ordered, **options)
        finally:
            documents_stored(len(documents))  # the collector policy (gc_tuning) counts the store

    async def _insert_many(
        self, documents: list[Mapping[str, Any]], ordered: bool, **options: Any
    ) -> Any:
        if ordered or len(documents) <= self._slice_size:
            return await self._collection.insert_many(documents, ordered=ordered, **options)
        inserted_ids: list[Any] = []
        write_errors: list[dict[str, Any]] = []
        for start in range(0, len(documents), self._slice_size):
            if start:
                await asyncio.sleep(0)
            part = documents[start : start + self._slice_size]
            try:
                result = await self._collection.insert_many(part, ordered=False, **options)
            except BulkWriteError as exc:
                failed = {error["index"] for error in exc.details["writeErrors"]}
                inserted_ids += [doc["_id"] for i, doc in enumerate(part) if i not in failed]
                write_errors += [
                    {**error, "index": error["index"] + start}
                    for error in exc.details["writeErrors"]
                ]
            else:
                inserted_ids += result.inserted_ids
        if write_errors:
            raise BulkWriteError({"writeErrors": write_errors, "nInserted": len(inserted_ids)})
        return InsertManyResult(inserted_ids, acknowledged=True)
