"""Loguru set-up: one sink, stdlib logging routed into it, JSON lines when asked (production)."""

from __future__ import annotations

import logging
import sys

from loguru import logger


class _InterceptHandler(logging.Handler):
    """Sends records of libraries that use stdlib logging (uvicorn, pymongo) through loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


def configure_logging(level: str, json_lines: bool) -> None:
    """Replace every handler with one loguru sink on stderr."""
    logger.remove()
    logger.add(
        sys.stderr,
        level=level,
        serialize=json_lines,
        backtrace=False,
        diagnose=False,
        enqueue=False,
        format=(
            "<green>{time:YYYY-MM-DDTHH:mm:ss.SSSZ}</green> <level>{level: <7}</level> "
            "<cyan>{name}</cyan> {message} <dim>{extra}</dim>"
        ),
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
