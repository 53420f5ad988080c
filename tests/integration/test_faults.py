"""Faults on a real replica set: the store cut and black-holed, the API and the aggregator killed.

The service runs as real processes (``fanfinity serve`` with the aggregator off, and
``fanfinity aggregate``) whose MongoDB traffic goes through a TCP proxy in this test, so the test
can drop every connection and refuse new ones ("cut"), or hold every byte without closing anything
("pause", a black hole like a dead node). Producers post new events without a pause and retry the
same eventId after a 503 (honouring Retry-After), a timeout or a dropped connection, as the API
asks them to. Meanwhile the test:

(a) cuts the store, then pauses it: writes must get 503 + Retry-After within
    FANFINITY_STORE_TIMEOUT_S (+ a margin), /health/ready must turn 503, and both must recover by
    themselves once the proxy forwards again;
(b) SIGKILLs the API and restarts it, twice;
(c) SIGKILLs the aggregator and restarts it, three times.

At the end every eventId a producer sent was acknowledged, the acknowledged ids are exactly the
stored ids, and every match's `match_summaries.total` equals its stored events: nothing lost,
nothing counted twice. What PyMongo does underneath, and why these bounds hold: a dropped
connection fails the operation with a network error and marks the server Unknown; a retryable
write (retryWrites=true) is then retried exactly once, on a newly selected server, and server
selection waits at most `serverSelectionTimeoutMS` (the service sets it to
FANFINITY_STORE_TIMEOUT_S); a retried `insert_many` that had landed shows up as duplicate keys,
which the idempotency rule answers with 202 (Idempotent-Replayed). A held connection (pause) is
cut by the driver only at `socketTimeoutMS` (the service sets max(10 s, 5 x the store timeout)),
so there the batcher's own bound (FANFINITY_STORE_TIMEOUT_S) answers the 503 first.

Deadlines: an aggregator SIGKILLed inside a transaction leaves it open until the server's
`transactionLifetimeLimitSeconds` (CI starts mongod with 5 s) plus the reaper's period; its
successor's commits give up after their own 10 s bound and back off (at most 30 s), so the
recovery and counting deadlines below are set beyond that worst case. Against a server with the
default 60 s lifetime, expect up to about two minutes.

The proxy forwards to one node over plain TCP, so the test runs only against a single local
node without TLS (what CI starts) and skips otherwise, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from motor.motor_asyncio import AsyncIOMotorClient

from fanfinity.storage.models import EVENTS, MATCH_SUMMARIES
from tests.reliability.service import (
    PRODUCER_KEY,
    ServiceProcess,
    event_body,
    new_match_id,
    start_service,
)

pytestmark = pytest.mark.integration

STORE_TIMEOUT_S = 2.0
ANSWER_MARGIN_S = 3.0
PRODUCERS = 6
MATCHES = 3
FAULT_S = 3.0
RECOVERY_DEADLINE_S = 90.0
COUNT_DEADLINE_S = 120.0
EVENT_DEADLINE_S = 150.0
ACKS_BETWEEN_FAULTS = 40
API_KILLS = 2
AGGREGATOR_KILLS = 3
POLL_S = 0.1


# --- the proxy --------------------------------------------------------------------------------


class StoreProxy:
    """A TCP forwarder to MongoDB that the test can cut (connections dropped, new ones refused)
    or pause (bytes held, nothing closed) and then restore."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._links: set[asyncio.Task[Any]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Abort every open connection, both ways (clients see a reset), and stop listening.

        The aborts come first: since Python 3.12.1 `Server.wait_closed()` waits for every open
        connection to close, so waiting before aborting them would deadlock."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def pause(self) -> None:
        """Keep every connection open but forward nothing (a black hole)."""
        self._flowing.clear()

    async def restore(self) -> None:
        self._flowing.set()
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        self._flowing.set()
        await self.cut()
        for link in list(self._links):
            link.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = asyncio.current_task()
        assert link is not None
        self._links.add(link)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            self._links.discard(link)
            return
        self._writers |= {writer, upstream_writer}
        try:
            await asyncio.gather(
                self._pump(reader, upstream_writer), self._pump(upstream_reader, writer)
            )
        except asyncio.CancelledError:
            pass  # the proxy is closing: the aborts below are all that is left to do
        finally:
            for end in (writer, upstream_writer):
                self._writers.discard(end)
                end.transport.abort()
            self._links.discard(link)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                await self._flowing.wait()
                if writer.transport.is_closing():
                    return
                writer.write(data)
                await writer.drain()
        writer.transport.abort()  # one side ended: end the other, as a dead peer would


def proxied_url(url: str, proxy_port: int) -> str:
    """`url` pointed at the proxy: first seed host replaced, directConnection=true."""
    parts = urlsplit(url)
    userinfo, _, _hosts = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@" if userinfo else ""
    netloc += f"127.0.0.1:{proxy_port}"
    query = [(k, v) for k, v in parse_qsl(parts.query) if k.lower() != "directconnection"]
    query.append(("directConnection", "true"))
    return urlunsplit((parts.scheme, netloc, parts.path or "/", urlencode(query), ""))


def proxy_unsuitable(url: str) -> str | None:
    """Why the plain-TCP, one-node proxy cannot stand in front of this deployment, if it can't."""
    if url.startswith("mongodb+srv://"):
        return "a mongodb+srv:// URL names a cluster by DNS; the proxy forwards to one node"
    parts = urlsplit(url)
    options = {k.lower(): v.lower() for k, v in parse_qsl(parts.query)}
    if options.get("tls") == "true" or options.get("ssl") == "true":
        return "TLS: the proxy forwards plain TCP and would break certificate checks"
    hosts = parts.netloc.rpartition("@")[2].split(",")
    if len(hosts) > 1:
        return "several nodes: the proxy forwards to one, and a failover would bypass it"
    host = hosts[0].rpartition(":")[0] or hosts[0]
    if host.strip("[]") not in {"localhost", "127.0.0.1", "::1"}:
        return f"{host} is not local: the proxy only fronts a node on this machine"
    return None


def first_host(url: str) -> tuple[str, int]:
    hosts = urlsplit(url).netloc.rpartition("@")[2]
    host, _, port = hosts.split(",")[0].partition(":")
    return host, int(port or 27017)


# --- the producers ----------------------------------------------------------------------------


@dataclass
class Traffic:
    """What every producer saw, for the final reckoning."""

    sent: set[str] = field(default_factory=set)
    acknowledged: set[str] = field(default_factory=set)
    statuses: Counter[int] = field(default_factory=Counter)
    replayed: int = 0
    transport_errors: Counter[str] = field(default_factory=Counter)
    refusals_without_retry_after: list[str] = field(default_factory=list)
    slow_answers: list[str] = field(default_factory=list)
    wrong_answers: list[str] = field(default_factory=list)
    abandoned: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"sent {len(self.sent)}, acknowledged {len(self.acknowledged)} "
            f"({self.replayed} as replays), answers {dict(self.statuses)}, "
            f"dropped connections {dict(self.transport_errors)}"
        )


async def produce(
    base_url: str, match_ids: list[str], number: int, traffic: Traffic, stop: asyncio.Event
) -> None:
    """Post events one after another; each is retried with its eventId until it gets a 202."""
    sequence = 0
    limits = httpx.Limits(max_connections=1)
    timeout = httpx.Timeout(STORE_TIMEOUT_S + ANSWER_MARGIN_S + 5.0)
    async with httpx.AsyncClient(
        base_url=base_url, headers={"X-API-Key": PRODUCER_KEY}, limits=limits, timeout=timeout
    ) as client:
        while not stop.is_set():
            index = number * 1_000_000 + sequence
            body = event_body(match_ids[sequence % len(match_ids)], index)
            sequence += 1
            traffic.sent.add(body["eventId"])
            await deliver(client, body, traffic)


async def deliver(client: httpx.AsyncClient, body: dict[str, Any], traffic: Traffic) -> None:
    deadline = time.monotonic() + EVENT_DEADLINE_S
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            response = await client.post("/api/events", json=body)
        except httpx.TransportError as exc:  # API killed or restarting, or a read timeout
            traffic.transport_errors[type(exc).__name__] += 1
            await asyncio.sleep(0.2)
            continue
        took = time.monotonic() - started
        traffic.statuses[response.status_code] += 1
        if took > STORE_TIMEOUT_S + ANSWER_MARGIN_S:
            traffic.slow_answers.append(f"{response.status_code} after {took:.1f}s")
        if response.status_code == 202:
            if response.headers.get("idempotent-replayed") == "true":
                traffic.replayed += 1
            traffic.acknowledged.add(body["eventId"])
            return
        if response.status_code == 503:
            retry_after = response.headers.get("retry-after", "")
            if not retry_after.isdigit():
                traffic.refusals_without_retry_after.append(response.text[:200])
                retry_after = "1"
            await asyncio.sleep(int(retry_after))
            continue
        traffic.wrong_answers.append(f"{response.status_code} {response.text[:300]}")
        return
    traffic.abandoned.append(body["eventId"])


# --- waiting ----------------------------------------------------------------------------------


async def poll(
    probe: Callable[[], Awaitable[Any]],
    accept: Callable[[Any], bool],
    *,
    what: str,
    deadline_s: float,
    logs: Callable[[], str] = lambda: "",
) -> Any:
    deadline = time.monotonic() + deadline_s
    value = await probe()
    while not accept(value):
        if time.monotonic() > deadline:
            pytest.fail(f"waited {deadline_s:g}s for {what}; last seen: {value!r}\n{logs()}")
        await asyncio.sleep(POLL_S)
        value = await probe()
    return value


async def readiness(service: ServiceProcess) -> int | str:
    async with httpx.AsyncClient(base_url=service.base_url, timeout=STORE_TIMEOUT_S + 2) as c:
        try:
            return (await c.get("/health/ready")).status_code
        except httpx.TransportError as exc:
            return type(exc).__name__


async def more_acks(traffic: Traffic, how_many: int, logs: Callable[[], str]) -> None:
    target = len(traffic.acknowledged) + how_many

    async def count() -> int:
        return len(traffic.acknowledged)

    await poll(
        count,
        lambda acked: acked >= target,
        what=f"{how_many} more acknowledged events",
        deadline_s=RECOVERY_DEADLINE_S,
        logs=logs,
    )


# --- the test ---------------------------------------------------------------------------------


@dataclass
class Stack:
    api: ServiceProcess
    aggregator: ServiceProcess
    settings: dict[str, str]
    log_dir: Path

    def logs(self) -> str:
        return (
            f"--- api log ---\n{self.api.log_tail(30)}\n"
            f"--- aggregator log ---\n{self.aggregator.log_tail(30)}"
        )

    async def restart_api(self) -> None:
        self.api.kill()
        self.api = start_service(
            self.log_dir / "api.log", "serve", port=self.api.port, **self.settings
        )
        await self.api.wait_ready()

    async def restart_aggregator(self) -> None:
        self.aggregator.kill()
        self.aggregator = start_service(
            self.log_dir / "aggregator.log", "aggregate", port=self.aggregator.port, **self.settings
        )
        await self.aggregator.wait_ready()


@contextlib.asynccontextmanager
async def service_stack(
    store_url: str, database_name: str, log_dir: Path
) -> AsyncIterator[tuple[Stack, StoreProxy]]:
    proxy = StoreProxy(*first_host(store_url))
    await proxy.start()
    settings = {
        "FANFINITY_MONGODB_URL": proxied_url(store_url, proxy.port),
        "FANFINITY_DB_NAME": database_name,
        "FANFINITY_STORE_TIMEOUT_S": str(STORE_TIMEOUT_S),
        "FANFINITY_AGGREGATOR_STALL_S": "60",
        "FANFINITY_AGGREGATOR": "false",  # the API only: the aggregator is its own process
    }
    api = start_service(log_dir / "api.log", "serve", **settings)
    aggregator: ServiceProcess | None = None
    try:
        await api.wait_ready()
        aggregator = start_service(log_dir / "aggregator.log", "aggregate", **settings)
        await aggregator.wait_ready()
        stack = Stack(api, aggregator, settings, log_dir)
        try:
            yield stack, proxy
        finally:
            stack.api.kill()
            stack.aggregator.kill()
    finally:
        api.kill()
        if aggregator is not None:
            aggregator.kill()
        await proxy.close()


async def store_fault(
    stack: Stack,
    traffic: Traffic,
    inject: Callable[[], Awaitable[None]],
    restore: Callable[[], Awaitable[None]],
) -> None:
    """Inject a fault, see readiness and writes fail fast, restore, see both recover."""
    refusals_before = traffic.statuses[503]
    await inject()
    await poll(
        lambda: readiness(stack.api),
        lambda status: status == 503,
        what="/health/ready to answer 503 with the store unreachable",
        deadline_s=STORE_TIMEOUT_S + ANSWER_MARGIN_S,
        logs=stack.logs,
    )

    async def refusals() -> int:
        return traffic.statuses[503] - refusals_before

    await poll(
        refusals,
        lambda count: count >= PRODUCERS,
        what=f"at least {PRODUCERS} writes to be refused with 503 while the store is away",
        deadline_s=STORE_TIMEOUT_S + ANSWER_MARGIN_S + FAULT_S,
        logs=stack.logs,
    )
    await restore()
    await poll(
        lambda: readiness(stack.api),
        lambda status: status == 200,
        what="/health/ready to recover by itself once the store is back",
        deadline_s=RECOVERY_DEADLINE_S,
        logs=stack.logs,
    )
    await more_acks(traffic, ACKS_BETWEEN_FAULTS, stack.logs)


async def store_counts(database: Any) -> tuple[set[str], dict[str, int], dict[str, int]]:
    stored_ids = {doc["_id"] async for doc in database[EVENTS].find({}, projection={"_id": 1})}
    by_match = [{"$group": {"_id": "$matchId", "events": {"$sum": 1}}}]
    stored = {row["_id"]: row["events"] async for row in database[EVENTS].aggregate(by_match)}
    counted = {
        doc["_id"]: int(doc.get("total", 0))
        async for doc in database[MATCH_SUMMARIES].find({}, projection={"total": 1})
        if int(doc.get("total", 0)) > 0
    }
    return stored_ids, stored, counted


async def test_store_outages_and_killed_processes_lose_and_double_count_nothing(
    mongodb_url: str, database_name: str, tmp_path: Path
) -> None:
    reason = proxy_unsuitable(mongodb_url)
    if reason:
        pytest.skip(reason)
    match_ids = [new_match_id("faults") for _ in range(MATCHES)]
    traffic = Traffic()
    stop = asyncio.Event()
    async with service_stack(mongodb_url, database_name, tmp_path) as (stack, proxy):
        producers = [
            asyncio.create_task(produce(stack.api.base_url, match_ids, number, traffic, stop))
            for number in range(PRODUCERS)
        ]
        try:
            await more_acks(traffic, ACKS_BETWEEN_FAULTS, stack.logs)

            # (a) the store goes away: connections reset and refused, then a black hole.
            async def cut() -> None:
                await proxy.cut()

            async def pause() -> None:
                proxy.pause()

            await store_fault(stack, traffic, cut, proxy.restore)
            await store_fault(stack, traffic, pause, proxy.restore)

            # (b) the API dies mid-request and comes back.
            for _ in range(API_KILLS):
                stack.api.send(signal.SIGKILL)
                await stack.restart_api()
                await more_acks(traffic, ACKS_BETWEEN_FAULTS, stack.logs)

            # (c) the aggregator dies mid-batch and comes back.
            for _ in range(AGGREGATOR_KILLS):
                stack.aggregator.send(signal.SIGKILL)
                await stack.restart_aggregator()
                await more_acks(traffic, ACKS_BETWEEN_FAULTS, stack.logs)
        except BaseException:
            for task in producers:
                task.cancel()
            await asyncio.gather(*producers, return_exceptions=True)
            raise
        stop.set()  # each producer finishes (gets a 202 for) the event in hand, then stops
        done, running = await asyncio.wait(producers, timeout=EVENT_DEADLINE_S + 10)
        for task in running:
            task.cancel()
        await asyncio.gather(*producers, return_exceptions=True)
        assert not running, (
            f"producers could not get their last events acknowledged: {stack.logs()}"
        )
        for task in done:
            task.result()

        client: Any = AsyncIOMotorClient(mongodb_url, tz_aware=True)
        try:
            database = client[database_name]

            async def reckoning() -> tuple[set[str], dict[str, int], dict[str, int]]:
                return await store_counts(database)

            stored_ids, stored, counted = await poll(
                reckoning,
                lambda result: result[1] == result[2],
                what="match_summaries.total to equal the stored events of every match",
                deadline_s=COUNT_DEADLINE_S,
                logs=stack.logs,
            )
        finally:
            client.close()

    seen = traffic.summary()
    assert not traffic.abandoned, f"events never acknowledged: {traffic.abandoned[:5]}; {seen}"
    assert not traffic.wrong_answers, f"{traffic.wrong_answers[:5]}; {seen}"
    assert set(traffic.statuses) <= {202, 503}, seen
    assert not traffic.refusals_without_retry_after, traffic.refusals_without_retry_after[:3]
    assert not traffic.slow_answers, (
        f"answers slower than the store timeout: {traffic.slow_answers[:5]}"
    )
    assert traffic.acknowledged == traffic.sent, seen
    assert stored_ids == traffic.acknowledged, (
        f"{len(stored_ids - traffic.acknowledged)} stored but never acknowledged, "
        f"{len(traffic.acknowledged - stored_ids)} acknowledged but not stored; {seen}"
    )
    assert sum(stored.values()) == len(traffic.acknowledged), seen
    assert counted == stored, f"counted {counted}, stored {stored}; {seen}"
    assert set(counted) == set(match_ids)
