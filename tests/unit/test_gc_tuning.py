"""The collector policy: on the embedded engine no collection walks the stored events again, and
nothing is frozen while the store does not grow.

Each case runs in its own interpreter, so the policy under test does not change this one's. A
collection's pause is its walk over the tracked objects of the generations it collects; the
child process counts that walk at the start of every collection while it keeps a growing store of
nested documents alive and reports each stored batch as the embedded engine does.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fanfinity.gc_tuning import EMBEDDED_THRESHOLDS, FREEZE_EVERY_DOCUMENTS

CHILD = """
import gc, json, sys, weakref
from fanfinity.gc_tuning import documents_stored, tune_garbage_collector

walks = []
def measure(phase, info):
    if phase == "start":
        walks.append(sum(len(gc.get_objects(g)) for g in range(info["generation"] + 1)))

tune_garbage_collector(embedded=sys.argv[1] == "embedded")
gc.callbacks.insert(0, measure)

class Connection:  # in a reference cycle with itself, as a transport and its protocol are
    def __init__(self):
        self.me = self

# 1. The store grows: documents with nested metadata (~6 containers each), stored 50 at a time.
store = []
for number in range(40_000):
    store.append({"_id": number, "metadata": {"a": {"b": [number, {"c": [1, 2]}]}}})
    if number % 50 == 49:
        documents_stored(50)
gc.callbacks.remove(measure)

# 2. Then only requests, no stored documents: connections that live through collections and
# close afterwards must still be reclaimed.
gc.collect()
open_connections = [Connection() for _ in range(1_000)]
closed = [weakref.ref(connection) for connection in open_connections]
for _ in range(3):
    gc.collect(0)  # they survive young collections while open
garbage = [[index] for index in range(20_000)]  # requests' allocations: more collections run
del open_connections, garbage
gc.collect()
print(json.dumps({
    "collections": len(walks),
    "longest_walk": max(walks),
    "connections_reclaimed": sum(ref() is None for ref in closed),
}))
"""


def run_child(policy: str) -> dict[str, int]:
    done = subprocess.run(  # noqa: S603 - this interpreter with the fixed script above
        [sys.executable, "-c", CHILD, policy], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, int] = json.loads(done.stdout)
    return result


@pytest.fixture(scope="module")
def embedded() -> dict[str, int]:
    return run_child("embedded")


def test_embedded_policy_walks_at_most_what_was_stored_since_the_last_freeze(
    embedded: dict[str, int],
) -> None:
    young = EMBEDDED_THRESHOLDS[0]
    assert embedded["collections"] >= 240_000 // young // 2  # it does collect, often
    # between freezes: the young generation plus ~6 containers per document stored since
    assert embedded["longest_walk"] <= young + 8 * FREEZE_EVERY_DOCUMENTS


def test_embedded_policy_reclaims_cycles_that_outlive_collections_when_nothing_is_stored(
    embedded: dict[str, int],
) -> None:
    assert embedded["connections_reclaimed"] == 1_000


def test_mongodb_policy_walks_the_surviving_store_which_is_why_it_is_not_used_embedded(
    embedded: dict[str, int],
) -> None:
    mongodb = run_child("mongodb")
    assert mongodb["longest_walk"] > 3 * embedded["longest_walk"]
    assert mongodb["connections_reclaimed"] == 1_000
