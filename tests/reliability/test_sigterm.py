"""Graceful shutdown under load: SIGTERM while 32 producers post, as a rolling deploy does.

One run of the scenario (module fixture) is read by several tests, each naming one promise:
nothing is acknowledged that was not flushed (the batcher's own count in the log equals the 202s
the clients saw), no request gets a 5xx other than 503 + Retry-After, readiness fails at once,
an in-flight request is still answered, and the process exits in time and cleanly.

With the embedded engine the data dies with the process, so the batcher's acknowledged count is
the proof: every 202 was counted there only after its batch was written.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.reliability.service import (
    PRODUCER_KEY,
    SECOND_PRODUCER_KEY,
    ServiceProcess,
    acknowledged_in_log,
    event_body,
    new_match_id,
    prometheus_value,
    start_service,
)

PRODUCERS = 32
GRACE_S = 5.0
EXIT_MARGIN_S = 3.0
ACKS_BEFORE_SIGTERM = 300
DEADLINE_S = 20.0
READINESS_DEADLINE_S = 2.0


@dataclass
class ShutdownRun:
    """Everything the clients and the process showed during one SIGTERM under load."""

    statuses: Counter[int] = field(default_factory=Counter)
    accepted_ids: set[str] = field(default_factory=set, repr=False)
    replayed: int = 0
    refusals_without_retry_after: list[str] = field(default_factory=list)
    bad_answers: list[str] = field(default_factory=list)
    connection_errors: Counter[str] = field(default_factory=Counter)
    producers_refused: int = 0
    acks_at_sigterm: int = 0
    readiness_after_sigterm: str = "not probed"
    readiness_failed_after_s: float | None = None
    in_flight_while_readiness_failed: bool = False
    in_flight_status: int | None = None
    in_flight_event_id: str = ""
    exit_code: int | None = None
    shutdown_s: float = 0.0
    log: str = field(default="", repr=False)


async def producer(
    client: httpx.AsyncClient, match_id: str, number: int, run: ShutdownRun, stop: asyncio.Event
) -> None:
    """Post new events back to back until the server refuses the connection."""
    sequence = 0
    while not stop.is_set():
        body = event_body(match_id, number * 100_000 + sequence)
        sequence += 1
        try:
            response = await client.post("/api/events", json=body)
        except httpx.ConnectError:
            run.producers_refused += 1
            return
        except httpx.TransportError as exc:  # cut mid-request: no answer, nothing promised
            run.connection_errors[type(exc).__name__] += 1
            continue
        run.statuses[response.status_code] += 1
        if response.status_code == 202:
            if response.headers.get("idempotent-replayed") == "true":
                run.replayed += 1
            run.accepted_ids.add(body["eventId"])
        elif response.status_code == 503:
            if not response.headers.get("retry-after", "").isdigit():
                run.refusals_without_retry_after.append(response.text)
        else:
            run.bad_answers.append(f"{response.status_code} {response.text[:300]}")


async def open_in_flight_request(
    service: ServiceProcess, match_id: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes, str]:
    """A POST whose headers and half its body are sent: the server is now handling it."""
    body_fields = event_body(match_id, 999_999)
    body = json.dumps(body_fields).encode()
    head = (
        f"POST /api/events HTTP/1.1\r\nHost: 127.0.0.1:{service.port}\r\n"
        f"Content-Type: application/json\r\nX-API-Key: {SECOND_PRODUCER_KEY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
    half = len(body) // 2
    writer.write(head + body[:half])
    await writer.drain()
    # Wait until the handler is running (it waits for the rest of the body): the request gauge
    # counts it, plus the /metrics request that reads the gauge.
    async with httpx.AsyncClient(base_url=service.base_url, timeout=2.0) as client:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            text = (await client.get("/metrics")).text
            if (prometheus_value(text, "fanfinity_requests_in_progress") or 0) >= 2:
                break
            assert time.monotonic() < deadline, "the half-sent request never reached a handler"
            await asyncio.sleep(0.02)
    return reader, writer, body[half:], body_fields["eventId"]


async def probe_readiness_until_it_fails(service: ServiceProcess, run: ShutdownRun) -> None:
    """Poll /health/ready on fresh connections until it stops answering 200."""
    sent_at = time.monotonic()
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=service.base_url, timeout=1.0, limits=limits) as probe:
        while time.monotonic() - sent_at < READINESS_DEADLINE_S:
            try:
                response = await probe.get("/health/ready")
            except httpx.ConnectError:
                run.readiness_after_sigterm = "connection refused"
                break
            except httpx.TransportError as exc:
                run.readiness_after_sigterm = type(exc).__name__
                break
            if response.status_code != 200:
                run.readiness_after_sigterm = f"{response.status_code} {response.text}"
                break
            run.readiness_after_sigterm = "still 200"
            await asyncio.sleep(0.01)
        else:
            return
    run.readiness_failed_after_s = time.monotonic() - sent_at


async def finish_in_flight_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rest: bytes
) -> int:
    writer.write(rest)
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout=DEADLINE_S)
    await asyncio.wait_for(reader.read(), timeout=DEADLINE_S)  # the server closes after it
    writer.close()
    return int(status_line.split()[1])


async def shutdown_under_load(log_path: Path) -> ShutdownRun:
    run = ShutdownRun()
    match_id = new_match_id("sigterm")
    service = start_service(log_path, FANFINITY_SHUTDOWN_GRACE_S=str(GRACE_S))
    writer: asyncio.StreamWriter | None = None
    try:
        await service.wait_ready()
        reader, writer, rest, run.in_flight_event_id = await open_in_flight_request(
            service, match_id
        )
        stop = asyncio.Event()
        limits = httpx.Limits(max_connections=PRODUCERS, max_keepalive_connections=PRODUCERS)
        async with httpx.AsyncClient(
            base_url=service.base_url,
            headers={"X-API-Key": PRODUCER_KEY},
            limits=limits,
            timeout=DEADLINE_S,
        ) as client:
            producers = [
                asyncio.create_task(producer(client, match_id, number, run, stop))
                for number in range(PRODUCERS)
            ]
            try:
                deadline = time.monotonic() + DEADLINE_S
                while len(run.accepted_ids) < ACKS_BEFORE_SIGTERM:
                    assert time.monotonic() < deadline, f"only {run.statuses} before SIGTERM"
                    assert not any(task.done() for task in producers), run
                    await asyncio.sleep(0.02)
                run.acks_at_sigterm = len(run.accepted_ids)
                service.send(signal.SIGTERM)
                signalled_at = time.monotonic()

                await probe_readiness_until_it_fails(service, run)
                run.in_flight_while_readiness_failed = not (reader.at_eof() or writer.is_closing())
                run.in_flight_status = await finish_in_flight_request(reader, writer, rest)

                _, still_posting = await asyncio.wait(producers, timeout=DEADLINE_S)
                assert not still_posting, "producers kept getting answers after SIGTERM"
            finally:
                stop.set()
                await asyncio.gather(*producers, return_exceptions=True)
        run.exit_code = await service.wait_exit(DEADLINE_S)
        run.shutdown_s = time.monotonic() - signalled_at
    finally:
        if writer is not None:
            writer.close()
        service.kill()
        run.log = service.log()
    return run


@pytest.fixture(scope="module")
def shutdown(tmp_path_factory: pytest.TempPathFactory) -> ShutdownRun:
    log_path = tmp_path_factory.mktemp("sigterm") / "serve.log"
    return asyncio.run(shutdown_under_load(log_path))


def test_every_acknowledged_event_was_flushed_before_the_process_exited(
    shutdown: ShutdownRun,
) -> None:
    acknowledged = len(shutdown.accepted_ids) + (1 if shutdown.in_flight_status == 202 else 0)
    assert shutdown.acks_at_sigterm >= ACKS_BEFORE_SIGTERM
    assert shutdown.replayed == 0, "fresh eventIds were answered as replays"
    assert acknowledged_in_log(shutdown.log) == [acknowledged], (
        f"clients saw {acknowledged} x 202; log:\n{shutdown.log[-3000:]}"
    )
    assert "did not drain" not in shutdown.log
    assert "shutdown complete" in shutdown.log


def test_no_request_got_a_server_error_and_every_503_said_when_to_retry(
    shutdown: ShutdownRun,
) -> None:
    assert set(shutdown.statuses) <= {202, 503}, shutdown.statuses
    assert not shutdown.bad_answers
    assert not shutdown.refusals_without_retry_after
    assert "Traceback" not in shutdown.log


def test_producers_are_refused_at_the_door_once_the_server_stops_listening(
    shutdown: ShutdownRun,
) -> None:
    assert shutdown.producers_refused == PRODUCERS, (
        shutdown.producers_refused,
        shutdown.connection_errors,
    )


def test_readiness_fails_at_once_while_an_in_flight_request_is_still_being_served(
    shutdown: ShutdownRun,
) -> None:
    # uvicorn closes the listening socket on SIGTERM (and idle connections with it), so a probe
    # is refused, or cut without an answer if it connected just before; the endpoint's own
    # "accepting: shutting down" check is never reachable over HTTP.
    assert shutdown.readiness_after_sigterm not in {"not probed", "still 200"}, (
        shutdown.readiness_after_sigterm
    )
    assert shutdown.readiness_failed_after_s is not None
    assert shutdown.readiness_failed_after_s < 1.0
    assert shutdown.in_flight_while_readiness_failed


def test_a_request_in_flight_at_sigterm_is_still_answered_202(shutdown: ShutdownRun) -> None:
    assert shutdown.in_flight_status == 202, shutdown.log[-3000:]


def test_the_process_exits_within_the_shutdown_grace(shutdown: ShutdownRun) -> None:
    assert shutdown.exit_code is not None, "still running after SIGTERM"
    assert shutdown.shutdown_s <= GRACE_S + EXIT_MARGIN_S, shutdown.shutdown_s


def test_the_process_exits_with_status_0_after_a_graceful_sigterm(shutdown: ShutdownRun) -> None:
    # uvicorn re-raises the SIGTERM it caught once it has shut down; with no handler of the
    # service's own the process then dies of that signal (-15, shell status 143).
    assert shutdown.exit_code == 0, f"exit code {shutdown.exit_code}"
