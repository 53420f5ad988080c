"""The storage engine, chosen in exactly one place: MongoDB (``mongodb://``) or embedded (``memory://``).

Both engines hand out the same repositories, change feed and unit of work. The embedded engine is
mongomock-motor plus an in-process change log; it cannot do transactions, so its unit of work
journals what the callback writes and undoes it when the callback raises (`transactions.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from beanie import init_beanie
from loguru import logger
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import monitoring
from pymongo.errors import CollectionInvalid, OperationFailure
from pymongo.read_concern import ReadConcern

from fanfinity.config import Settings
from fanfinity.storage.embedded import LeanUpdates, SlicedInserts, install_shortcuts
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
    DEAD_LETTERS,
    CheckpointRepository,
    DeadLetterRepository,
    EventRepository,
    MatchEventRepository,
    SummaryRepository,
)
from fanfinity.storage.transactions import (
    JournaledCollection,
    JournaledWrites,
    MongoTransaction,
    UnitOfWork,
    durable_write_concern,
)

NAMESPACE_EXISTS = 48


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
    dead_letters: DeadLetterRepository
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
        # wait at most 100 ms per getMore (FEED_WAIT_S), so this bound only fires on a real stall.
        socketTimeoutMS=max(10_000, 5 * timeout_ms),
        appname="fanfinity",
        event_listeners=list(command_listeners),
    )
    database = client[settings.db_name]
    await _init_documents(database)
    await database[DEAD_LETTERS].create_index("matchId", name="match")
    durable = durable_write_concern(settings.store_timeout_s)
    events = database.get_collection(EVENTS, write_concern=durable)
    logger.info("storage engine: MongoDB database {!r}", settings.db_name)
    return Engine(
        name="mongodb",
        client=client,
        database=database,
        events=EventRepository(
            events, majority_reads=events.with_options(read_concern=ReadConcern("majority"))
        ),
        summaries=SummaryRepository(database[MATCH_SUMMARIES], settings.store_timeout_s),
        checkpoints=CheckpointRepository(database[CHECKPOINTS]),
        match_events=MatchEventRepository(database[MATCH_EVENTS]),
        dead_letters=DeadLetterRepository(database[DEAD_LETTERS]),
        feed=MongoChangeFeed(client, database, events),
        unit_of_work=MongoTransaction(client, durable),
        ping_timeout_s=settings.store_timeout_s,
    )


async def _init_documents(database: Any, attempts: int = 3) -> None:
    """Create collections and indexes; an API and an aggregator starting on a fresh database at the
    same moment can both try to create the time-series collection, and one then loses the race.

    Beanie checks `list_collection_names` and then creates: the loser of that race gets PyMongo's
    `CollectionInvalid` ("collection ... already exists": `Database.create_collection` in
    pymongo/synchronous/database.py, which Motor runs, lists the collections again first), or,
    when both sent the create, `OperationFailure` 48 (NamespaceExists) from the server."""
    for attempt in range(1, attempts + 1):
        try:
            await init_beanie(database=database, document_models=[*SERVICE_DOCUMENTS, MatchEvent])
            return
        except (CollectionInvalid, OperationFailure) as exc:
            lost_race = isinstance(exc, CollectionInvalid) or exc.code == NAMESPACE_EXISTS
            if not lost_race or attempt == attempts:
                raise
            logger.info("collections were being created by another process; retrying")
            await asyncio.sleep(0.5 * attempt)


async def _open_embedded(settings: Settings) -> Engine:
    from mongomock_motor import AsyncMongoMockClient

    install_shortcuts()
    client: Any = AsyncMongoMockClient(tz_aware=True)
    database = client[settings.db_name]
    # mongomock cannot create time-series collections, so `match_events` stays a plain one here.
    await init_beanie(database=database, document_models=list(SERVICE_DOCUMENTS))
    events = SlicedInserts(
        database.get_collection(
            EVENTS, write_concern=durable_write_concern(settings.store_timeout_s)
        ),
        encodable=True,
    )
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
        summaries=SummaryRepository(
            JournaledCollection(LeanUpdates(database[MATCH_SUMMARIES])), settings.store_timeout_s
        ),
        checkpoints=CheckpointRepository(JournaledCollection(database[CHECKPOINTS])),
        match_events=MatchEventRepository(SlicedInserts(database[MATCH_EVENTS], encodable=True)),
        dead_letters=DeadLetterRepository(JournaledCollection(database[DEAD_LETTERS])),
        feed=feed,
        unit_of_work=JournaledWrites(),
        ping_timeout_s=settings.store_timeout_s,
    )
