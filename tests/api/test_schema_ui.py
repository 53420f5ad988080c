"""The API documentation works without internet: every byte of the Swagger page comes from us.

Litestar's default Swagger page pulls its script, CSS and favicon from a CDN, which left a blank
page offline. Here the page may reference no other host, everything it references must answer
200 from this service, and unknown /schema/* pages answer like every other unknown path.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

PROBLEM_JSON = "application/problem+json"
EXPECTED_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


class _References(HTMLParser):
    """Every URL the page makes a browser load: src= and href= attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


async def page_references(client: AsyncTestClient[Litestar], path: str) -> list[str]:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    parser = _References()
    parser.feed(response.text)
    return parser.urls


@pytest.mark.parametrize("path", ["/schema/swagger", "/schema"])
async def test_the_swagger_page_references_no_other_host(
    client: AsyncTestClient[Litestar], path: str
) -> None:
    urls = await page_references(client, path)
    assert len(urls) >= 3  # script, preset, stylesheet (and the favicon)
    assert [url for url in urls if urlsplit(url).netloc or urlsplit(url).scheme] == []
    page = (await client.get(path)).text
    assert "cdn." not in page
    assert "jsdelivr" not in page


async def test_every_asset_the_swagger_page_references_answers_200(
    client: AsyncTestClient[Litestar],
) -> None:
    for url in await page_references(client, "/schema/swagger"):
        response = await client.get(url)
        assert response.status_code == 200, url
        suffix = url[url.rfind(".") :]
        assert response.headers["content-type"].startswith(EXPECTED_TYPES[suffix]), url
        assert len(response.content) > 0, url
        if suffix == ".css":  # a stylesheet must not pull fonts or images from elsewhere either
            assert not re.search(r"url\(\s*['\"]?(https?:)?//", response.text), url


async def test_the_swagger_script_is_a_swagger_ui_5_build(
    client: AsyncTestClient[Litestar],
) -> None:
    """Our schema is OpenAPI 3.1, which Swagger UI renders from version 5 on."""
    (script,) = [url for url in await page_references(client, "/schema/swagger") if "bundle" in url]
    body = (await client.get(script)).text
    assert "SwaggerUIBundle" in body
    assert re.search(r"/assets/5\.\d+\.\d+/", script)


@pytest.mark.parametrize(
    "path",
    ["/schema/redoc", "/schema/elements", "/schema/not-a-page", "/schema/openapi.yaml"],
)
async def test_an_unknown_schema_page_is_a_problem_json_404(
    client: AsyncTestClient[Litestar], path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body = response.json()
    assert body["status"] == 404
    assert body["instance"] == path


@pytest.mark.parametrize(
    "path",
    [
        "/schema/assets/5.31.0/index.html",  # in the wheel, but not part of the page
        "/schema/assets/0.0.1/swagger-ui.css",  # another version
        "/schema/assets/5.31.0/..%2F__init__.py",
    ],
)
async def test_only_the_pages_own_assets_are_served(
    client: AsyncTestClient[Litestar], path: str
) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith(PROBLEM_JSON)


async def test_the_assets_may_be_cached_for_good(client: AsyncTestClient[Litestar]) -> None:
    (css,) = [
        url for url in await page_references(client, "/schema/swagger") if url.endswith(".css")
    ]
    response = await client.get(css)
    assert "immutable" in response.headers["cache-control"]


async def test_the_openapi_document_is_still_served(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    assert response.json()["openapi"].startswith("3.1")
