"""Match-day load test: steady producers and dashboard readers, then a goal lands.

Locust is not a project dependency (it stays out of uv.lock): run it through uvx, pinned.
`python -m scripts.loadtest` drives this file headless, seeds the matches, checks zero loss and
draws the chart; to run the scenario alone against a service that is already up (``make run``):

    uvx --from locust==2.47.0 locust -f scripts/loadtest/locustfile.py --headless \\
        --host http://127.0.0.1:8000 --csv /tmp/loadtest --csv-full-history --stop-timeout 10

Scenario (a `LoadTestShape`; every number is an option below, also settable as LOADTEST_* env vars):

- at the start, one match_start per match (so that dashboards never read a 404);
- steady: `--producers` users post events for `--matches` matches, each at `--producer-rate`
  events/s, and `--readers` dashboard users GET one match's metrics every `--read-interval` s;
- at `--spike-at` s a goal lands: for `--spike-duration` s the producers post `--spike-factor`
  times as fast and `--spike-factor` times as many dashboards read (x10 by default), then steady
  again until `--duration`.

Producers retry on 429/503 (after Retry-After), 5xx, timeouts and connection errors with the
**same eventId and payload**, so a retry of an event that was stored is an idempotent replay, never
a second event. Producers count the events that got a 202 (once per eventId); the counters go to
`--ack-file` (JSON) at the start and the end, so the driver can compare acknowledged with counted.

Request names carry the phase (``/api/events [spike]``) so that locust's own CSV stats give exact
per-phase counts, failures and percentiles.
"""

from __future__ import annotations

import json
import random
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gevent
import gevent.pool
from locust import FastHttpUser, LoadTestShape, events, task

# Locust imports this file by path, in its own environment: make the repository's scripts
# importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from scripts.helpers import http_request, percentile, retry_after_s

INGEST = "/api/events"
READ = "/api/matches/[id]/metrics"
RETRIED_STATUSES = {429, 500, 502, 503, 504}
# Event mix of a live match; a goal spike posts the same mix, ten times as fast.
EVENT_TYPES = (
    ("foul", 20),
    ("free_kick", 15),
    ("corner", 12),
    ("offside", 8),
    ("substitution", 5),
    ("yellow_card", 5),
    ("var_review", 2),
    ("goal", 3),
    ("injury", 2),
)
TYPE_NAMES = [name for name, _ in EVENT_TYPES]
TYPE_WEIGHTS = [weight for _, weight in EVENT_TYPES]


@dataclass
class Plan:
    """The scenario, from the command line; set once in `init`."""

    run_id: str = "adhoc"
    api_key: str = "local-dev-producer-key"
    matches: int = 4
    producers: int = 8
    producer_rate: float = 2.5
    readers: int = 100
    read_interval: float = 1.0
    spike_at: float = 30.0
    spike_duration: float = 30.0
    spike_factor: int = 10
    duration: float = 100.0
    give_up_after: float = 30.0
    ack_file: str = ""

    def match_ids(self) -> list[str]:
        return [f"loadtest-{self.run_id}-m{index}" for index in range(self.matches)]

    def phase_at(self, elapsed: float) -> str:
        if elapsed < self.spike_at:
            return "steady"
        if elapsed < self.spike_at + self.spike_duration:
            return "spike"
        return "after"


@dataclass
class ProducerCounters:
    """What producers saw; `acknowledged` counts each eventId that got a 202 once."""

    sent: int = 0
    acknowledged: int = 0
    replayed: int = 0
    retries: int = 0
    gave_up: int = 0
    rejected: int = 0
    seeded: int = 0
    interrupted: int = 0
    started_at: float = 0.0
    stopped_at: float = 0.0
    phase: str = "steady"
    phase_started_at: dict[str, float] = field(default_factory=dict)

    def unresolved(self) -> int:
        """Events sent but neither acknowledged nor refused: stored or not, nobody knows."""
        return self.sent - self.acknowledged - self.rejected


PLAN = Plan()
COUNTERS = ProducerCounters()
DELIVERIES = gevent.pool.Group()
TIMELINE: dict[str, defaultdict[int, list[float]]] = {
    "ingest": defaultdict(list),
    "reads": defaultdict(list),
}
FAILURES: dict[str, defaultdict[int, int]] = {"ingest": defaultdict(int), "reads": defaultdict(int)}


def enter_phase(phase: str) -> None:
    """Requests carry the phase the shape last set: a phase starts when its users arrive."""
    COUNTERS.phase = phase
    COUNTERS.phase_started_at[phase] = time.time()
    write_counters()


@events.init_command_line_parser.add_listener
def add_options(parser: Any) -> None:
    group = parser.add_argument_group("match-day scenario (scripts/loadtest)")
    defaults = Plan()
    group.add_argument("--run-id", env_var="LOADTEST_RUN_ID", default=uuid.uuid4().hex[:8])
    group.add_argument("--api-key", env_var="LOADTEST_API_KEY", default=defaults.api_key)
    group.add_argument("--matches", env_var="LOADTEST_MATCHES", type=int, default=defaults.matches)
    group.add_argument(
        "--producers", env_var="LOADTEST_PRODUCERS", type=int, default=defaults.producers
    )
    group.add_argument(
        "--producer-rate",
        env_var="LOADTEST_PRODUCER_RATE",
        type=float,
        default=defaults.producer_rate,
        help="events/s per producer user",
    )
    group.add_argument("--readers", env_var="LOADTEST_READERS", type=int, default=defaults.readers)
    group.add_argument(
        "--read-interval",
        env_var="LOADTEST_READ_INTERVAL",
        type=float,
        default=defaults.read_interval,
        help="seconds between two reads of one dashboard",
    )
    group.add_argument(
        "--spike-at", env_var="LOADTEST_SPIKE_AT", type=float, default=defaults.spike_at
    )
    group.add_argument(
        "--spike-duration",
        env_var="LOADTEST_SPIKE_DURATION",
        type=float,
        default=defaults.spike_duration,
    )
    group.add_argument(
        "--spike-factor", env_var="LOADTEST_SPIKE_FACTOR", type=int, default=defaults.spike_factor
    )
    group.add_argument(
        "--duration", env_var="LOADTEST_DURATION", type=float, default=defaults.duration
    )
    group.add_argument(
        "--give-up-after",
        env_var="LOADTEST_GIVE_UP_AFTER",
        type=float,
        default=defaults.give_up_after,
        help="seconds a producer keeps retrying one event",
    )
    group.add_argument("--ack-file", env_var="LOADTEST_ACK_FILE", default="")


@events.init.add_listener
def configure(environment: Any, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:  # used as a library, without a command line
        return
    for name in asdict(PLAN):
        setattr(PLAN, name, getattr(options, name))
    if PLAN.spike_at + PLAN.spike_duration > PLAN.duration:
        raise SystemExit("--spike-at + --spike-duration must end before --duration")
    ProducerUser.fixed_count = PLAN.producers
    ProducerUser.period = 1.0 / PLAN.producer_rate
    ReaderUser.period = PLAN.read_interval


@events.test_start.add_listener
def on_start(environment: Any, **_: Any) -> None:
    seed_matches(environment.host)
    COUNTERS.started_at = time.time()
    enter_phase("steady")  # also tells the driver that the clock of the phases started


@events.test_stop.add_listener
def on_stop(**_: Any) -> None:
    COUNTERS.stopped_at = time.time()
    DELIVERIES.join(timeout=PLAN.give_up_after + 5)
    COUNTERS.interrupted = len(DELIVERIES)  # still retrying: unknown fate
    write_counters()
    write_timeline()


def write_counters() -> None:
    if PLAN.ack_file:
        body = {**asdict(COUNTERS), "unresolved": COUNTERS.unresolved(), "plan": asdict(PLAN)}
        body["plan"].pop("api_key")
        Path(PLAN.ack_file).write_text(json.dumps(body, indent=2))


@events.request.add_listener
def on_request(name: str, response_time: float, exception: Any, **_: Any) -> None:
    """Per-second latencies by kind, by completion time: the chart's exact time series.

    (Locust's stats history has the same counts, but its rows carry whole-second timestamps that
    now and then skip a second, and its percentiles are over a sliding window.)
    """
    if not COUNTERS.started_at:
        return
    kind = "ingest" if name.startswith(INGEST + " [") else "reads"
    second = int(time.time() - COUNTERS.started_at)
    TIMELINE[kind][second].append(response_time)
    if exception is not None:
        FAILURES[kind][second] += 1


def write_timeline() -> None:
    """[second, requests, failures, p50 ms, p99 ms] rows per kind, next to the ack file."""
    if not PLAN.ack_file:
        return
    body: dict[str, list[list[float]]] = {}
    for kind, seconds in TIMELINE.items():
        rows = []
        for second in sorted(seconds):
            times = sorted(seconds[second])
            rows.append(
                [
                    second,
                    len(times),
                    FAILURES[kind][second],
                    round(percentile(times, 50), 2),
                    round(percentile(times, 99), 2),
                ]
            )
        body[kind] = rows
    Path(PLAN.ack_file).with_name("timeline.json").write_text(json.dumps(body))


def seed_matches(host: str) -> None:
    """One match_start per match, then wait until the aggregator has counted each one."""
    for match_id in PLAN.match_ids():
        event = {
            "eventId": str(uuid.uuid4()),
            "matchId": match_id,
            "eventType": "match_start",
            "timestamp": now_iso(),
            "teamId": f"{match_id}-team-0",
        }
        status, body = http_request(f"{host}/api/events", event, PLAN.api_key)
        if status != 202:
            raise SystemExit(f"seeding {match_id}: HTTP {status} {body[:200]!r} (check --api-key)")
        COUNTERS.seeded += 1
    deadline = time.monotonic() + 30
    for match_id in PLAN.match_ids():
        while (
            http_request(f"{host}/api/matches/{match_id}/metrics", api_key=PLAN.api_key)[0] != 200
        ):
            if time.monotonic() > deadline:
                raise SystemExit(f"{match_id} was never counted by the aggregator")
            gevent.sleep(0.1)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def retry_after(response: Any, attempt: int) -> float:
    """Retry-After seconds when the server sent it, else exponential backoff; with jitter."""
    header = response.headers.get("Retry-After") if response.headers else None
    after = retry_after_s(header)
    base = min(0.1 * 2**attempt, 2.0) if after is None else after
    return base * random.uniform(1.0, 1.25)


class PacedUser(FastHttpUser):
    """Runs its task every `period` seconds, at a random phase of its own.

    Not locust's constant_pacing/constant_throughput: they start the clock when the user is created,
    so users spawned in one batch (a goal spike spawns hundreds at once) fire in lockstep, and the
    burst of simultaneous requests shows up as generator-made latency (about 80 ms at 1000 users).
    """

    abstract = True
    network_timeout = 5.0
    connection_timeout = 5.0
    period = 1.0

    def on_start(self) -> None:
        gevent.sleep(random.uniform(0, self.current_period()))
        self._due = time.monotonic()

    def current_period(self) -> float:
        return self.period

    def wait_time(self) -> float:
        now = time.monotonic()
        # Late (a slow response): go now, and do not burst to catch up.
        self._due = max(self._due + self.current_period(), now)
        return self._due - now


class ProducerUser(PacedUser):
    """A match feed posting events; in the spike the same feeds post `--spike-factor` x faster.

    A fixed number of producers (not more users) also keeps locust from stopping a producer in the
    middle of a delivery when the spike ends: its ramp-down can kill a user that has just woken up.
    """

    fixed_count = 8
    period = 0.4

    def current_period(self) -> float:
        factor = PLAN.spike_factor if COUNTERS.phase == "spike" else 1
        return self.period / factor

    @task
    def post_event(self) -> None:
        match_id = random.choice(PLAN.match_ids())
        body = json.dumps(
            {
                "eventId": str(uuid.uuid4()),
                "matchId": match_id,
                "eventType": random.choices(TYPE_NAMES, TYPE_WEIGHTS)[0],
                "timestamp": now_iso(),
                "teamId": f"{match_id}-team-{random.randint(0, 1)}",
            }
        ).encode()
        headers = {"Content-Type": "application/json", "X-API-Key": PLAN.api_key}
        COUNTERS.sent += 1
        # In a greenlet of its own: when locust stops this user (ramp-down or the end of the test)
        # it may kill it at any point, and an event cut off mid-request has an unknown fate. The
        # delivery carries on; the end of the test waits for it (see `on_stop`).
        DELIVERIES.spawn(self.deliver, body, headers).join()

    def deliver(self, body: bytes, headers: dict[str, str]) -> None:
        """POST until a 202 or a refusal, retrying the same bytes (same eventId)."""
        deadline = time.monotonic() + PLAN.give_up_after
        attempt = 0
        while True:
            attempt += 1
            with self.client.post(
                "/api/events",
                data=body,
                headers=headers,
                name=f"{INGEST} [{COUNTERS.phase}]",
                catch_response=True,
            ) as response:
                status = response.status_code
                if status == 202:
                    response.success()
                    COUNTERS.acknowledged += 1
                    if response.headers.get("Idempotent-Replayed") == "true":
                        COUNTERS.replayed += 1
                    return
                if status in RETRIED_STATUSES or status == 0:
                    reason = f"HTTP {status}" if status else type(response.error).__name__
                    response.failure(f"{reason} (retried with the same eventId)")
                    delay = retry_after(response, attempt)
                else:
                    response.failure(f"HTTP {status} (not retried)")
                    COUNTERS.rejected += 1
                    return
            if time.monotonic() + delay > deadline:
                COUNTERS.gave_up += 1
                return
            COUNTERS.retries += 1
            gevent.sleep(delay)


class ReaderUser(PacedUser):
    """A fan's dashboard polling one match's metrics every second (at its own phase)."""

    period = 1.0

    def on_start(self) -> None:
        self.match_id = random.choice(PLAN.match_ids())
        super().on_start()

    @task
    def read_metrics(self) -> None:
        with self.client.get(
            f"/api/matches/{self.match_id}/metrics",
            headers={"X-API-Key": PLAN.api_key},
            name=f"{READ} [{COUNTERS.phase}]",
            catch_response=True,
        ) as response:
            if response.status_code == 200:
                response.success()
            else:
                status = response.status_code
                response.failure(f"HTTP {status}" if status else type(response.error).__name__)


class MatchDayShape(LoadTestShape):
    """Steady load, a goal multiplies every user class for a while, steady again, stop."""

    def tick(self) -> tuple[int, float] | None:
        run_time = self.get_run_time()
        if run_time >= PLAN.duration:
            return None
        steady = PLAN.readers
        phase = PLAN.phase_at(run_time)
        if phase != COUNTERS.phase:
            enter_phase(phase)
        factor = PLAN.spike_factor if phase == "spike" else 1
        # Arrive within about a second: a goal does not ramp up politely.
        return PLAN.producers + steady * factor, float(steady * PLAN.spike_factor)
