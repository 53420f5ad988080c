"""Command line: ``fanfinity serve | aggregate | rebuild [--match ID]``.

Heavy imports happen inside the commands: with several workers, ``PROMETHEUS_MULTIPROC_DIR`` must be
set before prometheus-client is first imported anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import sys
from types import FrameType
from typing import Any, Literal

from fanfinity.config import Settings, SettingsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fanfinity", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the HTTP API (and the aggregator unless disabled)")
    commands.add_parser("aggregate", help="run only the change-feed aggregator")
    rebuild = commands.add_parser(
        "rebuild",
        help="recount match summaries from stored events (and bring parked events back)",
    )
    rebuild.add_argument(
        "--match", dest="match_id", help="only this match (replays its parked events)"
    )
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"fanfinity: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command != "serve" and settings.embedded:
        print(
            f"fanfinity: `{args.command}` needs FANFINITY_MONGODB_URL=mongodb://...: the embedded "
            "engine's events live inside the `fanfinity serve` process, which runs its own "
            "aggregator",
            file=sys.stderr,
        )
        return 2
    from fanfinity.log import configure_logging

    configure_logging(settings.log_level, settings.log_json)
    if args.command == "rebuild":
        return asyncio.run(_rebuild(settings, args.match_id))
    return _serve(settings, role="api" if args.command == "serve" else "aggregator")


def _serve(settings: Settings, role: Literal["api", "aggregator"]) -> int:
    """Serve until stopped; 0 after a clean stop, 3 when it could not start (any worker count)."""
    from fanfinity.launcher import multiprocess_metrics_dir, run_uvicorn

    workers = settings.workers if role == "api" else 1
    os.environ["FANFINITY_ROLE"] = role
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "factory": True,
        "workers": workers,
        "loop": "uvloop",
        "http": "fanfinity.api.protocol:GuardedHttpToolsProtocol",  # httptools with limits
        # No route speaks WebSocket: an upgrade is answered as the plain request it is, and never
        # handed to a protocol without our head, body and connection limits (one that would wait
        # for ever on a handshake that carries a body).
        "ws": "none",
        "forwarded_allow_ips": settings.forwarded_allow_ips,
        "lifespan": "on",
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": int(settings.shutdown_grace_s) or 1,
        # An idle keep-alive connection gets as long as any connection has to send its head.
        "timeout_keep_alive": max(1, math.ceil(settings.head_timeout_s)),
        "server_header": False,
        "backlog": settings.backlog,
    }
    raise_open_files_limit()
    # uvicorn re-raises the signal it shut down on once it is done; answer it with a clean exit
    # status, so that a graceful SIGTERM ends with 0 rather than 143.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    with multiprocess_metrics_dir(workers):
        return run_uvicorn("fanfinity.__main__:app_factory", options, role=role)


def raise_open_files_limit() -> int:
    """Lift the soft open-files limit to the hard one: every connection (an SSE subscriber
    too) is a file, and a soft limit of 1,024 would refuse the 1,025th fan."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def _exit_cleanly(number: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def app_factory() -> Any:
    """What each uvicorn worker calls: settings from the environment, logging, the app."""
    from fanfinity.api import protocol
    from fanfinity.api.app import create_app
    from fanfinity.gc_tuning import tune_garbage_collector
    from fanfinity.log import configure_logging

    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_json)
    protocol.configure(settings)
    tune_garbage_collector(settings.embedded)
    if os.environ.get("FANFINITY_ROLE") == "aggregator":
        return create_app(settings, role="aggregator", drain_on_signals=True)
    return create_app(settings, role="api", drain_on_signals=True)


async def _rebuild(settings: Settings, match_id: str | None) -> int:
    from datetime import timedelta

    from fanfinity.pipeline.aggregator import Aggregator
    from fanfinity.pipeline.fold import SummaryBounds
    from fanfinity.storage.engine import open_engine

    engine = await open_engine(settings)
    try:
        aggregator = Aggregator(
            engine,
            batch_size=settings.aggregator_batch_size,
            stall_after_s=settings.aggregator_stall_s,
            active_window=timedelta(minutes=settings.active_window_min),
            bounds=SummaryBounds(settings.max_teams_per_match, settings.max_minutes_per_match),
        )
        report = await aggregator.rebuild(match_id)
    finally:
        engine.close()
    print(
        f"rebuilt {report.matches} match summaries from {report.events} events; "
        "parked events of the rebuilt matches are counted and cleared"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
