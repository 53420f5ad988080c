"""The storage engine, chosen in exactly one place: MongoDB (``mongodb://``) or embedded (``memory://``).

Both engines hand out the same repositories, change feed and unit of work. The embedded engine is
mongomock-motor plus an in-process change log; it cannot do transactions, so its unit of work runs
the same callback without one (one process, one event loop: nothing interleaves a batch).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from beanie import init_beanie
from loguru import logger
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import WriteConcern, monitoring
from pymongo.errors import OperationFailure
from pymongo.read_concern import ReadConcern

from fanfinity.config import Settings
from fanfinity.storage.feeds import ChangeFeed, InProcessChangeFeed, MongoChangeFeed
from fanfinity.storage.models import (
    CHECKPOINTS,
    EVENTS,
    MATCH_EVENTS,
    MATCH_SUMMARIES,
    SERVICE_DOCUMENTS,
    MatchEvent,
)
from fanfinity.storage.repositories import (
    CheckpointRepository,
    EventRepository,
    MatchEventRepository,
    SummaryRepository,
)

T = TypeVar("T")
DURABLE = WriteConcern(w="majority", j=True)
NAMESPACE_EXISTS = 48


class UnitOfWork(Protocol):
    async def run(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """Run `work(session)` atomically where the engine can."""
        ...


class MongoTransaction:
    """A majority-committed transaction; `with_transaction` retries transient errors."""

    def __init__(self, client: Any) -> None:
        self._client = client

    async def run(self, work: Callable[[Any], Awaitable[T]]) -> T:
        async with await self._client.start_session() as session:
            result: T = await session.with_transaction(
                work,
                read_concern=ReadConcern("majority"),
                write_concern=DURABLE,
            )
            return result


class PlainWrites:
    """The embedded engine's unit of work: the same callback, no session."""

    async def run(self, work: Callable[[Any], Awaitable[T]]) -> T:
        return await work(None)


@dataclass(slots=True)
class Engine:
    """Everything the service needs from storage, whichever engine provides it."""

    name: str
    client: Any
    database: Any
    events: EventRepository
    summaries: SummaryRepository
    checkpoints: CheckpointRepository
    match_events: MatchEventRepository
    feed: ChangeFeed
    unit_of_work: UnitOfWork
    ping_timeout_s: float

    async def ping(self) -> bool:
        """True when the store answers within the timeout."""
        try:
            await asyncio.wait_for(self.database.command("ping"), timeout=self.ping_timeout_s)
        except Exception as exc:  # any failure means "not reachable" to a health check
            logger.debug("store ping failed: {}", exc)
            return False
        return True

    def close(self) -> None:
        self.client.close()


async def open_engine(
    settings: Settings, command_listeners: Sequence[monitoring.CommandListener] = ()
) -> Engine:
    """Connect, create indexes (and the time-series collection on MongoDB), wire the seams.

    `command_listeners` (the tracing spans) go on this client only; mongomock emits no commands."""
    if settings.embedded:
        return await _open_embedded(settings)
    return await _open_mongodb(settings, command_listeners)


async def _open_mongodb(
    settings: Settings, command_listeners: Sequence[monitoring.CommandListener] = ()
) -> Engine:
    timeout_ms = int(settings.store_timeout_s * 1000)
    client: Any = AsyncIOMotorClient(
        settings.mongodb_url,
        tz_aware=True,
        retryWrites=True,
        retryReads=True,
        w="majority",
        journal=True,
        wTimeoutMS=timeout_ms,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        # A silent network (no RST) must not hang the driver's sockets forever: change streams
        # wait at most 200 ms per getMore, so this bound only fires on a real stall.
        socketTimeoutMS=max(10_000, 5 * timeout_ms),
        appname="fanfinity",
        event_listeners=list(command_listeners),
    )
    database = client[settings.db_name]
    await _init_documents(database)
    events = database.get_collection(EVENTS, write_concern=DURABLE)
    logger.info("storage engine: MongoDB database {!r}", settings.db_name)
    return Engine(
        name="mongodb",
        client=client,
        database=database,
        events=EventRepository(
            events, majority_reads=events.with_options(read_concern=ReadConcern("majority"))
        ),
        summaries=SummaryRepository(database[MATCH_SUMMARIES]),
        checkpoints=CheckpointRepository(database[CHECKPOINTS]),
        match_events=MatchEventRepository(database[MATCH_EVENTS]),
        feed=MongoChangeFeed(client, database, events),
        unit_of_work=MongoTransaction(client),
        ping_timeout_s=settings.store_timeout_s,
    )


async def _init_documents(database: Any, attempts: int = 3) -> None:
    """Create collections and indexes; an API and an aggregator starting on a fresh database at the
    same moment can both try to create the time-series collection, and one then loses the race."""
    for attempt in range(1, attempts + 1):
        try:
            await init_beanie(database=database, document_models=[*SERVICE_DOCUMENTS, MatchEvent])
            return
        except OperationFailure as exc:
            if exc.code != NAMESPACE_EXISTS or attempt == attempts:
                raise
            logger.info("collections were being created by another process; retrying")
            await asyncio.sleep(0.5 * attempt)


async def _open_embedded(settings: Settings) -> Engine:
    from mongomock_motor import AsyncMongoMockClient

    client: Any = AsyncMongoMockClient(tz_aware=True)
    database = client[settings.db_name]
    # mongomock cannot create time-series collections, so `match_events` stays a plain one here.
    await init_beanie(database=database, document_models=list(SERVICE_DOCUMENTS))
    events = database.get_collection(EVENTS, write_concern=DURABLE)
    feed = InProcessChangeFeed(events)
    logger.warning(
        "storage engine: embedded (memory://); events live in this process only and are lost "
        "on restart. Set FANFINITY_MONGODB_URL=mongodb://... to keep them."
    )
    return Engine(
        name="embedded",
        client=client,
        database=database,
        events=EventRepository(events, on_inserted=feed.append, write_lock=feed.write_lock),
        summaries=SummaryRepository(database[MATCH_SUMMARIES]),
        checkpoints=CheckpointRepository(database[CHECKPOINTS]),
        match_events=MatchEventRepository(database[MATCH_EVENTS]),
        feed=feed,
        unit_of_work=PlainWrites(),
        ping_timeout_s=settings.store_timeout_s,
    )
