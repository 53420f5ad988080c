"""The service as a real process on loopback: start it, wait until it is ready, always kill it.

The command is ``python -m fanfinity serve|aggregate`` with this interpreter, not ``uv run``, so a
signal sent to the process reaches the service itself rather than a wrapper. Configuration is the
environment only: every inherited ``FANFINITY_*`` variable is dropped first, so a developer's shell
cannot change what a test runs. The log (stderr and stdout) goes to a file, never to a pipe that
nobody reads (a full pipe would stall the server).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from tests.conftest import free_port

PRODUCER_KEY = "reliability-producer-key-0001"
SECOND_PRODUCER_KEY = "reliability-producer-key-0002"
START_DEADLINE_S = 30.0
POLL_S = 0.05
PROBLEM_JSON = "application/problem+json"
EVENT_TYPES = ("goal", "corner", "foul", "yellow_card", "substitution", "offside", "free_kick")
TEAMS = ("al-hilal", "al-nassr")
# Whole seconds an hour ago: inside the accepted window whatever the clock says when a test runs.
BASE_TIME = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def service_environment(port: int, **settings: str) -> dict[str, str]:
    """This process's environment without FANFINITY_*, plus the service's settings."""
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("FANFINITY_")
    }
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    environment.update(
        {
            "FANFINITY_HOST": "127.0.0.1",
            "FANFINITY_PORT": str(port),
            "FANFINITY_API_KEYS": f"{PRODUCER_KEY},{SECOND_PRODUCER_KEY}",
            "FANFINITY_LOG_LEVEL": "INFO",
            "FANFINITY_METRICS_CACHE_MS": "0",
        }
    )
    environment.update(settings)
    return environment


@dataclass
class ServiceProcess:
    """One running ``fanfinity`` process and where its log goes."""

    command: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]
    log_file: IO[bytes] = field(repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def send(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL and reap (no-op when it has already exited)."""
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self.log_file.close()

    async def wait_exit(self, deadline_s: float) -> int | None:
        """The exit code, or None if the process is still running after `deadline_s`."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(self.process.wait, deadline_s)
        return self.process.poll()

    async def wait_ready(self, deadline_s: float = START_DEADLINE_S) -> None:
        """Poll GET /health/ready until it answers 200; fail early if the process dies."""
        deadline = time.monotonic() + deadline_s
        last: str = "no answer yet"
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2.0) as client:
            while True:
                if self.process.poll() is not None:
                    pytest.fail(
                        f"fanfinity {self.command} exited with {self.process.returncode} before it "
                        f"was ready; log:\n{self.log_tail()}"
                    )
                try:
                    response = await client.get("/health/ready")
                    if response.status_code == 200:
                        return
                    last = f"{response.status_code} {response.text}"
                except httpx.TransportError as exc:
                    last = repr(exc)
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"fanfinity {self.command} was not ready within {deadline_s:g}s "
                        f"(last: {last}); log:\n{self.log_tail()}"
                    )
                await asyncio.sleep(POLL_S)


def start_service(
    log_path: Path, command: str = "serve", port: int | None = None, **settings: str
) -> ServiceProcess:
    """Start ``fanfinity <command>`` on 127.0.0.1 with `settings` as FANFINITY_* variables."""
    port = port or free_port()
    log_file = log_path.open("ab")
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module, fixed arguments
        [sys.executable, "-m", "fanfinity", command],
        env=service_environment(port, **settings),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    return ServiceProcess(command, port, log_path, process, log_file)


@contextlib.asynccontextmanager
async def running_service(
    log_path: Path, command: str = "serve", **settings: str
) -> AsyncIterator[ServiceProcess]:
    """A ready service, killed on the way out whatever happened."""
    service = start_service(log_path, command, **settings)
    try:
        await service.wait_ready()
        yield service
    finally:
        service.kill()


def new_match_id(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def event_body(match_id: str, index: int, event_id: str | None = None) -> dict[str, Any]:
    """A valid event; the same `index` always gives the same payload (for idempotent retries)."""
    return {
        "eventId": event_id or str(uuid.uuid4()),
        "matchId": match_id,
        "eventType": EVENT_TYPES[index % len(EVENT_TYPES)],
        "timestamp": (BASE_TIME + timedelta(seconds=index % 3600)).isoformat(),
        "teamId": TEAMS[index % len(TEAMS)],
        "playerId": f"player-{index % 11 + 1}",
        "metadata": {"sequence": index},
    }


def problem_of(response: httpx.Response) -> dict[str, Any]:
    """The RFC 9457 body of an error response, checked for the fields every client relies on."""
    content_type = response.headers.get("content-type", "")
    assert content_type.startswith(PROBLEM_JSON), (response.status_code, content_type)
    body: dict[str, Any] = response.json()
    assert body["status"] == response.status_code, body
    for member in ("type", "title", "detail"):
        assert isinstance(body.get(member), str), f"problem without a string {member!r}: {body}"
        assert body[member], f"problem with an empty {member!r}: {body}"
    assert "Traceback" not in response.text
    return body


def retry_after_s(response: httpx.Response) -> int:
    """The Retry-After of a 503/429 as whole seconds; fails the test when it is missing."""
    value = response.headers.get("retry-after")
    assert value is not None, f"{response.status_code} without Retry-After: {response.text}"
    assert value.isdigit(), f"Retry-After: {value!r}"
    assert int(value) >= 1, f"Retry-After: {value!r}"
    return int(value)


def acknowledged_in_log(log: str) -> list[int]:
    """Every 'ingest batcher stopped: N events acknowledged by this process' count in a log."""
    marker = "ingest batcher stopped: "
    counts = []
    for line in log.splitlines():
        _, found, rest = line.partition(marker)
        if found and " events acknowledged by this process" in rest:
            counts.append(int(rest.split(" ", 1)[0]))
    return counts


def prometheus_value(text: str, name: str) -> float | None:
    """The value of an unlabelled sample in Prometheus text exposition."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None
