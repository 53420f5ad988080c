"""The match list handler's read path: a per-address budget, then the cache."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection

from fanfinity.api.throttle import ReadThrottle
from fanfinity.config import Settings
from fanfinity.pipeline.match_list import MatchListCache, Page
from fanfinity.storage.repositories import SummaryRepository


class MatchListReads:
    """The cache and the per-address budget of one app."""

    def __init__(self, summaries: SummaryRepository, settings: Settings) -> None:
        self.cache = MatchListCache(summaries, settings.match_list_cache_ms / 1000)
        self.throttle = ReadThrottle(
            settings.match_list_burst, settings.match_list_rate_per_s, "match_list"
        )


async def cached_match_list(
    connection: ASGIConnection[Any, Any, Any, Any],
    status_rank: int | None,
    limit: int,
    offset: int,
) -> Page:
    """One page of summaries for the list handler: 429 + Retry-After past the caller's budget,
    else from the cache (made on first use from the app's engine and settings)."""
    state = connection.app.state
    reads: MatchListReads | None = state.get("match_list_reads")
    if reads is None:
        reads = MatchListReads(state.services.engine.summaries, state.settings)
        state["match_list_reads"] = reads
    reads.throttle.take(connection)
    return await reads.cache.list(status_rank, limit, offset)
