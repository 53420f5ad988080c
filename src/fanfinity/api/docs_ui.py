"""Swagger UI served entirely by the service: no CDN, so `/schema/swagger` works offline.

Litestar's Swagger page loads its script, CSS and favicon from jsDelivr by default: without
internet (a stadium network, an air-gapped cluster) it was a blank page. The assets here come from
the `swagger-ui-bundle-v2` wheel (Apache-2.0, Swagger UI's own dist files, pinned in uv.lock) and
are served under a versioned path, so browsers may cache them for good. Only Swagger UI is
offered: any other `/schema/*` page (`/schema/redoc`...) is a problem+json 404 like every other
unknown path, not Litestar's HTML 404 page.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from litestar import Response, Router, get
from litestar.connection import ASGIConnection
from litestar.exceptions import NotFoundException
from litestar.handlers import BaseRouteHandler
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.params import FromPath

SCHEMA_PATH = "/schema"
# Litestar's catch-all for /schema/* pages no render plugin serves (it answers an HTML 404).
_UNKNOWN_SCHEMA_PAGE = "/{path:str}"


def _swagger_ui_dist() -> Path:
    """The `swagger-ui-<version>` folder the wheel ships (exactly one)."""
    vendor = Path(str(files("swagger_ui_bundle") / "vendor"))
    (dist,) = (entry for entry in vendor.iterdir() if entry.name.startswith("swagger-ui-"))
    return dist


SWAGGER_UI_DIST = _swagger_ui_dist()
SWAGGER_UI_VERSION = SWAGGER_UI_DIST.name.removeprefix("swagger-ui-")
ASSETS_PATH = f"{SCHEMA_PATH}/assets/{SWAGGER_UI_VERSION}"
_MEDIA_TYPES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
# Read once at import (about 1.9 MB): no file I/O on the event loop when a page loads.
_ASSETS = {name: (SWAGGER_UI_DIST / name).read_bytes() for name in _MEDIA_TYPES}
_IMMUTABLE = "public, max-age=31536000, immutable"  # the version is in the path


@get("/assets/{version:str}/{name:str}", include_in_schema=False, sync_to_thread=False)
def swagger_ui_asset(version: FromPath[str], name: FromPath[str]) -> Response[bytes]:
    """One of the few Swagger UI files the page uses; anything else is a 404."""
    body = _ASSETS.get(name)
    if version != SWAGGER_UI_VERSION or body is None:
        raise NotFoundException(f"no Swagger UI asset {version}/{name}")
    return Response(body, media_type=_MEDIA_TYPES[name], headers={"Cache-Control": _IMMUTABLE})


def _unknown_schema_page_is_not_found(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Guard: Litestar's catch-all answers HTML; raise instead, so problem+json answers."""
    if _UNKNOWN_SCHEMA_PAGE in handler.paths:
        raise NotFoundException(f"no documentation page at {connection.scope['path']}")


def schema_router() -> Router:
    """The router OpenAPIConfig fills with the schema and Swagger routes (one per app)."""
    return Router(
        SCHEMA_PATH,
        route_handlers=[swagger_ui_asset],
        guards=[_unknown_schema_page_is_not_found],
        include_in_schema=False,
    )


def swagger_ui() -> SwaggerRenderPlugin:
    """Swagger UI at /schema/swagger (and /schema), every asset from this service."""
    return SwaggerRenderPlugin(
        js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>",
    )
