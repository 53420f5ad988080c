"""Time and peak memory of a full rebuild on the embedded engine (prints figures, asserts nothing).

python scripts/measure_rebuild.py --events 1000000 --matches 1000
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
from datetime import UTC, datetime, timedelta

from loguru import logger

from fanfinity.config import Settings
from fanfinity.pipeline.rebuild import rebuild_all
from fanfinity.storage.engine import open_engine

KICK_OFF = datetime(2025, 5, 10, 19, 0, tzinfo=UTC)
TYPES = ("goal", "corner", "foul", "yellow_card", "substitution", "offside")


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
        if len(batch) == 10_000:
            await engine.events.insert_many(batch)
            batch = []
    if batch:
        await engine.events.insert_many(batch)
    loaded = time.perf_counter()
    report = await rebuild_all(engine, chunk_size=chunk)
    rebuilt = time.perf_counter()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{events} events, {matches} matches: load {loaded - started:.1f}s, "
        f"rebuild {rebuilt - loaded:.1f}s ({report.matches} summaries, {report.events} events "
        f"counted), peak RSS {peak_mib:.0f} MiB (process, events included)"
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
