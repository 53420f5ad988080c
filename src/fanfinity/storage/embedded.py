"""mongomock made cheaper and fairer where our hot paths use it, giving the very results it gives.

The embedded engine is mongomock, whose every operation walks documents in Python; under load
those walks were most of the service's cost (profiled with py-spy under `make bench`). Two kinds
of shortcut, both installed once when the embedded engine opens, and two wrappers:

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

**Cheaper snapshots.** Before each update mongomock takes a `copy.deepcopy` of the document, to
tell whether it changed and to roll back a forbidden change; for a match summary (about a hundred
nested counters) that was half the update's cost. `deep_copied` gives `copy.deepcopy`'s result
for dicts, OrderedDicts and lists of immutable values with one type test per value, and leaves
anything else, and any structure that shares a container, to `copy.deepcopy`.

**A lean unordered insert.** mongomock's `Collection._insert` handles one document per call, through
mongomock-motor's error-enriching wrapper, with a version parse, a lock per store access, an ABC
`isinstance` per key for its key checks and a pass over the indexes for uniqueness: 25-29 us a
document on this VM, paid twice per event (the event, its time-series copy). `insert_unordered`
does the same steps for a whole slice under one lock (12-14 us): the same `_id` filling, duplicate
write errors and stored form, and the same exceptions for documents mongomock refuses, by asking
mongomock's own validation whenever the cheap checks find anything. Collections with a unique or
TTL index are left to mongomock, whose index walk they need.

**Inserts that yield.** A MongoDB `insert_many` waits for the server, and the event loop serves
other requests meanwhile; mongomock-motor's runs to the end without ever yielding. A group commit
of 500 events with deep metadata then held every other request for the whole insert (a single
event's p99 went to ~420 ms while such batches arrived). `SlicedInserts` runs an unordered
`insert_many` as consecutive slices with a turn of the event loop between them, and reports the
slices' results as one (indexes of write errors relative to the whole list, as MongoDB does).

**Lean counter updates.** The aggregator applies one upsert per match per batch to
`match_summaries`: `$inc` of some thirty ``prefix.key`` counters, `$min`/`$max` of moments and
the status. mongomock took a snapshot of the summary, converted the whole update, walked every
path through its generic updaters and compared the document with the snapshot; the undo journal
took a second copy. `LeanUpdates` (composed under `JournaledCollection`) applies such an update
to the stored document in place, under the store's write lock: `_id` filter, existing document,
`$inc`/`$min`/`$max`/`$set` of numbers, moments (or, for `$set`, scalars) on plain dict paths,
no two paths inside one another, stored values of the same kind, no unique or TTL index. It
plans every write before touching anything and refuses (to mongomock, unchanged) at the first
doubt, and tells "modified" field by field as mongomock's snapshot comparison would; it also
hands the journal its before-image document without mongomock's filter machinery. A summary
update of ~30 paths through `SummaryRepository.apply`, journal included, went from 148-153 us to
82-86 us on this VM (2 cores, shared): ~27 us of what is left is planning in pure Python (about
0.5 us a path, 1.5 us a moment for its conversion), ~13 us the journal's copy, ~8 us the update
document itself.
"""

from __future__ import annotations

import asyncio
import copy
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import bson
import mongomock.collection
from bson import ObjectId
from mongomock import helpers
from mongomock.collection import Collection
from mongomock.collection import _validate_data_fields as _mongomock_field_check
from mongomock.collection import validate_is_mutable_mapping as _mongomock_mapping_check
from mongomock.filtering import filter_applies as _filter_applies
from mongomock.store import CollectionStore
from pymongo.errors import BulkWriteError, DuplicateKeyError
from pymongo.results import InsertManyResult, UpdateResult

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
_field_check: Callable[[Mapping[str, Any]], None] = _mongomock_field_check
_mapping_check: Callable[[str, Any], None] = _mongomock_mapping_check
_deepcopy: Callable[[Any], Any] = copy.deepcopy


def stored_form(value: Any) -> Any:
    """`patch_datetime_awareness_in_document`: datetimes as naive UTC, to the millisecond."""
    kind = type(value)
    if kind is dict:
        return {k: v if type(v) in UNCHANGED else stored_form(v) for k, v in value.items()}
    if kind in UNCHANGED:
        return value
    if kind is list:
        return [item if type(item) in UNCHANGED else stored_form(item) for item in value]
    if kind is datetime:
        sub_ms = value.microsecond % 1000
        if value.tzinfo is None:  # a datetime is immutable: one already to the ms is kept
            return value if not sub_ms else value.replace(microsecond=value.microsecond - sub_ms)
        if value.tzinfo is UTC:  # no offset to subtract
            if not sub_ms:
                return value.replace(tzinfo=None)
            return value.replace(tzinfo=None, microsecond=value.microsecond - sub_ms)
    return _patch_datetimes(value)  # other offsets, tuples, OrderedDicts, Timestamps, ...


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


# The walks' unchanged values plus datetimes: all immutable, so handing them back as they are
# gives what `copy.deepcopy` gives, told apart only by identity.
DEEPCOPY_AS_IS = UNCHANGED | {datetime}


class _NotPlain(Exception):
    """The value holds something `deep_copied` leaves to `copy.deepcopy`."""


def deep_copied(value: Any) -> Any:
    """`copy.deepcopy(value)`: equal, of the same types, sharing no container with `value`."""
    try:
        return _plain_copy(value, set())
    except _NotPlain:
        return _deepcopy(value)


def _plain_copy(value: Any, seen: set[int]) -> Any:
    kind = type(value)
    if kind in DEEPCOPY_AS_IS:
        return value
    if kind is not dict and kind is not list and kind is not OrderedDict:
        raise _NotPlain
    if id(value) in seen:  # shared: `copy.deepcopy` keeps the sharing (its memo), so it decides
        raise _NotPlain
    seen.add(id(value))
    if kind is list:
        return [item if type(item) in DEEPCOPY_AS_IS else _plain_copy(item, seen) for item in value]
    items = {k: v if type(v) in DEEPCOPY_AS_IS else _plain_copy(v, seen) for k, v in value.items()}
    return items if kind is dict else OrderedDict(items)  # mongomock stores upserts as these


# mongomock.collection uses its `copy` module for `copy.copy` and `copy.deepcopy` only.
COPY_MODULE = SimpleNamespace(copy=copy.copy, deepcopy=deep_copied)


def install_shortcuts() -> None:
    """Install the `_id` index, the lean walks and the snapshots into mongomock (idempotent).

    mongomock looks these functions up at call time (`helpers.<name>`, module globals), so the
    replacements serve every collection, including those created before."""
    Collection._iter_documents = _iter_documents  # type: ignore[method-assign]
    helpers.patch_datetime_awareness_in_document = stored_form
    helpers.make_datetime_timezone_aware_in_document = aware_form
    mongomock.collection._copy_field = copied
    mongomock.collection.copy = COPY_MODULE  # type: ignore[attr-defined, assignment]


DUPLICATE_KEY_MESSAGE = str(DuplicateKeyError("E11000 Duplicate Key Error", 11000))


def _check_storable(document: Mapping[str, Any], encodable: bool = False) -> None:
    """mongomock's insert checks (string keys, then `_validate_data_fields` and a BSON encode),
    raising what they raise. For plain string keys without a leading `$` the encode alone finds
    what those checks find, and it is skipped when the caller says it encoded the document
    already (`encodable`); anything else, or a failed encode, goes through mongomock's own
    checks in mongomock's order."""
    if _plain_keys(document) and (encodable or _encodes(document)):
        return
    if not all(isinstance(key, str) for key in document):
        raise ValueError("Document keys must be strings")
    _field_check(document)
    bson.encode(document)


def _plain_keys(document: Mapping[str, Any]) -> bool:
    """Whether every key is a string and none starts with `$` (one join, not a test per key)."""
    try:
        joined = "\0".join(document)
    except TypeError:  # a key that is not a string
        return False
    return joined[:1] != "$" and "\0$" not in joined


def _encodes(document: Mapping[str, Any]) -> bool:
    try:
        bson.encode(document)
    except Exception:  # mongomock's checks, run next, raise what mongomock raises
        return False
    return True


def insert_unordered(
    store: CollectionStore, documents: Sequence[Any], encodable: bool = False
) -> list[Any]:
    """mongomock's `insert_many(documents, ordered=False)` for a collection without unique or TTL
    indexes: the inserted ids, or `BulkWriteError` with one write error per duplicate `_id`.

    As there, every document is first checked to be a mapping, a document without `_id` gets
    an ObjectId in place, and a document mongomock refuses raises out of the insert with the
    documents before it stored. With `encodable` the caller vouches that BSON encodes every
    document (it encoded them itself), and that one check is not made a second time."""
    if not documents:
        raise TypeError("documents must be a non-empty list")
    for document in documents:
        if type(document) is not dict:
            _mapping_check("document", document)
    inserted: list[Any] = []
    write_errors: list[dict[str, Any]] = []
    stored = store._documents
    with store._rwlock.writer():
        for index, document in enumerate(documents):
            _check_storable(document, encodable)
            if "_id" not in document:
                document["_id"] = ObjectId()
            document_id = document["_id"]
            key = helpers.hashdict(document_id) if isinstance(document_id, dict) else document_id
            if key in stored:
                write_errors.append(
                    {"index": index, "code": 11000, "errmsg": DUPLICATE_KEY_MESSAGE, "op": document}
                )
                continue
            stored[key] = stored_form(document)
            inserted.append(document_id)
    if write_errors:
        raise BulkWriteError({"writeErrors": write_errors, "nInserted": len(inserted)})
    return inserted


def needs_index_walk(store: CollectionStore) -> bool:
    """Whether inserts must go through mongomock, for its unique and TTL index handling."""
    return bool(store._ttl_indexes) or any(index.get("unique") for index in store.indexes.values())


class SlicedInserts:
    """A mongomock-motor collection whose unordered `insert_many` yields between slices.

    `encodable` is for collections whose every writer hands over only documents BSON encodes:
    `events` (`EventRepository` encodes each one and keeps the others out of the insert) and
    `match_events` (copies of stored events, built from their encodable values). Their inserts
    skip the encode mongomock would make again (~3 us an event)."""

    def __init__(
        self, collection: Any, slice_size: int = INSERT_SLICE, encodable: bool = False
    ) -> None:
        self._collection = collection
        self._slice_size = slice_size
        self._encodable = encodable

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
        if ordered or not documents:  # mongomock's own whole insert, or its empty-list error
            return await self._collection.insert_many(documents, ordered=ordered, **options)
        inserted_ids: list[Any] = []
        write_errors: list[dict[str, Any]] = []
        for start in range(0, len(documents), self._slice_size):
            if start:
                await asyncio.sleep(0)
            part = documents[start : start + self._slice_size]
            try:
                inserted_ids += await self._insert_unordered(part, **options)
            except BulkWriteError as exc:
                failed = {error["index"] for error in exc.details["writeErrors"]}
                inserted_ids += [doc["_id"] for i, doc in enumerate(part) if i not in failed]
                write_errors += [
                    {**error, "index": error["index"] + start}
                    for error in exc.details["writeErrors"]
                ]
        if write_errors:
            raise BulkWriteError({"writeErrors": write_errors, "nInserted": len(inserted_ids)})
        return InsertManyResult(inserted_ids, acknowledged=True)

    async def _insert_unordered(
        self, documents: list[Mapping[str, Any]], **options: Any
    ) -> list[Any]:
        store = self._collection._store
        if options or needs_index_walk(store):
            result = await self._collection.insert_many(documents, ordered=False, **options)
            return list(result.inserted_ids)
        return insert_unordered(store, documents, self._encodable)


# --- lean updates ------------------------------------------------------------------------------

LEAN_OPERATORS = frozenset({"$inc", "$min", "$max", "$set"})
# Exact types: a bool is no number here (mongomock would count True as 1, MongoDB refuses it).
NUMBERS = frozenset({int, float})
# `$set` values stored as they are (after `stored_form`), with no container to copy.
SCALARS = frozenset({str, int, float, bool, type(None), bytes, ObjectId, datetime})
DICTS = frozenset({dict, OrderedDict})
_ABSENT: Any = object()

# One planned field write: the deepest dict that exists on its path, the names of the dicts to
# create below it, the field's name and its new value.
Write = tuple[dict[str, Any], tuple[str, ...], str, Any]


def lean_update_one(
    store: CollectionStore, filter: Any, update: Any, connection_id: int
) -> UpdateResult | None:
    """mongomock's `update_one(filter, update)` for an `_id` filter and an update of `$inc`,
    `$min`, `$max` and `$set` on plain dict paths of an existing document, or None when the
    update is not such a one (nothing is then changed, and mongomock's own update must run).

    The whole update is checked before the document is touched, so a refusal needs no rollback,
    and no snapshot of the document is taken: whether it changed is told field by field."""
    with store._rwlock.writer():
        document = _found(store, filter)
        plan = None if document is None else _planned(document, update)
        if plan is None:
            return None
        writes, modified = plan
        _apply(writes)
    raw = {
        "connectionId": connection_id,
        "err": None,
        "n": 1,
        "nModified": int(modified),
        "ok": 1,
        "upserted": None,
        "updatedExisting": True,
    }
    return UpdateResult(raw, acknowledged=True)


def _found(store: CollectionStore, filter: Any) -> dict[str, Any] | None:
    """The stored document a filter of one plain `_id` names (alone, plain or as `$eq`/`$in`),
    when it is there and its `_id` is of the filter's type, so mongomock's match is certain."""
    if type(filter) is not dict or len(filter) != 1:
        return None
    wanted = filter.get("_id", _ABSENT)
    if type(wanted) not in PLAIN_ID_TYPES:  # the summaries' own filter needs no more than this
        ids = plain_ids(filter)
        if ids is None or len(ids) != 1:
            return None
        wanted = ids[0]
    document: Any = store._documents.get(wanted)
    if type(document) is not dict and type(document) is not OrderedDict:
        return None
    stored_id = document.get("_id", _ABSENT)
    if type(stored_id) is not type(wanted) or stored_id != wanted:
        return None
    found: dict[str, Any] = document
    return found


def _planned(document: dict[str, Any], update: Any) -> tuple[list[Write], bool] | None:
    """The update's field writes in mongomock's order and whether they modify the document, or
    None when any is not a lean one or two paths overlap (``a`` and ``a.b``: MongoDB refuses
    those, mongomock applies them in turn). As no path lies inside another, each new value can
    be worked out from the document as it stands."""
    if type(update) is not dict or not update:
        return None
    writes: list[Write] = []
    paths: set[str] = set()
    inner: set[str] = set()  # every proper prefix of a path
    modified = False
    fields_count = 0
    for operator, fields in update.items():
        if operator not in LEAN_OPERATORS or type(fields) is not dict or not fields:
            return None
        if not _plain_paths(fields):
            return None
        changes = _plan_fields(document, operator, fields, writes, inner)
        if changes is None:
            return None
        modified = modified or changes
        paths.update(fields)
        fields_count += len(fields)
    if len(paths) != fields_count or not paths.isdisjoint(inner):
        return None
    return writes, modified


def _plain_paths(fields: dict[Any, Any]) -> bool:
    """Whether every path is a string without `$` or a null character (one scan for them all)."""
    try:
        joined = "\0".join(fields)
    except TypeError:
        return False
    return "$" not in joined and joined.count("\0") == len(fields) - 1


def _plan_fields(
    document: dict[str, Any],
    operator: str,
    fields: dict[str, Any],
    writes: list[Write],
    inner: set[str],
) -> bool | None:
    """Plan one operator's writes (see `_planned`): whether they modify the document, or None
    when one is not a lean one.

    Written for the summary updates' dozens of ``prefix.key`` counters, which come grouped by
    prefix: after the first of a group (whose prefix is checked and looked up), a number under
    the same prefix takes a `partition`, one lookup and no call. Deeper paths: `_deep_path`."""
    head_seen: Any = _ABSENT  # the previous two-part path's first part, and the dict it names
    parent: Any = _ABSENT
    numeric = operator != "$set"
    modified = False
    missing: tuple[str, ...]
    for path, value in fields.items():
        if type(path) is not str:
            return None
        head, dot, name = path.partition(".")
        if head == head_seen and name and "." not in name and type(value) in NUMBERS and numeric:
            # the next number under the dict just looked up (or found missing)
            if parent is _ABSENT:
                writes.append((document, (head,), name, 0 + value if operator == "$inc" else value))
                modified = True
                continue
            container, missing = parent, ()
            stored = parent.get(name, _ABSENT)
            if stored is not _ABSENT and type(stored) not in NUMBERS:
                return None
        else:
            if type(value) not in NUMBERS:
                value = _lean_value(operator, value)
                if value is _ABSENT:
                    return None
            container = document
            missing = ()
            if not dot:
                name = head
                if not name or name == "_id":
                    return None
            elif "." in name:
                located = _deep_path(document, path, inner)
                if located is None:
                    return None
                container, missing, name = located
            else:
                if not head or not name or head == "_id":
                    return None
                inner.add(head)
                head_seen, parent = head, document.get(head, _ABSENT)
                if parent is _ABSENT:
                    missing = (head,)
                elif type(parent) in DICTS:
                    container = parent
                else:
                    return None  # a list, or a value mongomock's walk would silently stop at
            stored = _ABSENT if missing else container.get(name, _ABSENT)
            if not _applies(operator, stored, value, name):
                return None
        if stored is _ABSENT:
            writes.append((container, missing, name, 0 + value if operator == "$inc" else value))
            modified = True
            continue
        new = _combined(operator, stored, value)
        if new is not stored:  # else mongomock's write stores the very same value again
            writes.append((container, missing, name, new))
            modified = modified or not new == stored  # noqa: SIM201 - as the dict comparison asks
    return modified


def _deep_path(
    document: dict[str, Any], path: str, inner: set[str]
) -> tuple[dict[str, Any], tuple[str, ...], str] | None:
    """A path of three parts or more: the deepest dict on it, the dicts to create below, the
    field's name; its proper prefixes go into `inner`."""
    *walk, name = path.split(".")
    if "" in walk or not name or walk[0] == "_id":
        return None
    prefix = walk[0]
    inner.add(prefix)
    for part in walk[1:]:
        prefix += "." + part
        inner.add(prefix)
    container = document
    for depth, part in enumerate(walk):
        child = container.get(part, _ABSENT)
        if child is _ABSENT:
            return container, tuple(walk[depth:]), name
        if type(child) not in DICTS:
            return None
        container = child
    return container, (), name


def _lean_value(operator: str, value: Any) -> Any:
    """A value other than a number as mongomock stores it (datetimes naive UTC to the ms), or
    `_ABSENT` when the operator is left to mongomock for it."""
    kind = type(value)
    if kind is datetime and operator != "$inc":
        value = stored_form(value)
        return value if type(value) is datetime and value.tzinfo is None else _ABSENT
    if kind in NUMBERS or (operator == "$set" and kind in SCALARS):
        return value
    return _ABSENT


def _applies(operator: str, stored: Any, value: Any, name: str) -> bool:
    """Whether the operator's lean form gives mongomock's result for this stored value."""
    if operator == "$set":
        return _encodes({name: value})  # mongomock's check; it raises InvalidDocument
    if stored is _ABSENT:
        return True
    if type(value) is datetime:  # $min, $max: MongoDB compares values of one kind only
        return type(stored) is datetime and stored.tzinfo is None
    return type(stored) in NUMBERS


def _combined(operator: str, stored: Any, value: Any) -> Any:
    """The value mongomock's updater stores over `stored` (`_inc_updater`, `_max_updater`...)."""
    if operator == "$inc":
        return stored + value
    if operator == "$max":
        return value if value > stored else stored  # builtin max: the first of equals
    if operator == "$min":
        return value if value < stored else stored
    return value


def _apply(writes: list[Write]) -> None:
    """Store the planned values, new dicts made in path order as `_update_document_single_field`
    makes them."""
    for container, missing, name, value in writes:
        for part in missing:
            container = container.setdefault(part, {})
        container[name] = value


class LeanUpdates:
    """A mongomock-motor collection whose `update_one` takes `lean_update_one` when it can."""

    def __init__(self, collection: Any) -> None:
        self._collection = collection
        self._connection_id: int = collection.database.client._id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)

    def _iter_documents(self, filter: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """What mongomock's `_iter_documents` yields (the undo journal's before-image is its first
        document), straight from the store for a filter `lean_update_one` takes: a dict lookup,
        atomic under the GIL as the reader lock of mongomock's own lookup guards it."""
        store = self._collection._store
        document = None if needs_index_walk(store) else _found(store, filter)
        if document is None:
            documents: Iterator[dict[str, Any]] = self._collection._iter_documents(filter)
            return documents
        return iter((document,))

    async def update_one(
        self, filter: Mapping[str, Any], update: Any, upsert: bool = False, **options: Any
    ) -> Any:
        """An existing document's counters in place; anything else is mongomock's (an upsert
        that inserts, other operators or options, unique or TTL indexes to maintain)."""
        if not options:
            store = self._collection._store
            if not needs_index_walk(store):
                result = lean_update_one(store, filter, update, self._connection_id)
                if result is not None:
                    return result
        return await self._collection.update_one(filter, update, upsert=upsert, **options)
