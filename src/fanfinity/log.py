"""Loguru set-up: one sink, stdlib logging routed into it, JSON lines when asked (production)."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, TextIO

from loguru import logger

if TYPE_CHECKING:
    from loguru import Record


class _InterceptHandler(logging.Handler):
    """Sends records of libraries that use stdlib logging (uvicorn, pymongo) through loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


HUMAN_FORMAT = (
    "<green>{time:YYYY-MM-DDTHH:mm:ss.SSSZ}</green> <level>{level: <7}</level> "
    "<cyan>{name}</cyan> {message}<dim>{extra[_fields]}</dim>\n{exception}"
)


def _human_format(record: Record) -> str:
    """One line: the message, then only the bound fields it does not already show, as key=value.

    The request log binds ``status`` and ``route`` next to a message that already says them, and
    most lines bind nothing: printing ``{extra}`` gave every line a trailing dict, often ``{}``.
    JSON lines (``FANFINITY_LOG_JSON=true``) keep every field, as log shippers want.
    """
    shown = set(record["message"].split())
    fields = [
        f"{key}={value}"
        for key, value in record["extra"].items()
        if not key.startswith("_") and str(value) not in shown
    ]
    record["extra"]["_fields"] = "".join(f" {field}" for field in fields)
    return HUMAN_FORMAT


def configure_logging(level: str, json_lines: bool, sink: TextIO | None = None) -> None:
    """Replace every handler with one loguru sink (stderr unless told otherwise)."""
    logger.remove()
    logger.add(
        sink or sys.stderr,
        level=level,
        serialize=json_lines,
        backtrace=False,
        diagnose=False,
        enqueue=False,
        format="{message}" if json_lines else _human_format,
    )
    logging.basicConfig(handlers=[_InterceptHandler()], level=0, force=True)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers = [_InterceptHandler()]
        logging.getLogger(name).propagate = False
    access = logging.getLogger("uvicorn.access")  # our middleware logs each request once
    access.handlers = []
    access.propagate = False
    access.disabled = True
    for noisy in ("pymongo", "httpx", "httpcore", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
