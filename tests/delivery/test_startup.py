"""`fanfinity serve` as a real process: how it starts, how it fails to start, and what it logs.

An orchestrator restarts a service that exits non-zero and leaves one that exited 0 for good, so a
failed start must never exit 0, whatever FANFINITY_WORKERS says. "ready" must mean the socket is
bound: uvicorn runs the app's start-up before it binds, so with the port taken a "ready" line
logged from the app's start-up would be a lie.
"""

from __future__ import annotations

import re
import signal
import socket
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.reliability.service import start_service

EXIT_DEADLINE_S = 60.0
STARTUP_FAILURE = 3
READY_LINE = re.compile(r"fanfinity \S+ \(api\) ready on http://127\.0\.0\.1:(\d+) \(pid \d+\)")


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_start_without_mongodb_exits_3_and_leaves_no_metrics_directory(
    tmp_path: Path, workers: str
) -> None:
    """MongoDB unreachable (a closed loopback port): the start fails fast, exit 3, clean /tmp."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    service = start_service(
        tmp_path / "serve.log",
        FANFINITY_WORKERS=workers,
        FANFINITY_MONGODB_URL=f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=300",
        FANFINITY_STORE_TIMEOUT_S="0.3",
        TMPDIR=str(scratch),  # where the multi-worker metrics directory is made
    )
    try:
        code = await service.wait_exit(EXIT_DEADLINE_S)
        log = service.log()
    finally:
        service.kill()
    assert code == STARTUP_FAILURE, f"exit {code}; log:\n{service.log_tail()}"
    assert not READY_LINE.search(log)
    assert sorted(p.name for p in scratch.iterdir()) == []
    if workers == "2":
        assert "could not start; exiting with status 3" in log


async def test_with_the_port_taken_the_log_shows_the_bind_error_and_no_ready(
    tmp_path: Path,
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        service = start_service(tmp_path / "serve.log", port=port)
        try:
            code = await service.wait_exit(EXIT_DEADLINE_S)
            log = service.log()
        finally:
            service.kill()
    assert code == STARTUP_FAILURE, f"exit {code}; log:\n{service.log_tail()}"
    assert "address already in use" in log
    assert " ready " not in log, log


async def test_ready_is_logged_after_the_bind_and_log_lines_carry_no_trailing_dict(
    tmp_path: Path,
) -> None:
    service = start_service(tmp_path / "serve.log")
    try:
        await service.wait_ready()
        async with httpx.AsyncClient(base_url=service.base_url, timeout=5.0) as client:
            missing = await client.get("/api/matches/no-such-match/metrics")
        assert missing.status_code == 404
        service.send(signal.SIGTERM)
        code = await service.wait_exit(EXIT_DEADLINE_S)
    finally:
        service.kill()
    assert code == 0
    lines = service.log().splitlines()
    bound = next(i for i, line in enumerate(lines) if "Uvicorn running on" in line)
    ready = [i for i, line in enumerate(lines) if READY_LINE.search(line)]
    assert len(ready) == 1, lines
    assert ready[0] > bound
    match = READY_LINE.search(lines[ready[0]])
    assert match is not None
    assert int(match.group(1)) == service.port
    assert not [line for line in lines if line.rstrip().endswith(("{}", "}"))], lines
    request_line = next(line for line in lines if "GET /api/matches/no-such-match/metrics" in line)
    assert request_line.endswith("route=/api/matches/{match_id}/metrics")
    assert "status=" not in request_line  # already in the message: 404
    assert request_line.count("request_id=") == 1
