"""The live-stream response: SSE frames written by the hub straight to the connection where our
uvicorn protocol offers it (`api.protocol.StreamConnection`), through ASGI everywhere else.

The head always goes through ASGI, so the request context adds its headers, uvicorn's cycle
records that the response started chunked, and the test client sees an ordinary response. On the
direct path the body's chunks are then written by the hub (`pipeline.streams`), and the end of the
body goes through ASGI again (uvicorn writes the last chunk and keeps or closes the connection).
Without a connection (Litestar's test client, HEAD, another server) the same subscriber is drained
by Litestar's streaming response instead.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from litestar.response import Stream
from litestar.response.streaming import ASGIStreamingResponse

from fanfinity.api.protocol import stream_connection
from fanfinity.pipeline.streams import Subscriber

if TYPE_CHECKING:
    from litestar.background_tasks import BackgroundTask, BackgroundTasks
    from litestar.connection import Request
    from litestar.datastructures.cookie import Cookie
    from litestar.enums import MediaType
    from litestar.response.base import ASGIResponse
    from litestar.types import Receive, Scope, Send, TypeEncodersMap

EVENT_STREAM = "text/event-stream"


class LiveStream(Stream):
    """What the stream handler returns: the subscriber its slot was reserved for."""

    __slots__ = ("subscriber",)

    def __init__(self, subscriber: Subscriber, headers: dict[str, str]) -> None:
        super().__init__(subscriber.frames, media_type=EVENT_STREAM, headers=headers)
        self.subscriber = subscriber

    def to_asgi_response(
        self,
        app: Any,
        request: Request[Any, Any, Any],
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: Iterable[Cookie] | None = None,
        encoded_headers: Iterable[tuple[bytes, bytes]] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: MediaType | str | None = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
    ) -> ASGIResponse:
        return LiveStreamResponse(
            subscriber=self.subscriber,
            iterator=self.subscriber.frames(),
            background=self.background or background,
            content_length=0,
            cookies=self.cookies if cookies is None else itertools.chain(self.cookies, cookies),
            encoded_headers=encoded_headers,
            encoding=self.encoding,
            headers={**headers, **self.headers} if headers is not None else self.headers,
            is_head_response=is_head_response,
            media_type=EVENT_STREAM,
            status_code=self.status_code or status_code,
        )


class LiveStreamResponse(ASGIStreamingResponse):
    """Direct when the connection allows it, Litestar's streaming response otherwise; the
    subscriber's slot is given back however the stream ends."""

    __slots__ = ("subscriber",)

    def __init__(self, *, subscriber: Subscriber, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.subscriber = subscriber

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        connection = stream_connection(scope)
        try:
            if connection is None:
                await super().__call__(scope, receive, send)
                return
            await self.start_response(send)
            if not connection.writes_chunks():  # HEAD (no body framing), or already gone
                await self.send_body(send, receive)
                return
            connection.on_lost = self.subscriber.connection_lost
            if await self.subscriber.stream_to(connection):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if connection is not None:
                connection.release()
            self.subscriber.close()
