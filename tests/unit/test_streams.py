"""The stream hub on both delivery paths: direct subscribers (chunks written to their
connection's transport, here a fake one) and queued subscribers (drained by an iterator) get the
same frames; subscribers that do not read are dropped; a fan-out yields to the event loop."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from fanfinity.pipeline import streams
from fanfinity.pipeline.fold import fold_events
from fanfinity.pipeline.reads import MatchMetricsReader
from fanfinity.pipeline.streams import (
    END_OF_STREAM,
    MAX_BACKLOG_BYTES,
    Frame,
    StreamHub,
    Subscriber,
)
from fanfinity.storage.engine import Engine
from tests.factories import KICK_OFF, stored_event

MATCH = "hub-derby"


class FakeTransport:
    """The write side of a connection: what was written, and `unsent` bytes the kernel did not
    take yet. Aborting it loses the connection, as uvicorn then tells the stream."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.unsent = 0
        self.closing = False
        self.on_lost: Callable[[], None] | None = None

    def write(self, data: bytes) -> None:
        self.written += data

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.closing = True
        if self.on_lost is not None:
            self.on_lost()

    def chunks(self) -> list[bytes]:
        """The HTTP/1.1 chunks written, decoded."""
        data, chunks = bytes(self.written), []
        while data:
            size, rest = data.split(b"\r\n", 1)
            length = int(size, 16)
            assert rest[length : length + 2] == b"\r\n", "a chunk not followed by CRLF"
            chunks.append(rest[:length])
            data = rest[length + 2 :]
        return chunks


async def count(engine: Engine, event_type: str, minute: int) -> None:
    """What the aggregator does with one event."""
    event = stored_event(str(uuid.uuid4()), minute, event_type, match_id=MATCH)
    await engine.summaries.apply(fold_events([event], KICK_OFF).values(), KICK_OFF)


@pytest.fixture
async def hub(engine: Engine) -> AsyncIterator[StreamHub]:
    await count(engine, "match_start", 0)
    hub = StreamHub(MatchMetricsReader(engine.summaries, 0.0), 0.05, max_subscribers=100)
    yield hub
    await hub.close()


async def direct(hub: StreamHub, client: str = "-") -> tuple[Subscriber, FakeTransport, Any]:
    """A subscriber streaming to a fake connection: (subscriber, transport, its stream task)."""
    subscriber = await hub.open(MATCH, client)
    transport = FakeTransport()
    transport.on_lost = subscriber.connection_lost
    task = asyncio.create_task(subscriber.stream_to(transport))
    await asyncio.sleep(0)
    return subscriber, transport, task


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never met")


async def test_direct_and_queued_subscribers_get_the_same_frames_then_the_end(
    hub: StreamHub, engine: Engine
) -> None:
    subscriber, transport, task = await direct(hub)
    queued: list[bytes] = []

    async def read_queued() -> None:
        async for data in (await hub.open(MATCH)).frames():
            queued.append(data)

    reader = asyncio.create_task(read_queued())
    await until(lambda: len(queued) == 1)
    await count(engine, "goal", 10)
    hub.nudge([MATCH])
    await until(lambda: len(queued) == 2 and len(transport.chunks()) == 2)
    await count(engine, "match_end", 59)
    hub.nudge([MATCH])
    assert await asyncio.wait_for(task, 5) is True  # ended here: the response sends its end
    await asyncio.wait_for(reader, 5)
    subscriber.close()
    assert transport.chunks() == queued
    assert queued[0].startswith(b"retry: 2000\n\nid: 1\nevent: metrics\n")
    assert b'"totalEvents":2' in queued[1]
    assert b'"status":"ended"' in queued[-2]
    assert queued[-1] == END_OF_STREAM
    assert hub.subscribers == 0
    assert hub.per_client == {}


async def test_a_direct_subscriber_whose_connection_holds_too_much_unsent_is_dropped(
    hub: StreamHub,
) -> None:
    stuck, stuck_transport, stuck_task = await direct(hub, "198.51.100.7")
    reading, reading_transport, _ = await direct(hub, "198.51.100.8")
    stuck_transport.unsent = MAX_BACKLOG_BYTES + 1
    await hub.channels[MATCH].broadcast(Frame(b"id: 2\nevent: metrics\ndata: {}\n\n", 2))
    assert stuck_transport.closing  # aborted: its connection is closed
    assert await asyncio.wait_for(stuck_task, 1) is False
    assert len(stuck_transport.chunks()) == 1  # only what it had before it stopped reading
    assert len(reading_transport.chunks()) == 2
    assert hub.dropped == 1
    assert hub.subscribers == 1
    assert hub.per_client == {"198.51.100.8": 1}
    stuck.close()  # what the response does at the end: the slot was already given back
    assert hub.subscribers == 1
    assert reading.streaming


async def test_a_direct_subscriber_with_unsent_bytes_for_slow_s_is_dropped(
    hub: StreamHub,
) -> None:
    subscriber, transport, _ = await direct(hub)
    transport.unsent = 100

    def offer(sequence: int, now: float) -> bool:
        return subscriber.offer(Frame(b"data: %d\n\n" % sequence, sequence), now, slow_s=1.0)

    assert offer(2, now=100.0)  # unsent bytes from here on
    assert offer(3, now=100.9)
    transport.unsent = 0  # it caught up: the clock stops
    assert offer(4, now=101.5)
    transport.unsent = 100
    assert offer(5, now=102.0)
    assert offer(6, now=102.9)
    assert not offer(7, now=103.1)  # 1.1 s behind: not reading


async def test_a_direct_subscriber_never_gets_the_same_update_twice(hub: StreamHub) -> None:
    _, transport, _ = await direct(hub)
    channel = hub.channels[MATCH]
    await channel.broadcast(channel.last_frame)  # the frame it began with (reserved before it)
    await channel.broadcast(streams.KEEPALIVE_FRAME)
    assert transport.chunks()[1:] == [streams.KEEPALIVE]
    assert transport.chunks()[0].count(b"id: 1\n") == 1


async def test_a_lost_connection_ends_a_direct_stream_and_frees_its_slot(hub: StreamHub) -> None:
    subscriber, _, task = await direct(hub, "198.51.100.9")
    subscriber.connection_lost()
    assert await asyncio.wait_for(task, 1) is False
    subscriber.close()
    assert hub.subscribers == 0
    assert hub.per_client == {}
    assert hub.dropped == 0


async def test_shutdown_ends_direct_streams_normally(hub: StreamHub) -> None:
    tasks = [(await direct(hub))[2] for _ in range(3)]
    await hub.close()
    assert await asyncio.wait_for(asyncio.gather(*tasks), 1) == [True, True, True]
    assert hub.subscribers == 0


async def test_a_stream_of_an_ended_match_sends_the_final_metrics_and_the_end(
    hub: StreamHub, engine: Engine
) -> None:
    await count(engine, "match_end", 90)
    ended = StreamHub(MatchMetricsReader(engine.summaries, 0.0), 0.05, max_subscribers=10)
    subscriber = await ended.open(MATCH)
    transport = FakeTransport()
    assert await subscriber.stream_to(transport) is True
    subscriber.close()
    first, end = transport.chunks()
    assert b'"status":"ended"' in first
    assert end == END_OF_STREAM
    assert ended.subscribers == 0


async def test_a_fan_out_lets_other_work_run_between_its_turns(
    hub: StreamHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams, "FANOUT_TURN_S", 0.0)
    monkeypatch.setattr(streams, "FANOUT_BLOCK", 2)
    transports = [(await direct(hub))[1] for _ in range(10)]
    served_at: list[int] = []

    def producer_request() -> None:  # what a producer's request does meanwhile
        served_at.append(sum(len(t.chunks()) == 2 for t in transports))

    asyncio.get_running_loop().call_soon(producer_request)
    await hub.channels[MATCH].broadcast(Frame(b"data: goal\n\n", 2))
    assert all(len(t.chunks()) == 2 for t in transports)
    assert served_at
    assert 0 < served_at[0] < 10


async def test_a_stream_the_hub_ended_before_it_began_ends_normally(hub: StreamHub) -> None:
    subscriber = await hub.open(MATCH)
    await hub.close()
    transport = FakeTransport()
    assert await subscriber.stream_to(transport) is True  # an empty stream, ended properly
    assert transport.written == b""
    assert hub.subscribers == 0


class RefusingTransport(FakeTransport):
    """A connection the server has already ended (say, refused a request pipelined behind the
    stream): every further write raises, as asyncio's does after `write_eof()`."""

    def write(self, data: bytes) -> None:
        if self.written:
            raise RuntimeError("Cannot call write() after write_eof()")
        super().write(data)


async def test_a_connection_that_refuses_writes_is_dropped_alone_and_the_match_keeps_streaming(
    hub: StreamHub, engine: Engine
) -> None:
    broken = await hub.open(MATCH, "198.51.100.10")
    broken_task = asyncio.create_task(broken.stream_to(RefusingTransport()))
    _, transport, _ = await direct(hub, "198.51.100.11")
    for total, minute in ((2, 10), (3, 20)):
        await count(engine, "goal", minute)
        hub.nudge([MATCH])
        expected = b'"totalEvents":%d' % total
        await until(lambda: expected in transport.chunks()[-1])  # noqa: B023 (awaited here)
    assert hub.dropped == 1
    assert not broken.streaming
    broken_task.cancel()
    _, later, _ = await direct(hub, "198.51.100.12")  # a fan who comes later is still served
    await count(engine, "corner", 30)
    hub.nudge([MATCH])
    await until(lambda: b'"totalEvents":4' in later.chunks()[-1])


async def test_a_channel_whose_publisher_fails_ends_its_streams_and_a_new_one_serves_later_fans(
    hub: StreamHub, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, first_task = await direct(hub)
    channel = hub.channels[MATCH]

    async def failing_broadcast(frame: Frame) -> None:
        raise RuntimeError("a bug in the fan-out")

    monkeypatch.setattr(channel, "broadcast", failing_broadcast)
    await count(engine, "goal", 10)
    hub.nudge([MATCH])
    assert await asyncio.wait_for(first_task, 2) is True  # ended: the client reconnects
    assert MATCH not in hub.channels or hub.channels[MATCH] is not channel
    _, later, _ = await direct(hub)
    assert hub.channels[MATCH] is not channel
    await count(engine, "corner", 20)
    hub.nudge([MATCH])
    await until(lambda: b'"totalEvents":3' in later.chunks()[-1])
