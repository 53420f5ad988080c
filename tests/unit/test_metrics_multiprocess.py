"""With several uvicorn workers, /metrics must add up the workers' counters.

Each worker is a process; prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by
the CLI before any worker starts) writes their values to files that `metrics.exposition` sums.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

WORKER = """
from fanfinity import metrics
metrics.EVENTS_PROCESSED.inc({count})
metrics.events_ingested("goal").inc({count})
metrics.observe_request("POST", "/api/events", 202, 0.004)
"""
SCRAPE = """
from fanfinity import metrics
body, content_type = metrics.exposition()
print(content_type)
print(body.decode())
"""


def run_python(code: str, multiproc_dir: Path) -> str:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
    completed = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return completed.stdout


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exposed:\n{text}")


def test_counters_of_two_workers_are_summed(tmp_path: Path) -> None:
    run_python(WORKER.format(count=3), tmp_path)
    run_python(WORKER.format(count=4), tmp_path)
    text = run_python(SCRAPE, tmp_path)
    assert sample(text, "fanfinity_events_processed_total") == 7
    assert sample(text, 'fanfinity_events_ingested_total{event_type="goal"}') == 7
    assert (
        sample(
            text,
            'fanfinity_requests_total{method="POST",path="/api/events",status_code="202"}',
        )
        == 2
    )
