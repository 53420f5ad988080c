"""The match list, cached like metrics; rate-limited per client address in api/match_list.py.

Uncached, each `GET /api/matches` sorted the summaries and ran `count_documents` over them
(`total` has no index: a collection scan on MongoDB); with ~5,700 matches each request blocked
the embedded engine's event loop ~270 ms and four clients got producers 503s (issue 18). A page
is now read at most once per `ttl_s` per (status, limit, offset), concurrent misses share that
read, and each client address has a request budget (FANFINITY_MATCH_LIST_RATE_PER_S/_BURST), so
walking offsets cannot turn the cache into a scan per request.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fanfinity.storage.repositories import SummaryRepository

MAX_CACHED_PAGES = 1_000
Page = tuple[list[dict[str, Any]], int]
PageKey = tuple[int | None, int, int]


class MatchListCache:
    """`list()` with the repository's signature, served from a short cache with single flight."""

    def __init__(self, summaries: SummaryRepository, ttl_s: float) -> None:
        self._summaries = summaries
        self._ttl_s = ttl_s
        self._pages: dict[PageKey, tuple[float, Page]] = {}
        self._in_flight: dict[PageKey, asyncio.Future[Page]] = {}
        self.store_reads = 0

    async def list(self, status_rank: int | None, limit: int, offset: int) -> Page:
        key = (status_rank, limit, offset)
        cached = self._pages.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        in_flight = self._in_flight.get(key)
        if in_flight is not None:
            return await asyncio.shield(in_flight)
        future: asyncio.Future[Page] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            self.store_reads += 1
            page = await self._summaries.list(status_rank, limit, offset)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it
            raise
        else:
            future.set_result(page)
            self._remember(key, page)
            return page
        finally:
            del self._in_flight[key]

    def _remember(self, key: PageKey, page: Page) -> None:
        if self._ttl_s <= 0:
            return
        now = time.monotonic()
        if len(self._pages) >= MAX_CACHED_PAGES:
            self._pages = {k: entry for k, entry in self._pages.items() if entry[0] > now}
            if len(self._pages) >= MAX_CACHED_PAGES:
                self._pages.clear()
        self._pages[key] = (now + self._ttl_s, page)
