"""Server-Sent Events fan-out: one poller per watched match, any number of subscribers.

Each match with subscribers has one task that reads its metrics through the reader (and so through
its cache) every `interval_s`, and, when they changed, encodes one SSE frame and hands the same
bytes to every subscriber's small queue. The cost per replica is one summary read per match per
interval, whatever the number of subscribers. A subscriber whose queue is full (a client that
does not read) is dropped rather than buffered without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field

from loguru import logger

from fanfinity import metrics
from fanfinity.errors import ClientStreamsFull, MatchNotFound, StoreUnavailable, StreamsFull
from fanfinity.pipeline.reads import MatchMetricsReader, MetricsSnapshot

SUBSCRIBER_QUEUE = 8
MIN_SPACING_S = 0.25  # at most four updates a second per match, however fast it changes
KEEPALIVE_S = 15.0
RETRY_MS = 2_000
END_OF_STREAM = b"event: end\ndata: {}\n\n"
SLOW_S = 10.0
CLIENT_RETRY_S = 5
# Subscribers handed a frame per event-loop turn: a goal fanned out to 18,000 streams in one turn
# held every producer's request behind ~30 us of send work per subscriber (p99 98 ms at 3,000
# subscribers, 151 ms at 5,000); in slices, producers' I/O is served between them.
FANOUT_SLICE = 50
# Subscriber-frames a second the process spends on fan-out at most (~30 us each: about a third of
# a core); past it, updates of every match are spaced further apart (5,000 subscribers: every
# 0.5 s, 18,000: every 1.8 s) so that fan-out cannot take the time producers need.
FANOUT_PER_S = 10_000


@dataclass(eq=False, slots=True)
class Subscriber:
    client: str = "-"
    queue: asyncio.Queue[bytes | None] = field(
        default_factory=lambda: asyncio.Queue(SUBSCRIBER_QUEUE)
    )
    dropped: bool = False
    opened_at: float = field(default_factory=time.monotonic)
    last_taken: float = field(default_factory=time.monotonic)  # last progress of its reader


def metrics_frame(sequence: int, snapshot: MetricsSnapshot) -> bytes:
    """One SSE `metrics` event; the JSON body has no newlines, so it is one data line."""
    return b"id: %d\nevent: metrics\ndata: %s\n\n" % (sequence, snapshot.body)


class MatchChannel:
    """The subscribers of one match and the task that polls its metrics for them."""

    def __init__(self, hub: StreamHub, match_id: str, snapshot: MetricsSnapshot) -> None:
        self.hub = hub
        self.match_id = match_id
        self.subscribers: set[Subscriber] = set()
        self.sequence = 1
        self.last = snapshot
        self.last_frame = metrics_frame(self.sequence, snapshot)
        self.task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()

    def publish(self, frame: bytes | None) -> None:
        self._deliver(list(self.subscribers), frame)

    async def broadcast(self, frame: bytes) -> None:
        """`publish`, a slice of subscribers per event-loop turn."""
        subscribers = list(self.subscribers)
        for start in range(0, len(subscribers), FANOUT_SLICE):
            if start:
                await asyncio.sleep(0)
            self._deliver(subscribers[start : start + FANOUT_SLICE], frame)

    def _deliver(self, subscribers: list[Subscriber], frame: bytes | None) -> None:
        now = time.monotonic()
        stale = now - self.hub.slow_s
        for subscriber in subscribers:
            if subscriber not in self.subscribers:
                continue  # left while the frame was being handed out
            if not subscriber.queue.qsize():
                subscriber.last_taken = now  # nothing waiting: the clock starts with this frame
            elif frame is not None and subscriber.last_taken < stale:
                self._drop(subscriber)  # frames unread for slow_s: not reading
                continue
            try:
                subscriber.queue.put_nowait(frame)
            except asyncio.QueueFull:
                self._drop(subscriber)

    def _drop(self, subscriber: Subscriber) -> None:
        subscriber.dropped = True
        self.hub.leave(self, subscriber)
        self.hub.dropped += 1
        metrics.STREAM_SUBSCRIBERS_DROPPED.inc()

    async def poll(self) -> None:
        """Publish changed metrics every interval, keep-alives when idle, end after full time."""
        last_sent = time.monotonic()
        while self.subscribers and not self.last.ended:
            with contextlib.suppress(TimeoutError):  # woken early when the aggregator says so
                await asyncio.wait_for(self.changed.wait(), timeout=self.hub.interval_s)
            self.changed.clear()
            spacing = max(MIN_SPACING_S, self.hub.subscribers / FANOUT_PER_S)
            await asyncio.sleep(max(0.0, spacing - (time.monotonic() - last_sent)))
            try:
                snapshot = await self.hub.reader.snapshot(self.match_id)
            except (MatchNotFound, StoreUnavailable) as exc:
                logger.debug("stream poll of {} failed: {}", self.match_id, exc)
                continue
            except Exception as exc:  # a store hiccup must not end every subscriber's stream
                logger.warning("stream poll of {} failed: {!r}", self.match_id, exc)
                continue
            if snapshot.version != self.last.version:
                self.sequence += 1
                self.last = snapshot
                self.last_frame = metrics_frame(self.sequence, snapshot)
                await self.broadcast(self.last_frame)
                last_sent = time.monotonic()
            elif time.monotonic() - last_sent >= self.hub.keepalive_s:
                self.publish(b": keep-alive\n\n")
                last_sent = time.monotonic()
        if self.last.ended:
            self.publish(END_OF_STREAM)
            self.publish(None)
        self.hub.forget(self)


class StreamHub:
    """All match channels of this process."""

    def __init__(
        self,
        reader: MatchMetricsReader,
        interval_s: float,
        max_subscribers: int,
        keepalive_s: float = KEEPALIVE_S,
        max_per_client: int = 0,
        slow_s: float = SLOW_S,
    ) -> None:
        self.reader = reader
        self.interval_s = interval_s
        self.keepalive_s = keepalive_s
        self.max_subscribers = max_subscribers
        self.max_per_client = max_per_client
        self.slow_s = slow_s
        self.channels: dict[str, MatchChannel] = {}
        self.subscribers = 0
        self.per_client: dict[str, int] = {}
        self.dropped = 0

    def leave(self, channel: MatchChannel, subscriber: Subscriber) -> None:
        if subscriber in channel.subscribers:
            channel.subscribers.discard(subscriber)
            self.subscribers -= 1
            held = self.per_client.get(subscriber.client, 1) - 1
            if held > 0:
                self.per_client[subscriber.client] = held
            else:
                self.per_client.pop(subscriber.client, None)
            metrics.STREAM_SESSIONS_ACTIVE.dec()
            metrics.STREAM_SESSION_DURATION.observe(time.monotonic() - subscriber.opened_at)

    def _check_capacity(self, client: str) -> None:
        if self.subscribers >= self.max_subscribers:
            metrics.STREAMS_REFUSED.labels("replica_full").inc()
            raise StreamsFull(
                f"this replica already serves {self.max_subscribers} streams; retry another", 5
            )
        if self.max_per_client and self.per_client.get(client, 0) >= self.max_per_client:
            metrics.STREAMS_REFUSED.labels("client_full").inc()
            raise ClientStreamsFull(
                f"this address already holds {self.max_per_client} live streams", CLIENT_RETRY_S
            )

    async def open(self, match_id: str, client: str = "-") -> AsyncIterator[bytes]:
        """Check the match and capacity first (errors become HTTP answers), then stream;
        `client` is the caller's address, for the per-address cap."""
        self._check_capacity(client)
        channel = self.channels.get(match_id)
        if channel is None:
            snapshot = await self.reader.snapshot(match_id)  # MatchNotFound -> 404
            channel = self.channels.get(match_id) or MatchChannel(self, match_id, snapshot)
            self.channels[match_id] = channel
        self._check_capacity(client)  # again: others may have joined during the snapshot read
        subscriber = Subscriber(client)
        channel.subscribers.add(subscriber)
        self.subscribers += 1
        self.per_client[client] = self.per_client.get(client, 0) + 1
        metrics.STREAM_SESSIONS_OPENED.inc()
        metrics.STREAM_SESSIONS_ACTIVE.inc()
        if channel.task is None and not channel.last.ended:
            channel.task = asyncio.create_task(channel.poll(), name=f"stream-{match_id}")
        return self._frames(channel, subscriber)

    async def _frames(self, channel: MatchChannel, subscriber: Subscriber) -> AsyncIterator[bytes]:
        try:
            yield b"retry: %d\n\n" % RETRY_MS + channel.last_frame
            if channel.last.ended:
                yield END_OF_STREAM
                return
            while not subscriber.dropped:
                frame = await subscriber.queue.get()
                subscriber.last_taken = time.monotonic()
                if frame is None:
                    return
                yield frame
        finally:
            self.leave(channel, subscriber)

    def nudge(self, match_ids: Collection[str]) -> None:
        """An in-process aggregator committed changes to these matches: refresh their streams
        now rather than at the next interval (a separate aggregator process leaves the poll)."""
        for match_id in match_ids:
            self.reader.forget_miss(match_id)  # a new match is visible at once, not after a ttl
            channel = self.channels.get(match_id)
            if channel is not None:
                self.reader.forget(match_id)
                channel.changed.set()

    def forget(self, channel: MatchChannel) -> None:
        if self.channels.get(channel.match_id) is channel:
            del self.channels[channel.match_id]

    async def close(self) -> None:
        """End every stream (at shutdown): subscribers get the end of their stream."""
        tasks = [channel.task for channel in self.channels.values() if channel.task]
        for channel in list(self.channels.values()):
            channel.publish(None)
            for subscriber in list(channel.subscribers):
                self.leave(channel, subscriber)
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
        self.channels.clear()
