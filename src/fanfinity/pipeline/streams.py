"""Server-Sent Events fan-out: one poller per watched match, any number of subscribers.

Each match with subscribers has one task that reads its metrics through the reader (and so through
its cache) every `interval_s`, and, when they changed, encodes one SSE frame and hands the same
bytes to every subscriber. The cost per replica is one summary read per match per interval,
whatever the number of subscribers.

A subscriber is delivered to in one of two ways, by the same hub:
- **direct** (`Subscriber.stream_to`, what uvicorn serves): the frame, framed once as an HTTP/1.1
  chunk, is written straight to each connection's transport, a slice of subscribers per event-loop
  turn. Measured on one worker with 18,000 subscribers (README, `make bench-streams`): the queued
  path below woke one task per subscriber per frame and sent through Litestar's streaming
  response, two middleware `send` wrappers and uvicorn's `send` (py-spy: 42 % + 25 % of samples,
  ~40 us per subscriber-frame); a goal's p99 was 1.2 s.
- **queued** (`Subscriber.frames`, where there is no transport: the test client, HEAD, another
  server): a small queue per subscriber drained by the response's async iterator.

A subscriber that does not read is dropped rather than buffered without bound: direct, when its
connection still holds more than `MAX_BACKLOG_BYTES` unsent, or has held anything unsent for
`slow_s` (its connection is then aborted); queued, when its queue is full or its frames have
waited `slow_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Collection
from typing import Protocol

from loguru import logger

from fanfinity import metrics
from fanfinity.errors import ClientStreamsFull, MatchNotFound, StoreUnavailable, StreamsFull
from fanfinity.pipeline.reads import MatchMetricsReader, MetricsSnapshot

SUBSCRIBER_QUEUE = 8
MIN_SPACING_S = 0.25  # at most four updates a second per match, however fast it changes
KEEPALIVE_S = 15.0
RETRY_MS = 2_000
END_OF_STREAM = b"event: end\ndata: {}\n\n"
KEEPALIVE = b": keep-alive\n\n"
SLOW_S = 10.0
CLIENT_RETRY_S = 5
# Bytes a direct subscriber's connection may still hold unsent when the next frame comes (the
# kernel's socket buffers are full by then): past it, the client is not reading.
MAX_BACKLOG_BYTES = 64 * 1024
# Fan-out time per event-loop turn: handed out in one turn, a goal to 5,000 queued streams held
# every producer's request behind it (p99 151 ms); in turns of a couple of ms, producers' I/O is
# served between them. Checked every FANOUT_BLOCK subscribers.
FANOUT_TURN_S = 0.002
FANOUT_BLOCK = 32
# Share of the process's time fan-out may take when matches keep changing: after a fan-out that
# cost T, the match's next update waits (1 / FANOUT_SHARE - 1) x T at least (with 18,000 direct
# subscribers on this VM a frame costs ~25 us per subscriber, nearly all of it the socket write,
# so updates come about every 1.4 s; with 5,000 every 0.4 s). The cost is measured, not assumed.
FANOUT_SHARE = 0.3
FRAME_COST_S = 25e-6  # per subscriber-frame, until measured
QUEUED_WAKE_COST_S = 40e-6  # a queued subscriber's task then sends through Litestar and uvicorn


class FrameSink(Protocol):
    """What a direct subscriber uses of its connection's transport (an `asyncio.Transport`)."""

    def write(self, data: bytes) -> None: ...

    def get_write_buffer_size(self) -> int: ...

    def is_closing(self) -> bool: ...

    def abort(self) -> None: ...


def http_chunk(data: bytes) -> bytes:
    """`data` as one HTTP/1.1 chunk, byte for byte what uvicorn writes for a body message of a
    chunked response (`RequestResponseCycle.send` in uvicorn/protocols/http/httptools_impl.py:
    `b"%x\\r\\n" % len(body), body, b"\\r\\n"`), so both paths put the same bytes on the wire."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class Frame:
    """One SSE frame for every subscriber: its bytes, the same bytes as an HTTP/1.1 chunk, and
    its sequence (0 for keep-alives and the end, which every subscriber gets)."""

    __slots__ = ("chunk", "data", "sequence")

    def __init__(self, data: bytes, sequence: int = 0) -> None:
        self.data = data
        self.chunk = http_chunk(data)
        self.sequence = sequence


def metrics_frame(sequence: int, snapshot: MetricsSnapshot) -> Frame:
    """One SSE `metrics` event; the JSON body has no newlines, so it is one data line."""
    return Frame(b"id: %d\nevent: metrics\ndata: %s\n\n" % (sequence, snapshot.body), sequence)


KEEPALIVE_FRAME = Frame(KEEPALIVE)
END_FRAME = Frame(END_OF_STREAM)


class Subscriber:
    """One stream slot of the hub: reserved by `StreamHub.open` (so caps answer 429/503 before any
    byte is sent), then streamed either `direct` (`stream_to`) or `queued` (`frames`); `close`
    gives the slot back, once, whatever ended the stream."""

    __slots__ = (
        "_done",
        "backlog_since",
        "channel",
        "client",
        "last_taken",
        "opened_at",
        "queue",
        "sequence",
        "sink",
        "streaming",
    )

    def __init__(self, channel: MatchChannel, client: str) -> None:
        self.channel = channel
        self.client = client
        self.opened_at = time.monotonic()
        self.streaming = True  # holds its slot; False once closed or dropped
        self.sequence = 0  # the last metrics frame it was given: never the same one twice
        self.sink: FrameSink | None = None
        self.backlog_since = 0.0  # when its connection last began to hold unsent bytes (0: not)
        self._done: asyncio.Future[bool] | None = None
        self.queue: asyncio.Queue[Frame | None] | None = None
        self.last_taken = self.opened_at  # last progress of a queued reader

    # Direct: frames written to the connection by the hub
    async def stream_to(self, sink: FrameSink) -> bool:
        """Write the current metrics, then every update, to `sink` until the stream ends: True
        when it ended here (full time, shutdown: the caller ends the response), False when the
        connection went away (`connection_lost`, or dropped for not reading)."""
        channel = self.channel
        if sink.is_closing():
            return False
        if not self.streaming:
            return True  # the hub ended it (shutdown) before it began
        self._done = asyncio.get_running_loop().create_future()
        self.sink = sink
        self.sequence = channel.last_frame.sequence
        sink.write(http_chunk(self._opening()))
        if channel.last.ended:
            sink.write(END_FRAME.chunk)
            return True
        return await self._done

    def _opening(self) -> bytes:
        """What every stream begins with, on both paths: the reconnect delay, then the newest
        metrics frame."""
        return b"retry: %d\n\n%s" % (RETRY_MS, self.channel.last_frame.data)

    def connection_lost(self) -> None:
        """The client went away (the connection tells a direct subscriber)."""
        if self._done is not None and not self._done.done():
            self._done.set_result(False)

    # Queued: frames taken by the response's iterator
    async def frames(self) -> AsyncIterator[bytes]:
        """The current metrics, then every update, as SSE bytes, until the stream ends."""
        channel = self.channel
        self.queue = asyncio.Queue(SUBSCRIBER_QUEUE)
        self.sequence = channel.last_frame.sequence
        try:
            yield self._opening()
            if channel.last.ended:
                yield END_OF_STREAM
                return
            while self.streaming or not self.queue.empty():  # what was handed out, then stop
                frame = await self.queue.get()
                self.last_taken = time.monotonic()
                if frame is None:
                    return
                yield frame.data
        finally:
            self.close()

    # What the hub does to it
    def offer(self, frame: Frame, now: float, slow_s: float) -> bool:
        """Hand `frame` over; False when this subscriber does not read and must be dropped."""
        if frame.sequence and frame.sequence <= self.sequence:
            return True  # it began with this frame already
        sink = self.sink
        if sink is not None:
            backlog = sink.get_write_buffer_size()
            if not backlog:
                self.backlog_since = 0.0
            elif backlog > MAX_BACKLOG_BYTES:
                return False
            elif not self.backlog_since:
                self.backlog_since = now
            elif now - self.backlog_since > slow_s:
                return False
            try:
                sink.write(frame.chunk)
            except Exception:  # a connection that cannot take it (closed under us): drop it alone
                return False
        elif self.queue is not None:
            queue = self.queue
            if not queue.qsize():
                self.last_taken = now  # nothing waiting: the clock starts with this frame
            elif self.last_taken < now - slow_s:
                return False  # frames unread for slow_s: not reading
            if queue.full():
                return False
            queue.put_nowait(frame)
        else:
            return True  # slot reserved, not streaming yet: it will begin with the newest frame
        if frame.sequence:
            self.sequence = frame.sequence
        return True

    def finish(self) -> None:
        """End the stream normally (full time, shutdown)."""
        if self._done is not None and not self._done.done():
            self._done.set_result(True)
        if self.queue is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self.queue.put_nowait(None)
        self.close()

    def drop(self) -> None:
        """Not reading: close its connection (direct) or end its iterator (queued)."""
        if not self.streaming:
            return
        self.channel.hub.dropped += 1
        metrics.STREAM_SUBSCRIBERS_DROPPED.inc()
        self.close()
        if self.sink is not None and not self.sink.is_closing():
            self.sink.abort()  # close() would wait for a buffer that will never drain
        if self.queue is not None:
            while not self.queue.empty():  # what it did not read is not sent any more
                self.queue.get_nowait()
            self.queue.put_nowait(None)

    def close(self) -> None:
        """Give the slot back (idempotent)."""
        if self.streaming:
            self.streaming = False
            self.channel.hub.release(self)


class MatchChannel:
    """The subscribers of one match and the task that polls its metrics for them."""

    def __init__(self, hub: StreamHub, match_id: str, snapshot: MetricsSnapshot) -> None:
        self.hub = hub
        self.match_id = match_id
        self.subscribers: dict[Subscriber, None] = {}  # in arrival order
        self.sequence = 1
        self.last = snapshot
        self.last_frame = metrics_frame(self.sequence, snapshot)
        self.task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()

    async def broadcast(self, frame: Frame) -> None:
        """Hand `frame` to every subscriber, yielding to the event loop whenever a turn has spent
        `FANOUT_TURN_S` on it, so producers' requests are served between turns; the time it took
        goes into the hub's cost per subscriber-frame."""
        subscribers = list(self.subscribers)
        slow_s = self.hub.slow_s
        spent = 0.0
        queued = 0
        turn_started = time.perf_counter()
        for start in range(0, len(subscribers), FANOUT_BLOCK):
            if start and time.perf_counter() - turn_started > FANOUT_TURN_S:
                spent += time.perf_counter() - turn_started
                await asyncio.sleep(0)
                turn_started = time.perf_counter()
            now = time.monotonic()
            for subscriber in subscribers[start : start + FANOUT_BLOCK]:
                if subscriber.streaming:
                    if subscriber.queue is not None:
                        queued += 1
                    if not subscriber.offer(frame, now, slow_s):
                        subscriber.drop()
        spent += time.perf_counter() - turn_started
        self.hub.fanned_out(len(subscribers), spent + queued * QUEUED_WAKE_COST_S)

    async def poll(self) -> None:
        """Publish until full time or the last subscriber; the channel is forgotten however that
        ends, so a failure here ends these streams (their clients reconnect to a new channel)
        instead of leaving every later subscriber on a channel nobody publishes to."""
        try:
            await self._publish()
        except Exception:
            logger.exception("live stream of {} failed; its streams end", self.match_id)
            for subscriber in list(self.subscribers):
                subscriber.finish()
        finally:
            self.hub.forget(self)

    async def _publish(self) -> None:
        """Publish changed metrics every interval, keep-alives when idle, end after full time."""
        last_sent = time.monotonic()
        while self.subscribers and not self.last.ended:
            with contextlib.suppress(TimeoutError):  # woken early when the aggregator says so
                await asyncio.wait_for(self.changed.wait(), timeout=self.hub.interval_s)
            self.changed.clear()
            spacing = max(MIN_SPACING_S, self.hub.fanout_spacing_s())
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
                await self.broadcast(KEEPALIVE_FRAME)
                last_sent = time.monotonic()
        if self.last.ended:
            await self.broadcast(END_FRAME)
            for subscriber in list(self.subscribers):
                subscriber.finish()


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
        self.frame_cost_s = FRAME_COST_S

    def fanned_out(self, subscribers: int, seconds: float) -> None:
        """A fan-out to `subscribers` took `seconds`: fold it into the cost per subscriber-frame
        (a moving average, from fan-outs big enough to measure)."""
        if subscribers >= 100:
            self.frame_cost_s = 0.7 * self.frame_cost_s + 0.3 * seconds / subscribers

    def fanout_spacing_s(self) -> float:
        """How long a match's updates wait after one another so that fan-out keeps to its share."""
        return self.subscribers * self.frame_cost_s * (1 / FANOUT_SHARE - 1)

    def release(self, subscriber: Subscriber) -> None:
        """Called once per subscriber, by `Subscriber.close`."""
        subscriber.channel.subscribers.pop(subscriber, None)
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

    async def open(self, match_id: str, client: str = "-") -> Subscriber:
        """Check the match and capacity first (errors become HTTP answers), then reserve a slot;
        `client` is the caller's address, for the per-address cap. The caller streams it
        (`stream_to` or `frames`) and always closes it."""
        self._check_capacity(client)
        channel = self.channels.get(match_id)
        if channel is None:
            snapshot = await self.reader.snapshot(match_id)  # MatchNotFound -> 404
            channel = self.channels.get(match_id) or MatchChannel(self, match_id, snapshot)
            self.channels[match_id] = channel
        self._check_capacity(client)  # again: others may have joined during the snapshot read
        subscriber = Subscriber(channel, client)
        channel.subscribers[subscriber] = None
        self.subscribers += 1
        self.per_client[client] = self.per_client.get(client, 0) + 1
        metrics.STREAM_SESSIONS_OPENED.inc()
        metrics.STREAM_SESSIONS_ACTIVE.inc()
        if channel.task is None and not channel.last.ended:
            channel.task = asyncio.create_task(channel.poll(), name=f"stream-{match_id}")
        return subscriber

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
            for subscriber in list(channel.subscribers):
                subscriber.finish()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
        self.channels.clear()
