"""Swagger UI renders the API in a real headless Chromium that can reach no host but this one.

Needs Debian's chromium and chromium-driver (`make browser`) and skips with the reason otherwise.
Every host name but the loopback address resolves to nothing, so a page that still needed a CDN
would stay blank and the test would fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fanfinity.api.app import create_app
from fanfinity.config import Settings
from tests.browser.chromium import headless_chromium, needs_chromium, threaded_server

pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = needs_chromium


@pytest.fixture
def live_server(settings: Settings) -> Iterator[str]:
    with threaded_server(create_app(settings)) as base_url:
        yield base_url


@pytest.fixture
def offline_browser() -> Iterator[Any]:
    """A browser that can resolve only 127.0.0.1: any other host the page names fails."""
    with headless_chromium("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1") as driver:
        yield driver


def test_swagger_ui_shows_every_operation_offline(live_server: str, offline_browser: Any) -> None:
    offline_browser.get(live_server + "/schema/swagger")
    WebDriverWait(offline_browser, 15).until(
        lambda b: b.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
    )
    shown = sorted(
        element.get_attribute("data-path")
        for element in offline_browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
    )
    document = httpx.get(live_server + "/schema/openapi.json").json()
    operations = sorted(
        path
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    )
    assert shown == operations
    assert "/api/events" in shown
    assert not offline_browser.find_elements(By.CSS_SELECTOR, ".errors-wrapper")
    title = offline_browser.find_element(By.CSS_SELECTOR, ".info .title").text
    assert title.startswith("Fanfinity engagement analytics")
