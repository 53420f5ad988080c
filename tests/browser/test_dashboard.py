"""The dashboard page in a real headless Chromium: numbers on the page follow posted events.

Needs Debian's chromium and chromium-driver (`make test` installs them where it can) and skips
with the reason otherwise. FANFINITY_UPDATE_SCREENSHOTS=1 refreshes docs/images/dashboard.png.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from fanfinity.api.app import create_app
from fanfinity.config import Settings
from tests.conftest import PRODUCER_KEY, free_port, with_settings

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)
CHROMEDRIVER = shutil.which("chromedriver") or shutil.which(
    "chromedriver",
    path=os.environ.get("CHROMEWEBDRIVER"),  # GitHub's hosted runners
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no headless browser: apt-get install chromium chromium-driver",
)
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "dashboard.png"
MATCH = "alhilal-vs-alnassr-demo"


@pytest.fixture
def live_server(settings: Settings) -> Iterator[str]:
    """The service on a real socket, in a thread with its own event loop."""
    app = create_app(with_settings(settings, stream_interval_ms=200.0, metrics_cache_ms=100.0))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def post(base_url: str, event_type: str, minute: int, team: str = "al-hilal") -> None:
    response = httpx.post(
        f"{base_url}/api/events",
        headers={"X-API-Key": PRODUCER_KEY},
        json={
            "eventId": str(uuid.uuid4()),
            "matchId": MATCH,
            "eventType": event_type,
            "timestamp": f"2025-05-10T18:{minute:02d}:00Z",
            "teamId": team,
        },
    )
    assert response.status_code == 202, response.text


def shown(browser: Any, element_id: str) -> str:
    return str(browser.find_element(By.ID, element_id).text)


def test_page_follows_a_match_live(live_server: str, browser: Any, tmp_path: Path) -> None:
    post(live_server, "match_start", 0)
    for minute, kind, team in [
        (3, "corner", "al-nassr"),
        (7, "goal", "al-hilal"),
        (7, "yellow_card", "al-nassr"),
        (12, "foul", "al-hilal"),
    ]:
        post(live_server, kind, minute, team)
    browser.get(live_server + "/")
    wait = WebDriverWait(browser, 10)
    wait.until(lambda b: shown(b, "total-events") == "5")
    assert shown(browser, "goals") == "1"
    assert shown(browser, "status") == "live"
    assert MATCH in shown(browser, "match-list")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#timeline rect")) == 4

    post(live_server, "goal", 15, "al-nassr")
    post(live_server, "penalty_goal", 16, "al-hilal")
    wait.until(lambda b: shown(b, "total-events") == "7")
    assert shown(browser, "goals") == "3"
    assert shown(browser, "p50") != "-"
    by_type = {
        row.get_attribute("data-name")
        for row in browser.find_elements(By.CSS_SELECTOR, "#by-type tr")
    }
    assert {"goal", "penalty_goal", "corner", "foul"} <= by_type

    post(live_server, "match_end", 20)
    wait.until(lambda b: shown(b, "status") == "ended")
    wait.until(lambda b: "full time" in shown(b, "connection"))
    target = SCREENSHOT if os.environ.get("FANFINITY_UPDATE_SCREENSHOTS") else tmp_path / "d.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(target))
