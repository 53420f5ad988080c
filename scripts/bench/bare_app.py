"""The baseline for `python -m scripts.bench`: bare Litestar on the same server settings, doing
the least work.

POST decodes the same JSON body and answers 202; GET answers a fixed small JSON document.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar, MediaType, Request, Response, get, post

FIXED = msgspec.json.encode({"matchId": "m-1", "status": "live", "totalEvents": 42})


@post("/api/events", status_code=202)
async def ingest(request: Request[Any, Any, Any]) -> Response[bytes]:
    event = msgspec.json.decode(await request.body())
    return Response(
        msgspec.json.encode({"eventId": event.get("eventId"), "status": "accepted"}),
        status_code=202,
        media_type=MediaType.JSON,
    )


@get("/api/matches/{match_id:str}/metrics")
async def metrics(match_id: str) -> Response[bytes]:
    return Response(FIXED, media_type=MediaType.JSON)


app = Litestar([ingest, metrics])
