"""uvicorn's httptools protocol with the limits it lacks: bounded heads, read timers, a
connection cap.

Measured before this (issue 18): httptools concatenates an unfinished header without limit (one
endless header: 81 MB accepted in 8 s at 100 % CPU while producers got no 202), uvicorn arms its
keep-alive timer only after a response (a connection that never finishes a request stays open for
ever) and nothing caps connections (at the open-file limit every new connection, producers' and
health checks' included, is reset). This subclass keeps httptools' speed and adds:

- a head (request line + headers) over `max_head_bytes` is answered 431 and the connection closed
  as soon as the limit is passed, before the parser has buffered more;
- a connection has `head_timeout_s` to send a whole head, from the moment it opens or its last
  response ends (a slowloris or an idle keep-alive connection is closed, 408 if it had begun);
  this timer is also the keep-alive timeout, so uvicorn's own is never armed;
- a request has `body_timeout_s` to send its body once its head is in, and may send at most
  `MAX_BODY_WIRE_BYTES` in `MAX_BODY_PIECES` pieces after its head, framing and trailers
  included (413); trailers are dropped; once answered, at most `LINGER_BYTES` more of its body
  is read before the connection is closed;
- bytes that are not HTTP/1.1 get a problem+json 400 (after the answer in progress, if any),
  counted rather than logged, and no answer of the protocol's own is ever written into another
  response in flight (a request queued behind a stream is refused by closing);
- a client that does not read what it is sent (writes blocked for `write_timeout_s`, once the
  socket buffers are full) is disconnected: a live stream nobody reads ends;
- at most `max_connections` per process: when full, the connection idle the longest (waiting for a
  head) is closed to let the new one in; with none idle the new one gets 503 and is closed.
  Live streams may hold at most `max_connections - reserve` of them (see `stream_slots`), so the
  reserve always serves producers and health checks;
- a live stream's request (GET .../stream) carries its connection in the ASGI scope
  (`StreamConnection`), so the stream hub writes frames straight to the transport instead of
  waking one task per subscriber per frame (see `pipeline/streams.py`);
- a response with a length is one write, head and body together (`HeadWithBody`): uvicorn writes
  them separately, and each write is a send(2) the kernel charges ~9 us for on loopback here;
- after an answer the request middleware marks as throttled (`HOLD_READING_S`: an address out of
  failed authentications), what the connection sends next is kept, not parsed, for its
  Retry-After (at most half the head timeout, so the hold always ends first): a client that
  ignores Retry-After on a keep-alive connection gets one answer per wait, not thousands a second
  of the producers' CPU. Reading goes on (a client that hangs up is let go at once; pausing the
  socket instead kept thousands of closed connections until their holds ended), and more than
  `HELD_MAX_BYTES` in one hold closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from fanfinity import metrics
from fanfinity.api.middleware import (
    HEAD_LIMITED,
    HOLD_READING_S,
    MAX_HEADER_BYTES,
    SECURITY_HEADERS,
    is_stream_path,
    new_request_id,
)
from fanfinity.config import Settings
from fanfinity.schemas import MAX_BATCH_BYTES

FILES_KEPT_FOR_THE_PROCESS = 1_000  # store connections, log files, the listener, epoll, imports
# After a refusal, bytes still arriving are read and dropped for this long before the close:
# closing a socket with unread input sends a reset, which makes the client lose the answer.
LINGER_S = 1.0
LINGER_BYTES = 64 * 1024  # read and dropped at most; then reading pauses until the close
HELD_MAX_BYTES = 64 * 1024  # kept at most while a throttled connection is held; then it is closed
# What one request may send after its head, framing and trailers included: twice the largest body
# a route takes (chunk framing of reasonable pieces costs little), and in at most this many pieces
# (one-byte chunks would cost the parser a callback each). Beyond either: 413, or a close when
# the answer has begun. Once answered, at most LINGER_BYTES more of its body is read.
MAX_BODY_WIRE_BYTES = 2 * MAX_BATCH_BYTES
MAX_BODY_PIECES = 65_536  # a JSON encoder streamed piece by piece sends ~5 bytes a piece
JOIN_MAX_BYTES = 64 * 1024  # a larger body is written after its head, not copied to join it


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int
    reserve: int
    max_head_bytes: int = MAX_HEADER_BYTES
    head_timeout_s: float = 5.0
    body_timeout_s: float = 15.0
    write_timeout_s: float = 10.0


def open_file_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_limits(settings: Settings, file_limit: int | None = None) -> ConnectionLimits:
    """The process's connection budget: FANFINITY_MAX_CONNECTIONS, or the open-file limit less
    what the process needs for itself (a cap at the limit itself could never fire in time)."""
    files = open_file_limit() if file_limit is None else file_limit
    derived = max(files - FILES_KEPT_FOR_THE_PROCESS, 100)
    maximum = min(settings.max_connections, derived) if settings.max_connections else derived
    return ConnectionLimits(
        max_connections=maximum,
        reserve=min(settings.connection_reserve, maximum // 2),
        head_timeout_s=settings.head_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        write_timeout_s=settings.stream_slow_s,
    )


def stream_slots(settings: Settings, file_limit: int | None = None) -> int:
    """Live streams this process may serve: the connection budget less its reserve, or
    FANFINITY_STREAM_MAX_SUBSCRIBERS when that is smaller."""
    limits = connection_limits(settings, file_limit)
    slots = limits.max_connections - limits.reserve
    if settings.stream_max_subscribers:
        return min(settings.stream_max_subscribers, slots)
    return slots


Answer = tuple[int, bytes, bytes, bytes]  # status, reason phrase, problem slug, detail


def canned_response(answer: Answer, retry_after_s: int = 0) -> bytes:
    """A complete problem+json response written by the protocol itself (no app involved), with
    the headers every response of the service carries."""
    status, reason, slug, detail = answer
    body = b'{"type":"urn:fanfinity:problem:%s","title":"%s","status":%d,"detail":"%s"}' % (
        slug,
        reason,
        status,
        detail,
    )
    lines = [
        b"HTTP/1.1 %d %s" % (status, reason),
        b"content-type: application/problem+json",
        b"content-length: %d" % len(body),
        b"connection: close",
        b"x-request-id: " + new_request_id().encode(),
    ]
    lines += [name + b": " + value for name, value in SECURITY_HEADERS]
    if retry_after_s:
        lines.append(b"retry-after: %d" % retry_after_s)
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


HEAD_TOO_LARGE: Answer = (
    431,
    b"Request Header Fields Too Large",
    b"request-headers-too-large",
    b"request line and headers above %d bytes",
)
BODY_TOO_LARGE: Answer = (
    413,
    b"Content Too Large",
    b"payload-too-large",
    b"the request body (with its framing) is larger than any endpoint accepts",
)
MALFORMED: Answer = (
    400,
    b"Bad Request",
    b"malformed-http",
    b"the request is not valid HTTP/1.1",
)
UPGRADE_WITH_BODY: Answer = (
    400,
    b"Bad Request",
    b"upgrade-not-supported",
    b"this server speaks HTTP/1.1 only: send the request without Upgrade (curl: --http1.1)",
)
HEAD_TIMEOUT: Answer = (
    408,
    b"Request Timeout",
    b"request-timeout",
    b"the request was not complete in time",
)
FULL: Answer = (
    503,
    b"Service Unavailable",
    b"too-many-connections",
    b"this replica holds its maximum number of connections",
)


STREAM_CONNECTION = "fanfinity.stream_connection"  # the ASGI scope extension's name
# A live stream's kernel send buffer (Linux doubles it: 64 KiB). Left to autotuning, a client that
# does not read let the kernel take 126 KB within 6 s of updates and up to tcp_wmem's 4 MiB before
# the process saw any backlog; a frame is a few KiB, so this is room for many of them.
STREAM_SEND_BUFFER_BYTES = 32 * 1024


class StreamConnection:
    """A live stream's way to its own connection, offered as a scope extension; it is the
    stream hub's `FrameSink` (`pipeline/streams.py`): the transport's own write methods, and an
    abort that resets the connection.

    A stream writes body chunks itself only once `writes_chunks()` says uvicorn wrote the head with
    chunked framing and the response is neither complete nor disconnected (uvicorn's
    `RequestResponseCycle.send` frames each body message as one chunk and ends with
    `0\r\n\r\n`; the stream sends its head and its end through ASGI, so the cycle's state stays
    right). `on_lost` is called once when the client goes away.
    """

    __slots__ = ("_cycle", "get_write_buffer_size", "is_closing", "on_lost", "transport", "write")

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        self.transport = transport
        self.write = transport.write
        self.get_write_buffer_size = transport.get_write_buffer_size
        self.is_closing = transport.is_closing
        self._cycle: RequestResponseCycle | None = cycle
        self.on_lost: Callable[[], None] | None = None

    def abort(self) -> None:
        """Reset the connection: a client that does not read gets no FIN after its unsent frames
        (which would keep them in the kernel until the FIN times out), the buffers are freed now."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def writes_chunks(self) -> bool:
        cycle = self._cycle
        return bool(
            cycle is not None
            and cycle.response_started
            and cycle.chunked_encoding
            and not cycle.response_complete
            and not cycle.disconnected
            and not self.transport.is_closing()
        )

    @property
    def active(self) -> bool:
        return self._cycle is not None and not self._cycle.response_complete

    def lost(self) -> None:
        cycle = self._cycle
        if cycle is not None and not cycle.response_complete:
            # uvicorn tells only the newest cycle, and a request may be queued behind a stream
            cycle.disconnected = True
            cycle.message_event.set()
        callback, self.on_lost = self.on_lost, None
        if callback is not None:
            callback()

    def release(self) -> None:
        """The stream is over: forget the cycle (it refers back to the scope holding this)."""
        self._cycle = None
        self.on_lost = None


def stream_connection(scope: Any) -> StreamConnection | None:
    """The connection a live stream may write to itself, when this server offers one."""
    extensions = scope.get("extensions")
    connection = extensions.get(STREAM_CONNECTION) if extensions else None
    return connection if isinstance(connection, StreamConnection) else None


def _nothing() -> None:
    pass


class HeadWithBody:
    """The request cycle's transport: a response head that announces a length is held until its
    body's first write and goes out with it in one write.

    uvicorn's `RequestResponseCycle.send` writes the head when the app sends
    `http.response.start` and the body on `http.response.body`; with uvloop each write is its own
    send(2) when the socket has room (`UVStream._initiate_write` writes at once). On this VM a
    response of 330 + 90 bytes costs 17-23 us of CPU as two sends and 8-10 us as one
    (`python -m scripts.bench.sends`). The cycle uses only `write`, `close` and `is_closing` of
    its transport (uvicorn 0.54's `httptools_impl`), which is all this offers.

    Only the head is ever held, and only once the response has started (a `100 Continue` goes out
    at once). Never held: a chunked head (a live stream, whose frames the hub writes to the
    transport itself) and a HEAD answer's (it has no body write to join). A body over
    `JOIN_MAX_BYTES` is not copied to join it: the head goes just before it. A head still held is
    written when the response completes (the cycle's own `on_response`), when the cycle closes
    the connection, and before the protocol closes it (`GuardedHttpToolsProtocol`). A handler
    that awaits between its head and a body with a length (a file read) sends its head with that
    body.
    """

    __slots__ = ("_cycle", "_head", "_on_response", "is_closing", "transport")

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        self.transport = transport
        self.is_closing = transport.is_closing
        # Kept only until the head has gone by or the connection is lost (`detach`), so that no
        # reference cycle keeps a finished connection from being freed by reference counting.
        self._cycle: RequestResponseCycle | None = cycle
        self._head: bytes | None = None
        self._on_response = cycle.on_response
        cycle.on_response = self._completed

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:
            if len(data) <= JOIN_MAX_BYTES:
                data = head + data
            else:
                self.transport.write(head)
            self._head = None
        else:
            cycle = self._cycle
            if cycle is not None and cycle.response_started:
                self._cycle = None
                if not cycle.chunked_encoding and cycle.scope["method"] != "HEAD":
                    self._head = data
                    return
        self.transport.write(data)

    def release(self) -> None:
        """Write a head still held (a response without a body write)."""
        head, self._head, self._cycle = self._head, None, None
        if head is not None:
            self.transport.write(head)

    def detach(self) -> None:
        """The connection is gone: drop what is held and every reference back to the cycle and
        the protocol."""
        self._head = self._cycle = None
        self._on_response = _nothing

    def _completed(self) -> None:
        self.release()
        on_response, self._on_response = self._on_response, _nothing
        on_response()

    def close(self) -> None:
        self.release()
        self._on_response = _nothing
        self.transport.close()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring. Set `limits` with `configure()` before serving."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits(max_connections=19_000, reserve=1_000)
    # Connections waiting for a request head, oldest first (a dict keeps insertion order).
    _waiting: ClassVar[dict[GuardedHttpToolsProtocol, None]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True
        self._head_bytes = 0
        self._head_started = False  # the parser has begun a message and not ended its head yet
        self._head_counted = True  # the current head began in a read that was counted
        self._uncounted_read = False  # body bytes are being parsed (a pipelined head may follow)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_pending = False
        self._write_timer: asyncio.TimerHandle | None = None
        self._hold_timer: asyncio.TimerHandle | None = None
        self._held: bytearray | None = None  # bytes kept while held (None: not held)
        self._body_bytes = 0  # bytes read after this request's head (framing, trailers included)
        self._body_pieces = 0
        self._messages_completed = 0
        # a refusal of a request that came behind the one being answered: sent after that answer
        self._refusal_after: tuple[Answer, str] | None = None
        # the request being answered (with pipelining, `self.cycle` is the newest one queued)
        self._answering: RequestResponseCycle | None = None
        self._refused = False
        self._dropped_bytes = 0
        self._streams: list[StreamConnection] | None = None

    @classmethod
    def configure(cls, limits: ConnectionLimits) -> None:
        cls.limits = limits

    # Connection lifecycle
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        full = len(self.connections) >= self.limits.max_connections
        super().connection_made(transport)
        metrics.CONNECTIONS_OPEN.inc()
        if full and not self._evict_longest_waiting():
            self._refuse(FULL, "refused_full", retry_after_s=1, linger=False)
            return
        self._wait_for_head()

    def connection_lost(self, exc: Exception | None) -> None:
        metrics.CONNECTIONS_OPEN.dec()
        self._waiting.pop(self, None)
        self._cancel_timers()
        self._answering = None
        super().connection_lost(exc)
        for cycle in (self.cycle, *(queued for queued, _ in self.pipeline)):
            if cycle is not None and isinstance(cycle.transport, HeadWithBody):
                cycle.transport.detach()
        if self._streams:
            streams, self._streams = self._streams, None
            for stream in streams:
                stream.lost()

    def _evict_longest_waiting(self) -> bool:
        while self._waiting:
            oldest = next(iter(self._waiting))
            del self._waiting[oldest]
            if oldest is not self and not oldest.transport.is_closing():
                metrics.CONNECTIONS_CLOSED.labels("evicted_idle").inc()
                oldest._cancel_timers()
                oldest.transport.close()
                return True
        return False

    def _wait_for_head(self) -> None:
        self._waiting[self] = None
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.limits.head_timeout_s, self._head_timed_out)

    def _cancel_timers(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None

    # Bytes out
    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(
                self.limits.write_timeout_s, self._write_timed_out
            )

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_timed_out(self) -> None:
        self._write_timer = None
        if not self.transport.is_closing():
            metrics.CONNECTIONS_CLOSED.labels("write_timeout").inc()
            self.transport.abort()  # close() would wait for the unread buffer to drain

    # Bytes in
    def data_received(self, data: bytes) -> None:
        if self._refusing:  # drop what still arrives, up to a bound
            self._dropped_bytes += len(data)
            if self._dropped_bytes > LINGER_BYTES:
                self.transport.pause_reading()
            return
        if self._held is not None:  # throttled: kept for the end of the hold, within a bound
            self._held += data
            if len(self._held) > HELD_MAX_BYTES:
                self._cancel_timers()
                self._held = None
                metrics.CONNECTIONS_CLOSED.labels("hold_overflow").inc()
                self._refused = True
                self._close_lingering()
            return
        if not self._reading_head:
            self._body_bytes += len(data)
            if self._body_bytes > self._body_allowance():
                self._body_over_limit()
                return
            self._uncounted_read = True
            try:
                super().data_received(data)
            finally:
                self._uncounted_read = False
        else:
            allowed = self.limits.max_head_bytes - self._head_bytes
            if len(data) <= allowed:
                self._head_bytes += len(data)
                super().data_received(data)
            else:  # feed up to the limit; if one head has not ended there, it is too large
                completed = self._messages_completed
                super().data_received(data[:allowed])
                if self._refusing or self.transport.is_closing():
                    return
                if self._reading_head and self._messages_completed == completed:
                    status, reason, slug, detail = HEAD_TOO_LARGE
                    limit = self.limits.max_head_bytes
                    self._refuse((status, reason, slug, detail % limit), "head_too_large")
                    return
                if self._messages_completed != completed:
                    # requests ended in the slice: the head after them began uncounted there,
                    # so the app checks its size itself (it may pass the limit before we do)
                    self._head_counted = False
                self.data_received(data[allowed:])
                return
        if self._body_pending and self._body_timer is None and not self.transport.is_closing():
            self._body_timer = self.loop.call_later(
                self.limits.body_timeout_s, self._body_timed_out
            )

    def _body_allowance(self) -> int:
        """Bytes this request may still send after its head: once it is answered, only a
        lingering tail of its body is read (then the connection is closed)."""
        cycle = self.cycle
        if cycle is not None and cycle.response_complete:
            return min(MAX_BODY_WIRE_BYTES, LINGER_BYTES)
        return MAX_BODY_WIRE_BYTES

    def _body_over_limit(self) -> None:
        if self._refusing or self.transport.is_closing():
            return  # refused already (the parser is still going through the same read)
        cycle = self.cycle
        if cycle is None or not (cycle.response_started or cycle.response_complete):
            self._refuse(BODY_TOO_LARGE, "body_too_large")
            return
        metrics.CONNECTIONS_CLOSED.labels("body_too_large").inc()
        self._cancel_timers()
        if cycle.response_complete and not self._answering_earlier():
            # answered (say a 413 before the body): read no more of it, and end the connection
            # as a refusal does, so the answer is not lost to a reset
            self._refused = True
            self._close_lingering()
        else:
            self._release_head()
            self.transport.close()  # in the middle of an answer: cut it

    def send_400_response(self, msg: str) -> None:
        """Bytes the parser cannot read as HTTP/1.1: the problem+json 400 every other refusal
        of the service looks like (uvicorn's is plain text, without the common headers), after
        the answer to a request still in progress on this connection (so that request is not
        left without one), and counted rather than logged (`_QuietMalformed`)."""
        self._refuse(MALFORMED, "malformed_http")

    def _unsupported_upgrade_warning(self) -> None:
        """uvicorn logs two warnings per request carrying `Upgrade` (none is supported here, and
        the request is answered as a plain one): a log flood for a client without a key."""
        metrics.CONNECTIONS_UPGRADE_IGNORED.inc()

    # Parser callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        # trailers (after the body) are read and dropped: nothing uses them
        if self._reading_head and not self._refused:
            super().on_header(name, value)

    def on_body(self, body: bytes) -> None:
        if self._refusing:
            return  # the parser goes on through the read that was refused: nothing is used
        self._body_pieces += 1
        if self._body_pieces > MAX_BODY_PIECES:
            self._body_over_limit()
            return
        super().on_body(body)

    def on_message_begin(self) -> None:
        self._head_started = True
        # a pipelined head that starts in the rest of a body's read escapes the count
        self._head_counted = not self._uncounted_read
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        if self._refusing:
            return  # refused mid-read: no request after that starts
        if self.parser.should_upgrade() and self._announces_body():
            # the parser hands nothing after an upgrade head on: the app would read an empty
            # body (`curl --http2` over http:// asks for h2c this way), so say why instead
            self._refuse(UPGRADE_WITH_BODY, "upgrade_with_body")
            return
        self._head_started = False
        self._reading_head = False
        self._body_bytes = self._body_pieces = 0
        self._body_pending = True
        self._waiting.pop(self, None)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # not an upgrade
            # duck-typed: the cycle calls only write, close and is_closing on its transport
            cycle.transport = HeadWithBody(self.transport, cycle)  # type: ignore[assignment]
        scope: Any = self.scope  # uvicorn types extension values as dicts
        # the app need not sum the headers, unless part of this head came in a body's read
        if self._head_counted and self.limits.max_head_bytes <= MAX_HEADER_BYTES:
            scope["extensions"] = {**(scope.get("extensions") or {}), HEAD_LIMITED: {}}
        if scope.get("method") == "GET" and is_stream_path(scope.get("path", "")):
            self._offer_stream_connection()

    def _announces_body(self) -> bool:
        for name, value in self.headers:
            if name == b"transfer-encoding" or (
                name == b"content-length" and value.strip() not in (b"", b"0")
            ):
                return True
        return False

    def _offer_stream_connection(self) -> None:
        cycle = self.cycle
        if cycle is None or cycle.scope is not self.scope:
            return  # upgraded, not a request cycle of ours
        connection = StreamConnection(self.transport, cycle)
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SEND_BUFFER_BYTES)
        scope: Any = self.scope  # uvicorn types extension values as dicts
        scope["extensions"] = {**(scope.get("extensions") or {}), STREAM_CONNECTION: connection}
        if self._streams is None:
            self._streams = []
        self._streams.append(connection)

    def on_message_complete(self) -> None:
        if self._refusing:
            return
        super().on_message_complete()
        self._messages_completed += 1
        self._body_pending = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._reading_head = True  # what follows (pipelined or next request) is a new head
        self._head_bytes = 0

    def on_response_complete(self) -> None:
        """uvicorn's `HttpToolsProtocol.on_response_complete` without its keep-alive timer:
        the head timer armed here closes an idle connection just as quietly, and no later
        (`fanfinity serve` sets `timeout_keep_alive` to the head timeout rounded up), so the
        second timer per request (~2 us to arm and cancel) bought nothing."""
        if self._streams:
            self._streams = [stream for stream in self._streams if stream.active] or None
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        answered, self._answering = self._answering, None
        scope: Any = answered.scope if answered is not None else {}
        marked_s = scope.get(HOLD_READING_S)
        hold_s = min(marked_s, self.limits.head_timeout_s / 2) if marked_s else 0.0
        if self.pipeline:  # start the pipelined request, as uvicorn does (after a hold, if any)
            cycle, app = self.pipeline.pop()
            if hold_s:
                self._hold(hold_s, (cycle, app))
            else:
                self.flow.resume_reading()
                self._start_asgi_task(cycle, app)
            return  # answering it, not waiting for a head (so not evictable): that comes after
        if self._refusal_after is not None:  # every request before the refused one is answered
            (answer, reason), self._refusal_after = self._refusal_after, None
            self._refuse(answer, reason)
            return
        self.flow.resume_reading()
        if hold_s:
            self._hold(hold_s)
        self._wait_for_head()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self._answering = cycle
        super()._start_asgi_task(cycle, app)

    def _hold(self, seconds: float, queued: tuple[RequestResponseCycle, Any] | None = None) -> None:
        """Keep what this connection sends for `seconds` before parsing it; a request already
        queued behind the answer (a pipelining client) waits as long before it starts."""
        self._held = bytearray()
        self.flow.resume_reading()  # reading goes on, so a client that hangs up is let go
        self._hold_timer = self.loop.call_later(seconds, self._end_hold, queued)

    def _end_hold(self, queued: tuple[RequestResponseCycle, Any] | None) -> None:
        self._hold_timer = None
        held, self._held = self._held, None
        if self.transport.is_closing():
            return
        if queued is not None:
            self._start_asgi_task(*queued)
        if held:
            self.data_received(bytes(held))

    def _release_head(self) -> None:
        """Before the protocol itself closes: the head the client would have had is written."""
        transport = self.cycle.transport if self.cycle is not None else None
        if isinstance(transport, HeadWithBody):
            transport.release()

    # Timers and refusals
    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if not self._head_started and (self.cycle is None or self.cycle.response_complete):
            # no head begun since the last answer (even one given before its body arrived)
            self._waiting.pop(self, None)
            self.transport.close()  # an idle keep-alive connection: close quietly
            metrics.CONNECTIONS_CLOSED.labels("head_timeout").inc()
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered; the next head's timer starts after it
        self._refuse(HEAD_TIMEOUT, "head_timeout")

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or not self._body_pending:
            return
        if self.cycle is not None and self.cycle.response_started:
            metrics.CONNECTIONS_CLOSED.labels("body_timeout").inc()
            self._release_head()
            self.transport.close()  # answered already (say a 401): just stop waiting for the body
            return
        self._refuse(HEAD_TIMEOUT, "body_timeout")

    @property
    def _refusing(self) -> bool:
        """Refused, or a refusal waits for the answers before it: nothing more is parsed."""
        return self._refused or self._refusal_after is not None

    def _streaming(self) -> bool:
        return any(stream.active for stream in self._streams or ())

    def _answering_earlier(self) -> bool:
        """Whether a response to an earlier request is still going out on this connection (the
        current cycle is queued behind it, or a live stream holds it)."""
        return bool(self.pipeline) or self._streaming()

    def _refuse(
        self,
        answer: Answer,
        reason: str,
        retry_after_s: int = 0,
        linger: bool = True,
    ) -> None:
        if self._refusing or self.transport.is_closing():
            return  # refused already (the parser may still be going through the same read)
        cycle = self.cycle
        answering = cycle is not None and not cycle.response_complete
        streaming = self._streaming()
        if not streaming and (self.pipeline or (answering and not self._body_pending)):
            # what is refused came behind a request still being answered (its body is in): that
            # answer, and any queued before the refused one, go out first
            self._refusal_after = (answer, reason)
            self.flow.pause_reading()
            return
        metrics.CONNECTIONS_CLOSED.labels(reason).inc()
        self._waiting.pop(self, None)
        self._cancel_timers()
        if cycle is not None and answering:
            cycle.disconnected = True  # the app sees a disconnect, never writes after us
            cycle.message_event.set()
        if streaming or (answering and cycle is not None and cycle.response_started):
            self._release_head()  # no answer of ours inside a response: the connection ends
            self.transport.close()
            return
        self._refused = True
        self.transport.write(canned_response(answer, retry_after_s))
        if linger:
            self._close_lingering()
        else:
            self.transport.close()

    def _close_lingering(self) -> None:
        """Close after what was written, reading and dropping what still arrives for a while:
        closing a socket with unread input sends a reset, which makes the client lose the
        answer."""
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()


class _QuietMalformed(logging.Filter):
    """Drops uvicorn's one warning per request that is not HTTP: a client without a key could
    write the log at the rate it sends garbage (65,786 lines in 8 s in a fuzz run). Each such
    connection is counted in `fanfinity_connections_closed_total{reason="malformed_http"}`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Invalid HTTP request received."


def configure(settings: Settings) -> ConnectionLimits:
    """Install the process's limits on the protocol (each uvicorn worker calls this)."""
    limits = connection_limits(settings)
    GuardedHttpToolsProtocol.configure(limits)
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(known, _QuietMalformed) for known in uvicorn_log.filters):
        uvicorn_log.addFilter(_QuietMalformed())
    return limits


PROTOCOL = f"{GuardedHttpToolsProtocol.__module__}:{GuardedHttpToolsProtocol.__qualname__}"
