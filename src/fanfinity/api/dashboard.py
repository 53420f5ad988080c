"""The demonstration dashboard: one static page and its script, served by the service itself.

No build step and no CDN. The page uses only the public API (the match list and the SSE stream),
so it doubles as a reference client for frontend teams.
"""

from __future__ import annotations

from pathlib import Path

from litestar import MediaType, Response, get
from litestar.static_files import create_static_files_router

STATIC_DIR = Path(__file__).parent / "static"
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


PAGE = (STATIC_DIR / "dashboard.html").read_bytes()  # read once: no file I/O on the event loop


@get(["/", "/dashboard"], include_in_schema=False, sync_to_thread=False)
def dashboard_page() -> Response[bytes]:
    return Response(
        PAGE,
        media_type=MediaType.HTML,
        headers={"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache"},
    )


static_files = create_static_files_router(
    path="/static", directories=[STATIC_DIR], include_in_schema=False, send_as_attachment=False
)
