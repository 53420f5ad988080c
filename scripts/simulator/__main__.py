"""Replay a realistic 90-minute football match against a running Fanfinity service.

One producer posts the match's events in order at match pace (`--speed 60`: one match minute per
real second; `--speed 0`: as fast as possible) while `--readers` simulated dashboards poll
`GET /api/matches/{id}/metrics`. For 30 match-seconds after each goal the dashboards poll
`--spike-factor` times as often: the goal spike is extra metric *reads*, never extra events, so
the match's event count stays exact. Every event carries a client-made UUID eventId and is retried
with the same eventId and the same bytes after 429/503 (honouring Retry-After), other 5xx,
timeouts and connection errors, so a retry can never be counted twice; a 409 is reported as a bug.
At the end it prints a summary and checks that the service counted exactly the events it
acknowledged.

    make run        # in another terminal: the service on http://127.0.0.1:8000
    uv run python -m scripts.simulator                  # one match minute per second
    uv run python -m scripts.simulator --speed 0 --seed 7 --readers 50 --spike-factor 20

Exit status: 0 when every event was stored and counted, 1 on failures or a count mismatch, 2 when
the service cannot be reached or refuses the API key. The squads are fictional.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

import httpx

from scripts.simulator.plan import plan_match, team_id_for
from scripts.simulator.producer import FatalError, SimulationConfig
from scripts.simulator.report import Progress, format_summary
from scripts.simulator.run import run_simulation

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_API_KEY = "local-dev-producer-key"  # what `make run` configures
IDENTIFIER = re.compile(r"^[A-Za-z0-9\-_.:]{1,64}$")


def _positive_or_zero(raw: str) -> float:
    value = float(raw)
    if value < 0 or math.isnan(value):
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {raw}")
    return value


def _at_least_one(raw: str) -> float:
    value = float(raw)
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {raw}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog=(
            "Load model: one producer posts the events in match order; READERS dashboards poll "
            "GET /api/matches/{id}/metrics once per match minute, and for 30 match-seconds after "
            "each goal they poll SPIKE_FACTOR times as often. The spike is extra reads only."
        ),
    )
    parser.add_argument("--url", default=DEFAULT_URL, help=f"service base URL ({DEFAULT_URL})")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("FANFINITY_API_KEY", DEFAULT_API_KEY),
        help="producer key sent as X-API-Key (env FANFINITY_API_KEY, else the `make run` key)",
    )
    parser.add_argument("--home", default="Al-Hilal", help="home team name (Al-Hilal)")
    parser.add_argument("--away", default="Al-Nassr", help="away team name (Al-Nassr)")
    parser.add_argument(
        "--match-id", help="matchId to post under (default: <home>-vs-<away>-<UTC date-time>)"
    )
    parser.add_argument(
        "--speed",
        type=_positive_or_zero,
        default=60.0,
        help="match seconds per real second: 60 = one match minute per second, "
        "1 = real time, 0 = as fast as possible (60)",
    )
    parser.add_argument("--seed", type=int, help="decides the whole match script (random)")
    parser.add_argument(
        "--readers",
        type=int,
        default=10,
        help="simulated dashboards polling GET /api/matches/{id}/metrics once per match "
        "minute; 0 sends no reads (10)",
    )
    parser.add_argument(
        "--spike-factor",
        type=_at_least_one,
        default=10.0,
        help="for 30 match-seconds after a goal every dashboard polls the metrics this many "
        "times as often: extra GET reads, not extra events (10)",
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="seconds per HTTP request before retrying (5)"
    )
    parser.add_argument(
        "--max-attempts", type=int, default=8, help="POST attempts per event, retries included (8)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    args = parser.parse_args(argv)
    if args.readers < 0 or args.max_attempts < 1 or args.timeout <= 0:
        parser.error("--readers must be >= 0, --max-attempts >= 1 and --timeout > 0")
    try:
        home_id, away_id = team_id_for(args.home), team_id_for(args.away)
    except ValueError as exc:
        parser.error(str(exc))
    if home_id == away_id:
        parser.error(f"--home and --away must be different teams (both are {home_id!r})")
    if args.match_id is None:
        args.match_id = default_match_id(home_id, away_id, datetime.now(UTC))
    if not IDENTIFIER.fullmatch(args.match_id):
        parser.error("--match-id must be 1-64 letters, digits or - _ . :")
    if args.seed is None:
        args.seed = random.randrange(1_000_000)
    return args


def default_match_id(home_id: str, away_id: str, now: datetime) -> str:
    return f"{home_id[:20]}-vs-{away_id[:20]}-{now:%Y%m%d-%H%M%S}"


async def _main(args: argparse.Namespace) -> int:
    plan = plan_match(args.seed, args.home, args.away)
    config = SimulationConfig(
        match_id=args.match_id,
        api_key=args.api_key,
        speed=args.speed,
        readers=args.readers,
        spike_factor=args.spike_factor,
        max_attempts=args.max_attempts,
    )
    real_s = "" if args.speed <= 0 else f", about {plan[-1].at_s / args.speed:.0f} s"
    print(
        f"{args.home} vs {args.away}: {len(plan)} events (seed {args.seed}{real_s}) "
        f"as matchId {args.match_id} against {args.url}",
        file=sys.stderr,
    )
    limits = httpx.Limits(max_connections=config.read_concurrency + 4)
    async with httpx.AsyncClient(base_url=args.url, timeout=args.timeout, limits=limits) as client:
        try:
            result = await run_simulation(
                client, plan, config, Progress(None if args.no_progress else sys.stderr)
            )
        except FatalError as exc:
            print(f"\nsimulator: {exc}", file=sys.stderr)
            return 2
    print(format_summary(result))
    return 0 if result.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(_main(args))
    except KeyboardInterrupt:
        print("\nsimulator: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
