"""The benchmark's zero-loss check: acknowledged <= stored == counted, read at one settled moment.

wrk stops with requests still in flight, and the aggregator counts a moment after the store: a
check that reads `stored` once, waits for `counted` to catch up, and then reads `stored` again
compares two different moments, and once reported `stored 33524, counted 33499 -> LOSS` for a run
that had lost nothing. So the check reads both until neither changes across two reads, and judges
that one reading.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reading:
    """What the service says at one moment."""

    stored: int  # events it durably inserted (its `fanfinity_events_ingested_total`)
    counted: int  # events its summaries count (the sum of `totalEvents` over the run's matches)


@dataclass(frozen=True, slots=True)
class Settled:
    reading: Reading
    settled: bool  # False: still changing when the time was up
    reads: int


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    text: str


def wait_until_settled(
    read: Callable[[], Reading],
    *,
    interval_s: float = 0.5,
    timeout_s: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Settled:
    """Read until two reads in a row agree and the summaries count what the store holds.

    A settled reading with counted != stored may still be the aggregator between two batches, so
    it keeps reading until the deadline; the last reading then stands, settled or not.
    """
    deadline = clock() + timeout_s
    previous, reads = read(), 1
    while True:
        sleep(interval_s)
        current, reads = read(), reads + 1
        settled = current == previous
        if (settled and current.counted == current.stored) or clock() >= deadline:
            return Settled(current, settled, reads)
        previous = current


def judge(acknowledged: int, outcome: Settled) -> Verdict:
    """Every acknowledged event stored, every stored event counted, none counted twice."""
    stored, counted = outcome.reading.stored, outcome.reading.counted
    figures = f"acknowledged {acknowledged} <= stored {stored} == counted {counted}"
    if not outcome.settled:
        return Verdict(False, f"{figures} -> NOT SETTLED: still moving after {outcome.reads} reads")
    problems = []
    if acknowledged > stored:
        problems.append(f"LOSS: {acknowledged - stored} acknowledged events are not stored")
    if counted < stored:
        problems.append(f"LOSS: {stored - counted} stored events are not counted")
    if counted > stored:
        problems.append(f"DOUBLE COUNT: {counted - stored} more events counted than stored")
    if problems:
        return Verdict(False, f"{figures} -> " + "; ".join(problems))
    return Verdict(True, f"{figures} -> OK")
