"""Aggregations over the embedded engine's `events` as they stand in a snapshot, without
mongomock's per-query costs.

mongomock's `Collection.aggregate` copies every stored document through a cursor that re-slices
its whole result list on each `next()` (quadratic in the collection: a 10^5-event rebuild spent
two thirds of its 167 s there), then `$match`es by scanning, then `$group`s by sorting on
`BsonComparable` keys (about 200 us per event). A rebuild asks for one aggregation per chunk of
matches, so a 10^6-event rebuild ran over 17 minutes without finishing. While a snapshot is
open no event can be written (it holds the feed's write lock), so this module freezes the
stored documents once and:

* serves a leading `$match` on `matchId` (equality or a string range, what the rebuild sends)
  from a sorted index, in natural order; anything else goes through mongomock's own filter;
* runs `$group` on field paths and `$dateToString` with `$sum` of a constant and `$min`/`$max`,
  and a `$sort` on `_id`, directly when every value has the plain type that makes the result
  obvious (string keys, datetime operands); any other stage, shape or value type is handed, with
  the rows so far, to mongomock's `process_pipeline`, on copies made the way `find()` makes them.

The results equal mongomock's own aggregation, order included (a property test checks it on
varied data and pipelines, tests/unit/test_embedded_snapshot.py).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mongomock import aggregate as mongomock_aggregate
from mongomock import filtering, helpers
from mongomock.collection import Collection, _copy_field

Row = dict[str, Any]
# mongomock is untyped: its functions used here, given the types they take and return.
_process_pipeline: Callable[..., Any] = mongomock_aggregate.process_pipeline
_filter_applies: Callable[[Any, Any], bool] = filtering.filter_applies
_patch_for_match: Callable[[Any], Any] = helpers.patch_datetime_awareness_in_document
_make_aware: Callable[[Any], Any] = helpers.make_datetime_timezone_aware_in_document
_copy_document: Callable[[Any, type], Any] = _copy_field
INDEXED_FIELD = "matchId"
_RANGE_OPERATORS = frozenset({"$eq", "$gt", "$gte", "$lt", "$lte"})


class _Unsupported(Exception):
    """This stage or value is outside the shapes evaluated here: mongomock evaluates it."""


def mongomock_collection(collection: Any) -> Collection | None:
    """The synchronous mongomock collection behind a mongomock-motor one (or None).

    mongomock-motor keeps it in a private attribute and has no accessor; its `__getattr__`
    forwarding makes the lookup work through wrappers that forward too."""
    inner = getattr(collection, "_AsyncMongoMockCollection__collection", collection)
    return inner if isinstance(inner, Collection) else None


class FrozenEvents:
    """The stored documents of one collection at one moment, with a sorted `matchId` index."""

    def __init__(self, collection: Collection) -> None:
        self._database = collection.database
        self._tz_aware = bool(collection.codec_options.tz_aware)
        self._documents: list[Mapping[str, Any]] = list(collection._store.documents)
        keys: list[str] = []
        indexed: list[int] = []
        self._unindexed: list[int] = []
        for position, document in enumerate(self._documents):
            key = document.get(INDEXED_FIELD)
            if type(key) is str:
                keys.append(key)
                indexed.append(position)
            else:
                self._unindexed.append(position)
        order = sorted(range(len(keys)), key=keys.__getitem__)
        self._keys = [keys[i] for i in order]
        self._positions = [indexed[i] for i in order]

    def aggregate(self, pipeline: Sequence[Mapping[str, Any]]) -> list[Row]:
        """What mongomock's `aggregate(pipeline)` returns on these documents."""
        stages = list(pipeline)
        documents = self._leading_match(stages[0]) if stages else None
        if documents is None:
            documents = list(self._documents)
        else:
            stages = stages[1:]
        rows: list[Row] | None = None  # None while `documents` are the stored ones (not ours)
        for index, stage in enumerate(stages):
            try:
                rows = self._stage(stage, documents, rows)
            except _Unsupported:
                source = [self._as_found(d) for d in documents] if rows is None else rows
                remaining = stages[index:]
                return list(_process_pipeline(source, self._database, remaining, None))
        return [self._as_found(d) for d in documents] if rows is None else rows

    def _as_found(self, document: Mapping[str, Any]) -> Row:
        """The copy `find()` hands to mongomock's pipeline (tz-aware datetimes when asked)."""
        if self._tz_aware:
            found: Row = _make_aware(document)
            return found
        copied: Row = _copy_document(document, dict)
        return copied

    def _leading_match(self, stage: Mapping[str, Any]) -> list[Mapping[str, Any]] | None:
        """The stored documents a leading `$match` keeps, in natural order, or None when the
        filter is not one the index answers exactly."""
        if list(stage) != ["$match"] or not isinstance(stage["$match"], Mapping):
            return None
        spec = stage["$match"]
        if not spec:
            return list(self._documents)
        if list(spec) != [INDEXED_FIELD]:
            return None
        bounds = _string_bounds(spec[INDEXED_FIELD])
        if bounds is None:
            return None
        low, low_inclusive, high, high_inclusive = bounds
        start = 0
        if low is not None:
            start = (bisect.bisect_left if low_inclusive else bisect.bisect_right)(self._keys, low)
        stop = len(self._keys)
        if high is not None:
            stop = (bisect.bisect_right if high_inclusive else bisect.bisect_left)(self._keys, high)
        selected = self._positions[start:stop] if start < stop else []
        patched = _patch_for_match(dict(spec))
        selected += [
            position
            for position in self._unindexed
            if _filter_applies(
                patched,
                _patch_for_match(self._as_found(self._documents[position])),
            )
        ]
        selected.sort()
        return [self._documents[position] for position in selected]

    def _stage(
        self,
        stage: Mapping[str, Any],
        documents: Sequence[Mapping[str, Any]],
        rows: list[Row] | None,
    ) -> list[Row]:
        """A `$group` directly on the stored documents, or a `$sort` on rows made here."""
        if len(stage) != 1:
            raise _Unsupported
        ((operator, options),) = stage.items()
        if operator == "$group" and rows is None:
            return _GroupPlan.parse(options).run(documents, self._tz_aware)
        if operator == "$sort" and rows is not None:
            return _sort_by_id(options, rows)
        raise _Unsupported


def _string_bounds(condition: Any) -> tuple[str | None, bool, str | None, bool] | None:
    """(low, low inclusive, high, high inclusive) when `condition` compares `matchId` with
    strings only: for string values that is Python's string order, as in mongomock's filter."""
    if type(condition) is str:
        return condition, True, condition, True
    if not isinstance(condition, Mapping) or not condition:
        return None
    if not set(condition) <= _RANGE_OPERATORS or any(
        type(v) is not str for v in condition.values()
    ):
        return None
    low: str | None = None
    low_inclusive = True
    high: str | None = None
    high_inclusive = True
    for operator, value in condition.items():
        if operator in ("$eq", "$gte", "$gt"):
            inclusive = operator != "$gt"
            if low is None or value > low or (value == low and not inclusive):
                low, low_inclusive = value, inclusive
        if operator in ("$eq", "$lte", "$lt"):
            inclusive = operator != "$lt"
            if high is None or value < high or (value == high and not inclusive):
                high, high_inclusive = value, inclusive
    return low, low_inclusive, high, high_inclusive


def _plain_name(name: Any) -> bool:
    return isinstance(name, str) and bool(name) and not name.startswith("$") and "." not in name


def _field(path: Any) -> str:
    """`"$name"` -> `"name"` for a plain top-level field path."""
    if not isinstance(path, str) or not path.startswith("$") or path.startswith("$$"):
        raise _Unsupported
    name = path[1:]
    if not name or "." in name or "$" in name:
        raise _Unsupported
    return name


@dataclass(frozen=True, slots=True)
class _KeyPart:
    """One part of a group key: a string field, or a datetime field through `$dateToString`."""

    field: str
    date_format: str | None

    @classmethod
    def parse(cls, expression: Any) -> _KeyPart:
        if isinstance(expression, Mapping):
            if list(expression) != ["$dateToString"]:
                raise _Unsupported
            options = expression["$dateToString"]
            if not isinstance(options, Mapping) or set(options) != {"format", "date"}:
                raise _Unsupported
            date_format = options["format"]
            if type(date_format) is not str or date_format.startswith("$") or "%L" in date_format:
                raise _Unsupported
            return cls(_field(options["date"]), date_format)
        return cls(_field(expression), None)


@dataclass(frozen=True, slots=True)
class _Accumulator:
    output: str
    operator: str  # "$sum" of a constant, "$min" or "$max" of a datetime field
    field: str
    constant: int


@dataclass(frozen=True, slots=True)
class _GroupPlan:
    """A `$group` on string / `$dateToString` key parts with `$sum`, `$min` and `$max`."""

    names: tuple[str, ...] | None  # None: `_id` is one field path, not a document
    parts: tuple[_KeyPart, ...]
    accumulators: tuple[_Accumulator, ...]

    @classmethod
    def parse(cls, options: Any) -> _GroupPlan:
        if not isinstance(options, Mapping) or "_id" not in options:
            raise _Unsupported
        key = options["_id"]
        if isinstance(key, Mapping) and key and all(_plain_name(name) for name in key):
            names: tuple[str, ...] | None = tuple(str(name) for name in key)
            parts = tuple(_KeyPart.parse(part) for part in key.values())
        elif isinstance(key, str):
            names, parts = None, (_KeyPart.parse(key),)
            if parts[0].date_format is not None:
                raise _Unsupported
        else:
            raise _Unsupported
        accumulators = []
        for output, spec in options.items():
            if output == "_id":
                continue
            if not isinstance(spec, Mapping) or len(spec) != 1:
                raise _Unsupported
            ((operator, operand),) = spec.items()
            if operator == "$sum" and type(operand) is int:
                accumulators.append(_Accumulator(str(output), operator, "", operand))
            elif operator in ("$min", "$max"):
                accumulators.append(_Accumulator(str(output), operator, _field(operand), 0))
            else:
                raise _Unsupported
        return cls(names, parts, tuple(accumulators))

    def run(self, documents: Sequence[Mapping[str, Any]], tz_aware: bool) -> list[Row]:
        """Groups in ascending key order (mongomock sorts by key before grouping)."""
        aware: Callable[[datetime], datetime] = _make_aware if tz_aware else _same
        groups: dict[tuple[str, ...], list[Any]] = {}
        for document in documents:
            key = tuple(_key_value(part, document, aware) for part in self.parts)
            state = groups.get(key)
            if state is None:
                state = groups[key] = [None] * len(self.accumulators)
            for slot, accumulator in enumerate(self.accumulators):
                state[slot] = _accumulate(accumulator, state[slot], document, aware)
        rows: list[Row] = []
        for key in sorted(groups):
            row: Row = {
                a.output: value for a, value in zip(self.accumulators, groups[key], strict=True)
            }
            row["_id"] = key[0] if self.names is None else dict(zip(self.names, key, strict=True))
            rows.append(row)
        return rows


def _same(value: datetime) -> datetime:
    return value


def _key_value(
    part: _KeyPart, document: Mapping[str, Any], aware: Callable[[datetime], datetime]
) -> str:
    value = document.get(part.field)
    if part.date_format is None:
        if type(value) is not str:
            raise _Unsupported
        return value
    if type(value) is not datetime:
        raise _Unsupported
    return aware(value).strftime(part.date_format)


def _accumulate(
    accumulator: _Accumulator,
    current: Any,
    document: Mapping[str, Any],
    aware: Callable[[datetime], datetime],
) -> Any:
    if accumulator.operator == "$sum":
        return accumulator.constant + (current or 0)
    value = document.get(accumulator.field)
    if type(value) is not datetime:
        raise _Unsupported
    value = aware(value)
    if current is None:
        return value
    if accumulator.operator == "$min":
        return value if value < current else current
    return value if value > current else current


def _sort_by_id(options: Any, rows: Sequence[Row]) -> list[Row]:
    """A `$sort` on `_id` alone when every `_id` is a string (stable, like mongomock's)."""
    if not isinstance(options, Mapping) or list(options) != ["_id"]:
        raise _Unsupported
    direction = options["_id"]
    if type(direction) is not int or direction not in (1, -1):
        raise _Unsupported
    if any(type(row.get("_id")) is not str for row in rows):
        raise _Unsupported
    return sorted(rows, key=lambda row: row["_id"], reverse=direction < 0)
