"""Log lines as an operator reads them: the message, then only what it does not already say."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator

import pytest
from loguru import logger

from fanfinity.log import configure_logging


@pytest.fixture
def sink() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    yield stream
    logger.remove()
    logger.add(sys.stderr)


def test_a_line_without_bound_fields_ends_with_its_message(sink: io.StringIO) -> None:
    configure_logging("INFO", json_lines=False, sink=sink)
    logger.info("shutdown complete")
    assert sink.getvalue().splitlines()[0].endswith(" shutdown complete")


def test_bound_fields_follow_as_key_value_without_repeating_the_message(
    sink: io.StringIO,
) -> None:
    configure_logging("INFO", json_lines=False, sink=sink)
    logger.bind(request_id="abc123", status=404, route="/api/matches/{match_id}/metrics").info(
        "GET /api/matches/m1/metrics 404 2.1ms"
    )
    (line,) = sink.getvalue().splitlines()
    assert line.endswith(
        "GET /api/matches/m1/metrics 404 2.1ms"
        " request_id=abc123 route=/api/matches/{match_id}/metrics"
    )
    assert "status=" not in line


def test_an_exception_is_printed_below_its_line(sink: io.StringIO) -> None:
    configure_logging("INFO", json_lines=False, sink=sink)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("unhandled error on GET /")
    text = sink.getvalue()
    assert text.splitlines()[0].endswith("unhandled error on GET /")
    assert "RuntimeError: boom" in text


def test_json_lines_keep_every_bound_field(sink: io.StringIO) -> None:
    configure_logging("INFO", json_lines=True, sink=sink)
    logger.bind(request_id="abc123", status=404).info("GET / 404 1.0ms")
    record = json.loads(sink.getvalue().splitlines()[0])
    assert record["record"]["extra"] == {"request_id": "abc123", "status": 404}
    assert record["text"].strip() == "GET / 404 1.0ms"
