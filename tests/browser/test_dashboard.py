"""The dashboard page in a real headless Chromium: numbers on the page follow posted events.

Needs Debian's chromium and chromium-driver (`make test` installs them where it can) and skips
with the reason otherwise. FANFINITY_UPDATE_SCREENSHOTS=1 refreshes docs/images/dashboard.png.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from fanfinity.api.app import create_app
from fanfinity.config import Settings
from tests.browser.chromium import headless_chromium, needs_chromium, threaded_server
from tests.conftest import PRODUCER_KEY, with_settings

pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = needs_chromium
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "dashboard.png"
MATCH = "alhilal-vs-alnassr-demo"
EN_DASH = "\u2013"  # the scoreline's separator


@pytest.fixture
def live_server(settings: Settings) -> Iterator[str]:
    """The service on a real socket, in a thread with its own event loop."""
    app = create_app(with_settings(settings, stream_interval_ms=200.0, metrics_cache_ms=100.0))
    with threaded_server(app) as base_url:
        yield base_url


@pytest.fixture
def browser() -> Iterator[Any]:
    with headless_chromium(
        "--disable-quic", capabilities={"goog:loggingPrefs": {"browser": "ALL"}}
    ) as driver:
        yield driver


def post(
    base_url: str, event_type: str, at: datetime, team: str = "al-hilal", match: str = MATCH
) -> None:
    response = httpx.post(
        f"{base_url}/api/events",
        headers={"X-API-Key": PRODUCER_KEY},
        json={
            "eventId": str(uuid.uuid4()),
            "matchId": match,
            "eventType": event_type,
            "timestamp": at.isoformat().replace("+00:00", "Z"),
            "teamId": team,
        },
    )
    assert response.status_code == 202, response.text


def listed(base_url: str, match: str) -> None:
    """Wait until `match` is counted and listed (the aggregator counts within a fraction of a
    second; the page reads the list once as it opens)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        items = httpx.get(f"{base_url}/api/matches?limit=50").json()["items"]
        if any(item["matchId"] == match for item in items):
            return
        time.sleep(0.05)
    raise AssertionError(f"{match} was never listed")


def shown(browser: Any, element_id: str) -> str:
    return str(browser.find_element(By.ID, element_id).text)


def sidebar_entry(browser: Any, match: str) -> str:
    button = browser.find_element(By.CSS_SELECTOR, f'#match-list button[data-match-id="{match}"]')
    return str(button.text)


def texts_of(browser: Any, selector: str) -> list[str]:
    """Read in one script, so that a live re-render cannot swap the elements mid-read."""
    script = "return [...document.querySelectorAll(arguments[0])].map((node) => node.textContent)"
    return list(browser.execute_script(script, selector))


def console_errors(browser: Any) -> list[str]:
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def test_deep_link_shows_score_clock_and_a_goal_arriving_live(
    live_server: str, browser: Any, tmp_path: Path
) -> None:
    # Kicked off on a whole minute, 42 to 43 minutes ago: the clock reads the 43rd minute.
    kick_off = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=42)
    post(live_server, "match_start", kick_off)
    for minute, kind, team in [
        (3, "corner", "al-nassr"),
        (7, "goal", "al-hilal"),
        (7, "yellow_card", "al-nassr"),
        (12, "foul", "al-hilal"),
        (20, "own_goal", "al-hilal"),  # al-hilal's player, into his own net: al-nassr's goal
        (31, "corner", "al-hilal"),
    ]:
        post(live_server, kind, kick_off + timedelta(minutes=minute, seconds=10), team)
    # Another match, updated last, is at the top of the list: the deep link must win over it.
    post(live_server, "corner", kick_off, "ittihad", match="ittihad-vs-ahli")
    listed(live_server, "ittihad-vs-ahli")  # counted before the page lists the matches

    browser.get(f"{live_server}/?match={MATCH}")
    wait = WebDriverWait(browser, 10)
    wait.until(lambda b: shown(b, "total-events") == "7")
    assert shown(browser, "match-title") == MATCH
    assert shown(browser, "scoreline") == f"al-hilal 1 {EN_DASH} 1 al-nassr"
    assert shown(browser, "clock") in {"43'", "44'"}
    assert shown(browser, "status") == "live"
    wait.until(lambda b: "7 events" in sidebar_entry(b, MATCH))
    assert "live" in sidebar_entry(browser, MATCH)
    ticks = texts_of(browser, "#timeline text.tick")
    assert {"1'", "10'", "20'", "30'"} <= set(ticks)
    assert texts_of(browser, "#timeline .axis-label") == ["match minute", "events"]
    peaks = shown(browser, "peaks")
    assert "8' · 2 events" in peaks  # the goal and the card 7:10 after kick-off

    post(live_server, "goal", kick_off + timedelta(minutes=42), "al-nassr")
    wait.until(lambda b: shown(b, "scoreline") == f"al-hilal 1 {EN_DASH} 2 al-nassr")
    assert shown(browser, "total-events") == "8"

    browser.find_element(By.CSS_SELECTOR, '#match-list button[data-match-id="ittihad-vs-ahli"]')
    browser.set_window_size(390, 844)  # a phone
    wide = browser.execute_script(
        "return document.documentElement.scrollWidth > window.innerWidth + 1"
    )
    assert not wide, "the page scrolls sideways at phone width"
    browser.set_window_size(1280, 900)

    post(live_server, "match_end", kick_off + timedelta(minutes=43))
    wait.until(lambda b: shown(b, "status") == "ended")
    wait.until(lambda b: shown(b, "clock") == "FT")
    wait.until(lambda b: "full time" in shown(b, "connection"))
    assert console_errors(browser) == []
    target = SCREENSHOT if os.environ.get("FANFINITY_UPDATE_SCREENSHOTS") else tmp_path / "d.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(target))


def test_choosing_a_match_in_the_list_puts_it_in_the_address(
    live_server: str, browser: Any
) -> None:
    kick_off = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    post(live_server, "match_start", kick_off)
    post(live_server, "corner", kick_off, "ittihad", match="ittihad-vs-ahli")
    browser.get(live_server + "/")
    wait = WebDriverWait(browser, 10)
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, f'button[data-match-id="{MATCH}"]'))

    browser.find_element(By.CSS_SELECTOR, f'button[data-match-id="{MATCH}"]').click()

    wait.until(lambda b: shown(b, "match-title") == MATCH)
    assert browser.current_url.endswith(f"/?match={MATCH}")
    wait.until(lambda b: shown(b, "total-events") == "1")
