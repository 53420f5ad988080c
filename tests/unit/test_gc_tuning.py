"""The collector policy: on the embedded engine no collection walks the stored events again.

Each case runs in its own interpreter, so the policy under test does not change this one's. A
collection's pause is its walk over the tracked objects of the generations it collects; the
child process counts that walk at the start of every collection while it keeps a growing store of
nested documents alive, as the embedded engine does.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fanfinity.gc_tuning import EMBEDDED_THRESHOLDS

CHILD = """
import gc, json, sys, weakref
from fanfinity.gc_tuning import tune_garbage_collector

walks = []
def measure(phase, info):
    if phase == "start":
        walks.append(sum(len(gc.get_objects(g)) for g in range(info["generation"] + 1)))

tune_garbage_collector(embedded=sys.argv[1] == "embedded")
gc.callbacks.insert(0, measure)

class Node:
    pass

store = []
young_cycles = []
for number in range(40_000):  # kept alive: documents with nested metadata, ~6 containers each
    store.append({"_id": number, "metadata": {"a": {"b": [number, {"c": [1, 2]}]}}})
    if number % 1000 == 0:  # a reference cycle that is dropped at once (a request's garbage)
        node = Node()
        node.self = node
        young_cycles.append(weakref.ref(node))
        del node
gc.callbacks.remove(measure)
print(json.dumps({
    "collections": len(walks),
    "longest_walk": max(walks),
    "cycles_reclaimed": sum(ref() is None for ref in young_cycles),
    "cycles": len(young_cycles),
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


def test_embedded_policy_never_walks_more_than_what_was_allocated_since_the_last_collection(
    embedded: dict[str, int],
) -> None:
    young = EMBEDDED_THRESHOLDS[0]
    assert embedded["collections"] >= 240_000 // young // 2  # it does collect, often
    assert embedded["longest_walk"] <= 2 * young


def test_embedded_policy_still_reclaims_cycles_that_die_young(embedded: dict[str, int]) -> None:
    assert embedded["cycles_reclaimed"] >= embedded["cycles"] - 1  # the last may be uncollected


def test_mongodb_policy_walks_the_surviving_store_which_is_why_it_is_not_used_embedded(
    embedded: dict[str, int],
) -> None:
    mongodb = run_child("mongodb")
    assert mongodb["longest_walk"] > 5 * embedded["longest_walk"]
