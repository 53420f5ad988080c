"""Time and peak memory of a full rebuild on the embedded engine (prints figures, asserts nothing).

python scripts/measure_rebuild.py --events 1000000 --matches 1000

The load goes through the service's own `EventRepository.insert_many` (10,000 events a call), as
ingest writes; the rebuild is `rebuild_all`, unchanged. The split printed is: load, then the
rebuild, of which the summary writes (`replace_counts`, timed by wrapping the repository's
method here) and the rest (snapshot reads: the match-id listing and one aggregation per chunk,
plus the fold of their rows).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from loguru import logger

from fanfinity.config import Settings
from fanfinity.pipeline.rebuild import rebuild_all
from fanfinity.storage.engine import open_engine

KICK_OFF = datetime(2025, 5, 10, 19, 0, tzinfo=UTC)
TYPES = ("goal", "corner", "foul", "yellow_card", "substitution", "offside")
LOAD_BATCH = 10_000


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def measure(events: int, matches: int, chunk: int) -> None:
    engine = await open_engine(Settings())
    started = time.perf_counter()
    batch = []
    for number in range(events):
        batch.append(
            {
                "_id": f"e{number}",
                "matchId": f"m{number % matches}",
                "eventType": TYPES[number % len(TYPES)],
                "timestamp": KICK_OFF + timedelta(minutes=(number // matches) % 120),
                "teamId": ("al-hilal", "al-nassr")[number % 2],
                "receivedAt": KICK_OFF,
                "fingerprint": "x",
            }
        )
        if len(batch) == LOAD_BATCH:
            await engine.events.insert_many(batch)
            batch = []
    if batch:
        await engine.events.insert_many(batch)
    loaded = time.perf_counter()
    loaded_rss = peak_rss_mib()

    writing = 0.0
    replace_counts = engine.summaries.replace_counts

    async def timed_replace_counts(
        summaries: Mapping[str, Mapping[str, Any]], rebuilt_at: datetime, session: Any = None
    ) -> None:
        nonlocal writing
        began = time.perf_counter()
        await replace_counts(summaries, rebuilt_at, session)
        writing += time.perf_counter() - began

    engine.summaries.replace_counts = timed_replace_counts  # type: ignore[method-assign]
    report = await rebuild_all(engine, chunk_size=chunk)
    rebuilt = time.perf_counter()
    rebuild_s = rebuilt - loaded
    chunks = -(-report.matches // chunk)
    print(f"{events} events, {matches} matches, chunks of {chunk} matches ({chunks} chunks)")
    print(f"  load     {loaded - started:7.1f} s  (insert_many of {LOAD_BATCH} events a call)")
    print(
        f"  rebuild  {rebuild_s:7.1f} s  ({report.matches} summaries, {report.events} events "
        "counted)"
    )
    print(f"    reads and fold  {rebuild_s - writing:7.1f} s")
    print(f"    summary writes  {writing:7.1f} s")
    print(
        f"  peak RSS {peak_rss_mib():7.0f} MiB  (process; {loaded_rss:.0f} MiB after the load, "
        "events included)"
    )
    engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--matches", type=int, default=1_000)
    parser.add_argument("--chunk", type=int, default=500)
    args = parser.parse_args()
    logger.remove()
    asyncio.run(measure(args.events, args.matches, args.chunk))


if __name__ == "__main__":
    main()
