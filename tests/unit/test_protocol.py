"""What the protocol hands the socket: a response with a length is one write (head and body
together), a stream's head goes out at once, `100 Continue` before the body is read, and a
head-only answer is not held back, pipelined or not; a connection lost mid-response is freed
without the garbage collector. And idle connections are closed each at its own head deadline.

Driven through `GuardedHttpToolsProtocol` itself with a transport that records each write, which
is what becomes one send(2) with uvloop."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from fanfinity.api.middleware import HEAD_LIMITED, HOLD_READING_S, MAX_HEADER_BYTES
from fanfinity.api.protocol import (
    HELD_MAX_BYTES,
    JOIN_MAX_BYTES,
    MAX_BODY_PIECES,
    STREAM_CONNECTION,
    ConnectionLimits,
    GuardedHttpToolsProtocol,
    configure,
)
from fanfinity.config import Settings

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


TransportT = TypeVar("TransportT", bound=RecordingTransport)


async def fixed_answer(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """A small JSON answer with its length, after reading the whole body."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    body = b'{"ok":true}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def connected_to(
    app: Any, transport: TransportT
) -> tuple[GuardedHttpToolsProtocol, TransportT]:
    """A protocol serving `app` as `fanfinity serve` configures uvicorn, on `transport`."""
    config = Config(app=app, lifespan="off", log_config=None, ws="none")
    protocol = GuardedHttpToolsProtocol(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    protocol.connection_made(transport)
    return protocol, transport


async def connected(app: Any) -> tuple[GuardedHttpToolsProtocol, RecordingTransport]:
    return await connected_to(app, RecordingTransport())


async def settled() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_response_with_a_length_is_one_write_of_head_and_body() -> None:
    protocol, transport = await connected(fixed_answer)
    protocol.data_received(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    await settled()
    assert len(transport.writes) == 1
    head, body = transport.writes[0].split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 11" in head
    assert body == b'{"ok":true}'
    protocol.data_received(b"GET /y HTTP/1.1\r\nHost: t\r\n\r\n")  # the next request: the same
    await settled()
    assert len(transport.writes) == 2
    assert transport.writes[1].endswith(b'\r\n\r\n{"ok":true}')
    protocol.connection_lost(None)


async def test_a_streamed_response_writes_its_head_before_the_first_chunk() -> None:
    release_first_chunk = asyncio.Event()

    async def stream(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await release_first_chunk.wait()
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    protocol, transport = await connected(stream)
    protocol.data_received(b"GET /s/stream HTTP/1.1\r\nHost: t\r\n\r\n")
    await settled()
    assert len(transport.writes) == 1  # the head alone, while the stream has nothing to say
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding: chunked" in transport.writes[0]
    release_first_chunk.set()
    await settled()
    assert transport.writes[1:] == [b"9\r\ndata: 1\n\n\r\n", b"0\r\n\r\n"]
    protocol.connection_lost(None)


async def test_100_continue_goes_out_before_the_body_arrives() -> None:
    protocol, transport = await connected(fixed_answer)
    protocol.data_received(
        b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    await settled()
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    protocol.data_received(b"abcd")
    await settled()
    assert len(transport.writes) == 2
    assert transport.writes[1].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes[1].endswith(b'{"ok":true}')
    protocol.connection_lost(None)


async def test_head_only_answers_are_written_even_when_pipelined() -> None:
    protocol, transport = await connected(fixed_answer)
    protocol.data_received(b"HEAD /x HTTP/1.1\r\nHost: t\r\n\r\nGET /y HTTP/1.1\r\nHost: t\r\n\r\n")
    await settled()
    joined = b"".join(transport.writes)
    first, second = joined.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert first.endswith(b"\r\n\r\n")  # HEAD: the head alone, nothing after it
    assert second.endswith(b'\r\n\r\n{"ok":true}')
    protocol.connection_lost(None)


async def test_an_app_that_fails_after_its_head_still_sends_the_head_and_closes() -> None:
    async def fails_mid_response(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        headers = [(b"content-length", b"100")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        raise RuntimeError("lost its data source")

    protocol, transport = await connected(fails_mid_response)
    protocol.data_received(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    await settled()
    assert transport.closed
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    protocol.connection_lost(None)


HEAD_TIMEOUT_S = 0.5
LATE_S = 0.05  # how late a timer may fire on a busy machine and the test still pass


@pytest.fixture
def short_head_timeout() -> Iterator[None]:
    previous = GuardedHttpToolsProtocol.limits
    GuardedHttpToolsProtocol.configure(
        ConnectionLimits(max_connections=100, reserve=10, head_timeout_s=HEAD_TIMEOUT_S)
    )
    yield
    GuardedHttpToolsProtocol.configure(previous)


async def test_each_idle_connection_is_closed_at_its_own_head_deadline(
    short_head_timeout: None,
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    first, first_transport = await connected(fixed_answer)
    await asyncio.sleep(HEAD_TIMEOUT_S / 2)
    second, second_transport = await connected(fixed_answer)
    await asyncio.sleep(HEAD_TIMEOUT_S / 4)
    answered, answered_transport = await connected(fixed_answer)
    answered.data_received(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")  # its next head is due later
    await settled()
    assert len(answered_transport.writes) == 1
    assert answered.timeout_keep_alive_task is None  # the head timer is the keep-alive timer

    await asyncio.sleep(started + HEAD_TIMEOUT_S + 2 * LATE_S - loop.time())
    assert first_transport.closed  # idle since it opened: closed quietly, nothing written
    assert first_transport.writes == []
    assert not second_transport.closed
    assert not answered_transport.closed

    await asyncio.sleep(started + 1.5 * HEAD_TIMEOUT_S + 2 * LATE_S - loop.time())
    assert second_transport.closed
    assert not answered_transport.closed  # a head arrived: the clock restarted after the answer

    await asyncio.sleep(started + 1.75 * HEAD_TIMEOUT_S + 2 * LATE_S - loop.time())
    assert answered_transport.closed
    for protocol in (first, second, answered):
        protocol.connection_lost(None)


async def test_a_head_that_stops_half_way_is_answered_408_at_its_deadline(
    short_head_timeout: None,
) -> None:
    protocol, transport = await connected(fixed_answer)
    protocol.data_received(b"GET /x HTTP/1.1\r\nHost: t\r\nX-Slow: ")
    await asyncio.sleep(HEAD_TIMEOUT_S + 2 * LATE_S)
    assert transport.writes[0].startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    protocol.connection_lost(None)


async def test_a_crowd_of_idle_connections_is_closed_at_its_deadline(
    short_head_timeout: None,
) -> None:
    crowd = [await connected(fixed_answer) for _ in range(200)]  # a slowloris crowd, in small
    await asyncio.sleep(HEAD_TIMEOUT_S + 2 * LATE_S)
    assert [transport.closed for _, transport in crowd] == [True] * len(crowd)
    for protocol, _ in crowd:
        protocol.connection_lost(None)


async def test_a_large_body_is_written_after_its_head_not_copied_to_join_it() -> None:
    body = b"x" * (JOIN_MAX_BYTES + 1)

    async def large(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        headers = [(b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    protocol, transport = await connected(large)
    protocol.data_received(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    await settled()
    assert len(transport.writes) == 2
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes[0].endswith(b"\r\n\r\n")
    assert transport.writes[1] == body
    protocol.connection_lost(None)


async def test_a_connection_lost_mid_response_is_freed_without_the_collector() -> None:
    started = asyncio.Event()

    async def slow(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await receive()  # the request
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        started.set()
        assert (await receive())["type"] == "http.disconnect"
        await send({"type": "http.response.body", "body": b"ok"})

    gc.disable()
    try:
        protocol, transport = await connected(slow)
        protocol.data_received(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        await started.wait()
        gone = weakref.ref(protocol)
        protocol.connection_lost(None)
        await settled()
        del protocol
        assert gone() is None
        assert transport.writes == []  # the held head died with the connection
    finally:
        gc.enable()


@pytest.mark.parametrize(
    ("request_line", "offered"),
    [
        (b"GET /m/metrics/stream", True),
        (b"GET /m/metrics/stream/", True),  # the router serves the same route
        (b"GET /m/metrics/stream?x=1", True),
        (b"GET /m/metrics/streams", False),
        (b"GET /m/metrics/stream/more", False),
        (b"POST /m/metrics/stream", False),
    ],
)
async def test_only_a_stream_route_is_offered_its_connection(
    request_line: bytes, offered: bool
) -> None:
    scopes: list[dict[str, Any]] = []

    async def recording(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await fixed_answer(scope, receive, send)

    protocol, _ = await connected(recording)
    protocol.data_received(request_line + b" HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
    await settled()
    assert (STREAM_CONNECTION in (scopes[0].get("extensions") or {})) is offered
    protocol.connection_lost(None)


@pytest.mark.parametrize(
    ("max_head_bytes", "marked"), [(MAX_HEADER_BYTES, True), (MAX_HEADER_BYTES + 1, False)]
)
async def test_the_app_is_told_the_head_was_bounded_only_when_the_bound_is_the_apps(
    max_head_bytes: int, marked: bool
) -> None:
    """The request middleware skips its own header-size sum only for requests marked so (the
    path is a stream's, to see that the two extensions do not replace each other)."""
    scopes: list[dict[str, Any]] = []

    async def recording(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await fixed_answer(scope, receive, send)

    previous = GuardedHttpToolsProtocol.limits
    GuardedHttpToolsProtocol.configure(
        ConnectionLimits(max_connections=100, reserve=10, max_head_bytes=max_head_bytes)
    )
    try:
        protocol, _ = await connected(recording)
        protocol.data_received(b"GET /x/stream HTTP/1.1\r\nHost: t\r\n\r\n")
        await settled()
    finally:
        GuardedHttpToolsProtocol.configure(previous)
    extensions = scopes[0].get("extensions") or {}
    assert (HEAD_LIMITED in extensions) is marked
    assert STREAM_CONNECTION in extensions  # a stream request carries both
    protocol.connection_lost(None)


async def test_a_head_pipelined_in_the_read_that_ends_a_body_is_not_marked_bounded() -> None:
    """Bytes parsed as a body are not counted, so a head that starts among them is left to the
    request middleware's own 431 check; the next head read on its own is counted and marked."""
    scopes: list[dict[str, Any]] = []

    async def recording(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await fixed_answer(scope, receive, send)

    protocol, _ = await connected(recording)
    protocol.data_received(b"POST /first HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n")
    await settled()
    protocol.data_received(b"hello" + b"GET /second HTTP/1.1\r\nHost: t\r\n\r\n")
    await settled()
    protocol.data_received(b"GET /third HTTP/1.1\r\nHost: t\r\n\r\n")
    await settled()
    marked = [HEAD_LIMITED in (scope.get("extensions") or {}) for scope in scopes]
    assert [scope["path"] for scope in scopes] == ["/first", "/second", "/third"]
    assert marked == [True, False, True]
    protocol.connection_lost(None)


async def test_an_answer_given_before_the_body_is_not_followed_by_a_408(
    short_head_timeout: None,
) -> None:
    async def early_401(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        headers = [(b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    protocol, transport = await connected(early_401)
    protocol.data_received(b'POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{"a":')
    await asyncio.sleep(HEAD_TIMEOUT_S + 2 * LATE_S)  # the client says nothing more
    assert transport.closed
    statuses = [write.split(b"\r\n")[0] for write in transport.writes]
    assert statuses == [b"HTTP/1.1 401 Unauthorized"]  # closed quietly, no second answer
    protocol.connection_lost(None)


async def test_when_full_an_idle_connection_is_evicted_not_one_answering_a_pipelined_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection whose second, pipelined request is still being answered is not waiting for
    a head: a newcomer in a full process makes room by closing the idle one instead."""
    monkeypatch.setattr(GuardedHttpToolsProtocol, "_waiting", {})
    monkeypatch.setattr(
        GuardedHttpToolsProtocol, "limits", ConnectionLimits(max_connections=2, reserve=0)
    )
    slow_may_answer = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope.get("path") == "/slow":
            await slow_may_answer.wait()
        await fixed_answer(scope, receive, send)

    state = ServerState()
    config = Config(app=app, lifespan="off", log_config=None, ws="none")

    def connect() -> tuple[GuardedHttpToolsProtocol, RecordingTransport]:
        protocol = GuardedHttpToolsProtocol(
            config=config, server_state=state, app_state={}, _loop=asyncio.get_running_loop()
        )
        transport = RecordingTransport()
        protocol.connection_made(transport)
        return protocol, transport

    busy, busy_transport = connect()
    busy.data_received(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
    await settled()
    assert len(busy_transport.writes) == 1  # /a answered; /slow is being answered
    idle, idle_transport = connect()
    newcomer, newcomer_transport = connect()  # the process is full: someone makes room
    assert idle_transport.closed
    assert not busy_transport.closed
    assert not newcomer_transport.closed
    slow_may_answer.set()
    await settled()
    assert len(busy_transport.writes) == 2
    assert busy_transport.writes[1].endswith(b'{"ok":true}')
    for protocol in (busy, idle, newcomer):
        protocol.connection_lost(None)


async def held_answer(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """The fixed answer, marked as the request middleware marks a throttled one (1 s hold)."""
    scope[HOLD_READING_S] = 1
    await fixed_answer(scope, receive, send)


@pytest.fixture
def head_timeout_of_half_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = ConnectionLimits(max_connections=100, reserve=10, head_timeout_s=0.5)
    monkeypatch.setattr(GuardedHttpToolsProtocol, "limits", limits)


async def test_what_a_held_connection_sends_is_answered_when_its_hold_ends(
    head_timeout_of_half_a_second: None,
) -> None:
    protocol, transport = await connected(held_answer)
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
    await settled()
    loop = asyncio.get_running_loop()
    answered_at = loop.time()
    protocol.data_received(b"POST /y HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
    await asyncio.sleep(answered_at + 0.25 - LATE_S - loop.time())
    assert len(transport.writes) == 1  # kept, not parsed, during the hold (a quarter second)
    await asyncio.sleep(answered_at + 0.25 + 2 * LATE_S - loop.time())
    assert len(transport.writes) == 2
    assert transport.writes[1].endswith(b'{"ok":true}')
    assert not transport.closed
    protocol.connection_lost(None)


async def test_a_held_connection_that_sends_too_much_is_closed(
    head_timeout_of_half_a_second: None,
) -> None:
    protocol, transport = await connected_with_eof(held_answer)
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
    await settled()
    protocol.data_received(b"x" * HELD_MAX_BYTES)
    assert len(transport.writes) == 1
    protocol.data_received(b"x")
    assert transport.writes[1:] == [b"<EOF>"]  # the end (the close follows a second later)
    await asyncio.sleep(0.3)  # the hold's end finds nothing left to parse
    assert len(transport.writes) == 2
    protocol.connection_lost(None)


async def test_a_refusal_behind_a_live_stream_closes_the_connection_without_writing_into_it() -> (
    None
):
    """A head over the limit pipelined behind a stream: the stream's chunked body must not get a
    431 in the middle of it (and a write-EOF the stream's next frame would fail on); the
    connection is closed and the stream is told its client is gone."""
    stream_may_end = asyncio.Event()

    async def stream(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope.get("path") != "/m/metrics/stream":
            await fixed_answer(scope, receive, send)
            return
        assert STREAM_CONNECTION in scope["extensions"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await stream_may_end.wait()

    protocol, transport = await connected_with_eof(stream)
    protocol.data_received(b"GET /m/metrics/stream HTTP/1.1\r\nHost: t\r\n\r\n")
    await settled()
    streamed = list(transport.writes)
    protocol.data_received(
        b"GET /health HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nX: "
        + b"a" * (3 * MAX_HEADER_BYTES)
    )
    await settled()
    assert transport.closed
    assert transport.writes == streamed  # nothing after the stream's own bytes
    protocol.connection_lost(None)
    stream_may_end.set()
    await settled()


class EofRecordingTransport(RecordingTransport):
    """Also ends its write side, after which a write raises, as uvloop's does."""

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.writes.append(b"<EOF>")

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.writes[-1:] == [b"<EOF>"]:
            raise RuntimeError("Cannot call write() after write_eof()")
        super().write(data)


async def connected_with_eof(app: Any) -> tuple[GuardedHttpToolsProtocol, EofRecordingTransport]:
    return await connected_to(app, EofRecordingTransport())


async def test_trailers_are_dropped_and_an_endless_one_ends_the_connection() -> None:
    scopes: list[dict[str, Any]] = []

    async def recording(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        scopes.append(scope)
        await fixed_answer(scope, receive, send)

    protocol, transport = await connected_with_eof(recording)
    protocol.data_received(
        b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\nX-Api-Key: smuggled\r\n\r\n"
    )
    await settled()
    assert [name for name, _ in scopes[0]["headers"]] == [b"host", b"transfer-encoding"]
    assert len(transport.writes) == 1
    protocol.data_received(b"GET /y HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    protocol.data_received(b"0\r\nX: ")
    await settled()
    for _ in range(20):  # 1.25 MiB of one trailer value, far past what any request may send
        protocol.data_received(b"a" * 65536)
    assert transport.writes[-2].startswith(b"HTTP/1.1 413 ")  # then the end of what it is sent
    assert transport.writes[-1] == b"<EOF>"
    protocol.connection_lost(None)


async def test_a_body_in_more_pieces_than_any_client_sends_is_refused_413() -> None:
    protocol, transport = await connected_with_eof(fixed_answer)
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(MAX_BODY_PIECES // 8192 + 1):
        protocol.data_received(b"1\r\na\r\n" * 8192)
        await settled()  # the app takes what has come, as it would between reads
    assert transport.writes[0].startswith(b"HTTP/1.1 413 ")
    assert b"application/problem+json" in transport.writes[0]
    protocol.connection_lost(None)


async def test_a_body_still_coming_after_its_answer_is_read_only_up_to_a_bound() -> None:
    async def answers_at_once(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": b"no"})

    protocol, transport = await connected_with_eof(answers_at_once)
    protocol.data_received(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000\r\n\r\n")
    await settled()
    assert transport.writes[0].startswith(b"HTTP/1.1 401 ")
    sent = 0
    while transport.writes[-1] != b"<EOF>" and sent < 1_000_000:
        protocol.data_received(b"x" * 16384)
        sent += 16384
    assert transport.writes[-1] == b"<EOF>"  # the end, after the answer (closed a second later)
    assert sent <= 64 * 1024 + 16384
    protocol.connection_lost(None)


async def test_pipelined_requests_past_the_head_limit_in_one_read_are_all_answered() -> None:
    protocol, transport = await connected(fixed_answer)
    one = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
    protocol.data_received(one * (2 * MAX_HEADER_BYTES // len(one)))
    for _ in range(50):
        await settled()
    answers = b"".join(transport.writes).count(b"HTTP/1.1 200 OK")
    assert answers == 2 * MAX_HEADER_BYTES // len(one)
    assert b"431" not in b"".join(transport.writes)
    assert not transport.closed
    protocol.connection_lost(None)


async def test_bytes_that_are_not_http_get_a_problem_400_after_the_answer_in_progress() -> None:
    """A valid request, then garbage in the same read: the request keeps its answer, then the
    garbage gets the service's problem+json 400 (not uvicorn's plain text) and the end."""
    protocol, transport = await connected_with_eof(fixed_answer)
    protocol.data_received(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\nGET /\x01 HTTP/1.1\r\n\r\n")
    for _ in range(5):
        await settled()
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    refusal = transport.writes[1]
    assert refusal.startswith(b"HTTP/1.1 400 ")
    assert b"content-type: application/problem+json" in refusal
    assert b"x-request-id: " in refusal
    assert b"x-content-type-options: nosniff" in refusal
    assert b'"type":"urn:fanfinity:problem:malformed-http"' in refusal
    assert transport.writes[2] == b"<EOF>"
    protocol.connection_lost(None)


def test_uvicorn_logs_no_line_per_malformed_request(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(GuardedHttpToolsProtocol, "limits", GuardedHttpToolsProtocol.limits)
    configure(Settings(api_keys=""))
    with caplog.at_level(logging.WARNING, logger="uvicorn.error"):
        logging.getLogger("uvicorn.error").warning("Invalid HTTP request received.")
        logging.getLogger("uvicorn.error").warning("Something else worth a line.")
    assert [record.getMessage() for record in caplog.records] == ["Something else worth a line."]


async def test_an_upgrade_request_with_a_body_is_told_why_and_one_without_is_answered() -> None:
    """The parser gives nothing after an upgrade head, so a POST asking for h2c (as
    `curl --http2` does over http://) would reach the app with an empty body: it gets a 400 that
    says what to do instead. A bodyless upgrade request is answered as the plain request it is."""
    protocol, transport = await connected_with_eof(fixed_answer)
    protocol.data_received(
        b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    await settled()
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    protocol.connection_lost(None)

    protocol, transport = await connected_with_eof(fixed_answer)
    protocol.data_received(
        b"POST /api/events HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )
    await settled()
    assert transport.writes[0].startswith(b"HTTP/1.1 400 ")
    assert b'"type":"urn:fanfinity:problem:upgrade-not-supported"' in transport.writes[0]
    assert b"--http1.1" in transport.writes[0]
    protocol.connection_lost(None)


def statuses(transport: RecordingTransport) -> list[bytes]:
    return [write.split(b" ", 2)[1] for write in transport.writes if write.startswith(b"HTTP/1.1")]


async def test_garbage_past_the_head_limit_is_refused_once() -> None:
    protocol, transport = await connected_with_eof(fixed_answer)
    protocol.data_received(b"\x00" * (MAX_HEADER_BYTES + 4000))
    await settled()
    assert statuses(transport) == [b"400"]
    assert transport.writes[-1] == b"<EOF>"
    protocol.connection_lost(None)


async def test_no_request_after_a_refusal_in_the_same_read_is_started() -> None:
    paths: list[str] = []

    async def answers_before_the_body(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        paths.append(scope["path"])
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 404, "headers": headers})
        await send({"type": "http.response.body", "body": b"no"})

    protocol, transport = await connected_with_eof(answers_before_the_body)
    protocol.data_received(b"GET /first HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    await settled()
    protocol.data_received(
        b"1\r\na\r\n" * (MAX_BODY_PIECES + 1) + b"0\r\n\r\nGET /second HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    for _ in range(3):
        await settled()
    assert paths == ["/first"]
    assert statuses(transport) == [b"404"]
    assert transport.writes[-1] == b"<EOF>"
    protocol.connection_lost(None)


async def test_a_framing_error_in_the_body_being_read_is_400_at_once() -> None:
    protocol, transport = await connected_with_eof(fixed_answer)
    protocol.data_received(
        b'POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\nZZ\r\n'
    )
    await settled()
    assert statuses(transport) == [b"400"]
    protocol.connection_lost(None)


async def test_a_refusal_behind_a_request_being_answered_waits_for_that_answer() -> None:
    """An oversized head (or garbage) right behind a request whose body is in: that request
    keeps its answer, then the refusal follows."""
    may_answer = asyncio.Event()

    async def slow(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await may_answer.wait()
        await fixed_answer(scope, receive, send)

    for behind in (
        b"GET / HTTP/1.1\r\nX: " + b"a" * (3 * MAX_HEADER_BYTES),
        b"\x01 / HTTP/1.1\r\n",
    ):
        may_answer.clear()
        protocol, transport = await connected_with_eof(slow)
        protocol.data_received(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}")
        await settled()
        protocol.data_received(behind)
        await settled()
        assert transport.writes == []
        may_answer.set()
        for _ in range(3):
            await settled()
        assert statuses(transport) == [b"200", b"431" if b"X:" in behind else b"400"]
        assert transport.writes[-1] == b"<EOF>"
        protocol.connection_lost(None)


async def test_a_pipelining_client_is_held_too(head_timeout_of_half_a_second: None) -> None:
    """Requests queued behind a throttled answer wait out the hold before they start: pipelining
    does not get around it."""
    protocol, transport = await connected(held_answer)
    loop = asyncio.get_running_loop()
    started = loop.time()
    request = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
    protocol.data_received(request * 3)
    await asyncio.sleep(0.25 - LATE_S)
    assert len(transport.writes) == 1
    await asyncio.sleep(started + 0.5 - LATE_S - loop.time())
    assert len(transport.writes) == 2
    await asyncio.sleep(started + 0.5 + 2 * LATE_S - loop.time())
    assert len(transport.writes) == 3
    protocol.connection_lost(None)
