"""Swagger UI renders the API in a real headless Chromium that can reach no host but this one.

Needs Debian's chromium and chromium-driver (`make browser`) and skips with the reason otherwise.
Every host name but the loopback address resolves to nothing, so a page that still needed a CDN
would stay blank and the test would fail.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from fanfinity.api.app import create_app
from fanfinity.config import Settings
from tests.conftest import free_port

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)
CHROMEDRIVER = shutil.which("chromedriver") or shutil.which(
    "chromedriver", path=os.environ.get("CHROMEWEBDRIVER")
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no headless browser: apt-get install chromium chromium-driver",
)


@pytest.fixture
def live_server(settings: Settings) -> Iterator[str]:
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=free_port(), log_config=None)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def offline_browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


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
