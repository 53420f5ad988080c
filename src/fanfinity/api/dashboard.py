"""The demonstration dashboard: one static page and its script, served by the service itself.

No build step and no CDN. The page uses only the public API (the match list and the SSE stream),
so it doubles as a reference client for frontend teams.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from litestar import MediaType, Response, get
from litestar.file_system import BaseLocalFileSystem
from litestar.static_files import create_static_files_router
from litestar.types.composite_types import PathType
from litestar.types.file_types import FileInfo

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


# What stat says of a path that names no file, beyond FileNotFoundError: a name or path too long,
# a file used as a directory (`dashboard.js/x`), a symlink loop.
_NO_SUCH_FILE = frozenset({errno.ENAMETOOLONG, errno.ENOTDIR, errno.ELOOP})


class StaticFileSystem(BaseLocalFileSystem):
    """The local file system, where a path no file can have is simply not there: Litestar's
    static files answer FileNotFoundError with a 404, but a NUL byte (ValueError) or a name
    too long (OSError) with a 500."""

    async def info(self, path: PathType, **kwargs: Any) -> FileInfo:
        try:
            return await super().info(path, **kwargs)
        except ValueError:
            raise FileNotFoundError(path) from None
        except OSError as exc:
            if exc.errno in _NO_SUCH_FILE:
                raise FileNotFoundError(path) from None
            raise


static_files = create_static_files_router(
    path="/static",
    directories=[STATIC_DIR],
    file_system=StaticFileSystem(),
    include_in_schema=False,
    send_as_attachment=False,
)
