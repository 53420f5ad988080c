"""Sampling of repetitive log lines: the first few per key and window, then a count.

A sweep of random match ids answers thousands of 404s a second; one line each would flood the
log (50,000 reads wrote ~122k lines before this). Every answer is still counted in
`fanfinity_requests_total`; the log keeps the first lines of each (status, route) per window and
then says how many it left out.
"""

from __future__ import annotations

import time
from collections.abc import Hashable

WINDOW_S = 10.0
LINES_PER_WINDOW = 20
MAX_KEYS = 1_000  # keys are (status, route template): bounded by the routes, but be safe


class LogSampler:
    """`admit(key)` returns None to drop the line, else how many lines of that key were dropped
    since the last one admitted (0 most of the time)."""

    def __init__(self, lines_per_window: int = LINES_PER_WINDOW, window_s: float = WINDOW_S):
        self._lines = lines_per_window
        self._window_s = window_s
        self._windows: dict[Hashable, list[float | int]] = {}  # key -> [start, admitted, dropped]

    def admit(self, key: Hashable, now: float | None = None) -> int | None:
        moment = time.monotonic() if now is None else now
        window = self._windows.get(key)
        if window is None or moment - window[0] >= self._window_s:
            dropped = int(window[2]) if window is not None else 0
            if window is None and len(self._windows) >= MAX_KEYS:
                self._windows.clear()
            self._windows[key] = [moment, 1, 0]
            return dropped
        if window[1] < self._lines:
            window[1] += 1
            return 0
        window[2] += 1
        return None
