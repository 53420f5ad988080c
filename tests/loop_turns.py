"""How many turns of the event loop another task got while some awaited work ran: the proof
that work said to run in slices really lets other requests in between."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass
class LoopTurns:
    count: int = 0  # turns the other task got inside the `async with`, its first one excluded


@contextlib.asynccontextmanager
async def other_task_turns() -> AsyncIterator[LoopTurns]:
    """Run a task that counts its turns; `count` holds those taken during the block."""
    seen = LoopTurns()
    turns = 0

    async def other_request() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_request())
    await asyncio.sleep(0)  # it runs once before the work starts
    before = turns
    try:
        yield seen
    finally:
        seen.count = turns - before
        other.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await other
