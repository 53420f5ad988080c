"""What the page tests share: Debian's headless Chromium and the app on a real socket.

Tests that use it skip with the reason when Chromium or its driver is missing (`make browser`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from litestar import Litestar

from fanfinity.api.protocol import PROTOCOL
from tests.conftest import free_port

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")

CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)
CHROMEDRIVER = shutil.which("chromedriver") or shutil.which(
    "chromedriver",
    path=os.environ.get("CHROMEWEBDRIVER"),  # GitHub's hosted runners
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no headless browser: apt-get install chromium chromium-driver",
)
HEADLESS_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
)


@contextlib.contextmanager
def threaded_server(app: Litestar) -> Iterator[str]:
    """The app on a real socket, in a thread with its own event loop, with the HTTP protocol
    `fanfinity serve` uses (live streams written straight to the connection); yields its URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, http=PROTOCOL)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def headless_chromium(
    *extra_flags: str, capabilities: dict[str, Any] | None = None
) -> Iterator[Any]:
    """A headless Chromium driven by Debian's chromedriver, quit on the way out."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*HEADLESS_FLAGS, *extra_flags):
        options.add_argument(flag)
    for name, value in (capabilities or {}).items():
        options.set_capability(name, value)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
