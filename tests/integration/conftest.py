"""Integration fixtures: a real MongoDB replica set at FANFINITY_TEST_MONGODB_URL.

Without the variable every test marked `integration` is skipped at collection, with the reason, so
`pytest` stays green on a laptop. With it, each test gets its own database
(`fanfinity_it_<uuid hex>`), dropped afterwards, and opens engines exactly as the service does
(`open_engine(Settings(...))`). Waiting is done by polling with a deadline, never by fixed sleeps.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec
import pytest
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import monitoring
from pymongo.read_concern import ReadConcern

from fanfinity.api.validation import decode_event
from fanfinity.config import Settings
from fanfinity.pipeline.aggregator import Aggregator
from fanfinity.pipeline.fold import SummaryIncrement, as_utc, fold_events
from fanfinity.pipeline.ingest import (
    IngestBatcher,
    IngestLatencyRecorder,
    WriteOutcome,
    event_document,
)
from fanfinity.schemas import ValidEvent
from fanfinity.storage.engine import Engine, open_engine
from fanfinity.storage.models import EVENTS, MATCH_SUMMARIES
from tests.conftest import PRODUCER_KEY

T = TypeVar("T")

URL_VARIABLE = "FANFINITY_TEST_MONGODB_URL"
SKIP_REASON = "FANFINITY_TEST_MONGODB_URL is not set: integration tests need a MongoDB replica set"
DEADLINE_S = 15.0
POLL_S = 0.05

# Whole seconds an hour ago: inside the API's accepted window, exact at BSON's millisecond grain.
BASE_TIME = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
EVENT_TYPES = ("match_start", "goal", "corner", "foul", "yellow_card", "substitution", "offside")
TEAMS = ("al-hilal", "al-nassr")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip every integration test, with the reason, when no replica set is configured."""
    if os.environ.get(URL_VARIABLE, "").strip():
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if item.get_closest_marker("integration") is not None:
            item.add_marker(skip)


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mongodb_url() -> str:
    url = os.environ.get(URL_VARIABLE, "").strip()
    if not url:
        pytest.skip(SKIP_REASON)
    return url


@pytest.fixture
async def database_name(mongodb_url: str) -> AsyncIterator[str]:
    """A database of this test's own, dropped once everything that used it has closed."""
    name = f"fanfinity_it_{uuid.uuid4().hex}"
    yield name
    client: Any = AsyncIOMotorClient(mongodb_url, serverSelectionTimeoutMS=10_000)
    try:
        # Drop the collections, not the database: `dropDatabase` needs the dropDatabase
        # privilege, which a `readWrite` user (what CI or a shared cluster may give) lacks.
        database = client[name]
        for collection in await database.list_collection_names():
            await database.drop_collection(collection)
    finally:
        client.close()


@pytest.fixture
def settings(mongodb_url: str, database_name: str) -> Settings:
    """The service's settings on the replica set (shadowing tests/conftest.py's embedded ones)."""
    return Settings(
        mongodb_url=mongodb_url,
        db_name=database_name,
        api_keys=frozenset({PRODUCER_KEY}),
        batch_linger_ms=1.0,
        metrics_cache_ms=0.0,
        store_timeout_s=10.0,
        log_level="WARNING",
    )


@pytest.fixture
async def open_engines(settings: Settings) -> AsyncIterator[Callable[[], Awaitable[Engine]]]:
    """Open as many engines (each its own client, like separate processes) as a test needs."""
    opened: list[Engine] = []

    async def open_one() -> Engine:
        engine = await open_engine(settings)
        opened.append(engine)
        return engine

    yield open_one
    for engine in opened:
        engine.close()


@pytest.fixture
async def engine(open_engines: Callable[[], Awaitable[Engine]]) -> Engine:
    return await open_engines()


class CommandLog(monitoring.CommandListener):
    """Commands this process sent to the watched databases, as they went over the wire."""

    def __init__(self) -> None:
        self.watched: set[str] = set()
        self.commands: list[tuple[str, str, dict[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.database_name in self.watched:
            self.commands.append((event.database_name, event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        return None

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        return None

    def sent(self, database: str, command_name: str) -> list[dict[str, Any]]:
        return [
            command
            for db_name, name, command in self.commands
            if db_name == database and name == command_name
        ]


@pytest.fixture(scope="session")
def registered_command_log() -> CommandLog:
    """One process-wide listener; PyMongo applies it to every client created after this."""
    log = CommandLog()
    monitoring.register(log)
    return log


@pytest.fixture
def command_log(registered_command_log: CommandLog, database_name: str) -> Iterator[CommandLog]:
    registered_command_log.watched.add(database_name)
    yield registered_command_log
    registered_command_log.watched.discard(database_name)
    registered_command_log.commands.clear()


# --- events -----------------------------------------------------------------------------------


def new_match_id(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def match_event(
    match_id: str,
    event_type: str = "goal",
    team_id: str = TEAMS[0],
    *,
    minute: int = 0,
    second: int = 0,
    event_id: str | None = None,
) -> ValidEvent:
    """An event decoded exactly as `POST /api/events` decodes it (identity and fingerprint)."""
    body = {
        "eventId": event_id or str(uuid.uuid4()),
        "matchId": match_id,
        "eventType": event_type,
        "timestamp": (BASE_TIME + timedelta(minutes=minute, seconds=second)).isoformat(),
        "teamId": team_id,
        "playerId": f"player-{minute % 11 + 1}",
        "metadata": {"minute": minute},
    }
    return decode_event(msgspec.json.encode(body), datetime.now(UTC))


def stored_event(
    match_id: str, event_type: str = "goal", team_id: str = TEAMS[0], **kw: Any
) -> dict[str, Any]:
    """The document `ingest.event_document` makes of that event: what lands in `events`."""
    return event_document(match_event(match_id, event_type, team_id, **kw), datetime.now(UTC))


def event_batch(match_ids: Sequence[str], count: int) -> list[dict[str, Any]]:
    """`count` stored events spread over matches, types, teams and minutes."""
    return [
        stored_event(
            match_ids[index % len(match_ids)],
            EVENT_TYPES[index % len(EVENT_TYPES)],
            TEAMS[index % len(TEAMS)],
            minute=(index * 7) % 95,
            second=index % 60,
        )
        for index in range(count)
    ]


# --- running the service's parts --------------------------------------------------------------


@asynccontextmanager
async def running_batcher(engine: Engine, max_batch: int = 50) -> AsyncIterator[IngestBatcher]:
    """The group-commit batcher as the app runs it, drained and stopped on exit."""
    batcher = IngestBatcher(
        engine.events,
        IngestLatencyRecorder(engine.summaries),
        max_batch=max_batch,
        linger_s=0.002,
        queue_max=10_000,
        store_timeout_s=10.0,
    )
    batcher.start()
    try:
        yield batcher
    finally:
        await batcher.close(timeout_s=10.0)


async def ingest(batcher: IngestBatcher, documents: Sequence[dict[str, Any]]) -> list[WriteOutcome]:
    """Submit every document at once, as concurrent requests would."""
    outcomes = await asyncio.gather(
        *(batcher.submit(document, time.perf_counter()) for document in documents)
    )
    return list(outcomes)


def new_aggregator(engine: Engine, batch_size: int = 100) -> Aggregator:
    return Aggregator(
        engine, batch_size=batch_size, stall_after_s=30.0, active_window=timedelta(minutes=10)
    )


@asynccontextmanager
async def running(aggregator: Aggregator) -> AsyncIterator[asyncio.Task[None]]:
    """`run()` as a task, then `stop()` and await it, as the app's lifespan does."""
    task = asyncio.create_task(aggregator.run(), name="aggregator-under-test")
    try:
        yield task
    finally:
        aggregator.stop()
        done, _ = await asyncio.wait({task}, timeout=DEADLINE_S)
        if not done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            pytest.fail(f"the aggregator did not stop within {DEADLINE_S:g}s of stop()")
        task.result()


async def eventually(
    probe: Callable[[], Awaitable[T]],
    accept: Callable[[T], bool],
    *,
    what: str,
    deadline_s: float = DEADLINE_S,
    watch: Sequence[asyncio.Task[Any]] = (),
) -> T:
    """Poll `probe` until `accept` holds; fail with the last value seen when the deadline passes."""
    deadline = time.monotonic() + deadline_s
    value = await probe()
    while not accept(value):
        for task in watch:
            if task.done():
                pytest.fail(f"{task.get_name()} ended while waiting for {what}: {task!r}")
        if time.monotonic() > deadline:
            pytest.fail(f"waited {deadline_s:g}s for {what}; last seen: {value!r}")
        await asyncio.sleep(POLL_S)
        value = await probe()
    return value


# --- what the summaries should say ------------------------------------------------------------


def counted_fields(increment: SummaryIncrement) -> dict[str, Any]:
    return {
        "total": increment.total,
        "byType": dict(increment.by_type),
        "byTeam": dict(increment.by_team),
        "perMinute": dict(increment.per_minute),
        "firstEventAt": increment.first_event_at,
        "lastEventAt": increment.last_event_at,
        "statusRank": increment.status_rank,
    }


async def expected_summaries(engine: Engine) -> dict[str, dict[str, Any]]:
    """Every match's counted fields, computed by folding each stored event exactly once."""
    events = engine.database.get_collection(EVENTS, read_concern=ReadConcern("majority"))
    documents = await events.find({}).to_list(None)
    folded = fold_events(documents, datetime.now(UTC))
    return {match_id: counted_fields(increment) for match_id, increment in folded.items()}


def summary_fields(document: Mapping[str, Any]) -> dict[str, Any]:
    def moment(value: datetime | None) -> datetime | None:
        return None if value is None else as_utc(value)

    return {
        "total": document.get("total", 0),
        "byType": dict(document.get("byType") or {}),
        "byTeam": dict(document.get("byTeam") or {}),
        "perMinute": dict(document.get("perMinute") or {}),
        "firstEventAt": moment(document.get("firstEventAt")),
        "lastEventAt": moment(document.get("lastEventAt")),
        "statusRank": document.get("statusRank", 0),
    }


async def stored_summaries(engine: Engine) -> dict[str, dict[str, Any]]:
    """The counted fields of every summary that counts something, as `match_summaries` has them."""
    summaries = engine.database.get_collection(
        MATCH_SUMMARIES, read_concern=ReadConcern("majority")
    )
    documents = await summaries.find({"total": {"$gt": 0}}).to_list(None)
    return {document["_id"]: summary_fields(document) for document in documents}


async def summaries_and_events(
    engine: Engine,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    return await stored_summaries(engine), await expected_summaries(engine)


async def wait_for_exact_summaries(
    engine: Engine, *, watch: Sequence[asyncio.Task[Any]] = ()
) -> dict[str, dict[str, Any]]:
    """Wait until `match_summaries` says exactly what counting `events` once says."""
    stored_and_expected = await eventually(
        lambda: summaries_and_events(engine),
        lambda pair: pair[0] == pair[1],
        what="match_summaries to equal the events counted once (summaries, events)",
        watch=watch,
    )
    return stored_and_expected[0]


async def totals(engine: Engine) -> dict[str, int]:
    return {
        match_id: fields["total"] for match_id, fields in (await stored_summaries(engine)).items()
    }
