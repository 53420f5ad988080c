"""The match simulator (`python -m scripts.simulator`): its script, retries and a whole match."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from fanfinity.api.validation import convert_event
from scripts.simulator.plan import (
    HALFTIME_BREAK_S,
    MAX_SUBSTITUTIONS,
    SCORING_TYPES,
    SPIKE_WINDOW_S,
    live_clock,
    plan_match,
    plan_reads,
    score_after,
    teams_of,
)
from scripts.simulator.producer import EventStats, SimulationConfig, post_event
from scripts.simulator.report import format_summary, render_progress
from scripts.simulator.run import run_simulation
from tests.conftest import PRODUCER_KEY

SEEDS = range(150)
PLANS = {seed: plan_match(seed, "Al-Hilal", "Al-Nassr") for seed in SEEDS}


def every_event() -> list[Any]:
    return [event for plan in PLANS.values() for event in plan]


# --- the match script -----------------------------------------------------------------------


def test_the_same_seed_plays_the_same_match_and_another_seed_another() -> None:
    assert plan_match(7, "Al-Hilal", "Al-Nassr") == PLANS[7]
    assert plan_match(8, "Al-Hilal", "Al-Nassr") != PLANS[7]


def test_every_match_opens_with_kick_off_and_closes_with_full_time() -> None:
    for plan in PLANS.values():
        types = [event.event_type for event in plan]
        assert types[0] == "match_start"
        assert types[-1] == "match_end"
        assert types.count("match_start") == types.count("match_end") == 1
        assert teams_of(plan) == ("al-hilal", "al-nassr")


def test_minutes_and_times_never_go_backwards_and_half_time_is_a_quiet_gap() -> None:
    for plan in PLANS.values():
        places = [(event.half, event.minute, event.added) for event in plan]
        assert places == sorted(places)
        times = [event.at_s for event in plan]
        assert times == sorted(times)
        last_first_half = max(e.at_s for e in plan if e.half == 1)
        first_second_half = min(e.at_s for e in plan if e.half == 2)
        assert first_second_half - last_first_half >= HALFTIME_BREAK_S
        for event in plan:
            assert event.metadata["minute"] == event.minute
            assert event.metadata.get("addedTime", 0) == event.added
            assert event.minute <= (45 if event.half == 1 else 90)
            assert event.added == 0 or event.minute in (45, 90)


def test_a_match_has_a_realistic_mix_of_events() -> None:
    per_match = Counter(event.event_type for event in every_event())
    matches = len(PLANS)
    assert 18 <= per_match["foul"] / matches <= 30
    assert 7 <= per_match["corner"] / matches <= 13
    assert 1.5 <= per_match["goal"] / matches <= 3.5
    assert 2 <= per_match["yellow_card"] / matches <= 6
    assert 0.05 <= per_match["red_card"] / matches <= 0.5
    for rare in ("own_goal", "penalty_goal", "penalty_missed", "var_review", "injury", "offside"):
        assert per_match[rare] > 0, f"no {rare} in {matches} matches"


def test_every_planned_event_is_valid_for_the_service() -> None:
    now = datetime.now(UTC)
    for plan in (PLANS[0], PLANS[1], PLANS[2]):
        for event in plan:
            body = event.body("al-hilal-vs-al-nassr-test", str(uuid.uuid4()), now)
            valid = convert_event(msgspec.Raw(json.dumps(body).encode()), now, "$")
            assert valid.event_type == event.event_type
            assert valid.player_id == event.player_id


def test_the_goals_add_up_to_the_score_the_summary_reports() -> None:
    for plan in PLANS.values():
        home, away = teams_of(plan)
        goals = Counter[str]()
        for event in plan:
            if event.event_type in ("goal", "penalty_goal"):
                goals[event.team_id] += 1
            elif event.event_type == "own_goal":  # the player's own team concedes it
                goals[away if event.team_id == home else home] += 1
            if event.event_type in SCORING_TYPES:
                assert event.metadata["score"] == f"{goals[home]}-{goals[away]}"
        assert score_after(plan) == (goals[home], goals[away])
        assert plan[-1].metadata["finalScore"] == f"{goals[home]}-{goals[away]}"


def test_no_team_makes_more_than_five_substitutions_and_most_come_after_55() -> None:
    minutes = []
    for plan in PLANS.values():
        substitutions = Counter(e.team_id for e in plan if e.event_type == "substitution")
        assert max(substitutions.values(), default=0) <= MAX_SUBSTITUTIONS
        minutes += [e.minute for e in plan if e.event_type == "substitution"]
    assert sum(minute > 55 for minute in minutes) >= 0.7 * len(minutes)


def test_a_player_who_left_the_pitch_takes_no_further_part() -> None:
    for plan in PLANS.values():
        gone: set[str] = set()
        for event in plan:
            assert event.player_id not in gone, f"{event.player_id} is back: {event}"
            if event.event_type == "red_card":
                gone.add(event.player_id)
            elif event.event_type == "substitution":
                gone.add(event.metadata["playerOutId"])


def test_reads_during_a_goal_spike_come_spike_factor_times_as_often() -> None:
    plan = next(p for p in PLANS.values() if sum(e.event_type == "goal" for e in p) == 1)
    goal = next(event for event in plan if event.event_type == "goal")
    reads = plan_reads(plan, readers=4, spike_factor=10)
    window = [at for at, spike in reads if goal.at_s <= at < goal.at_s + SPIKE_WINDOW_S]
    assert all(spike for at, spike in reads if at in window)
    baseline = [at for at, spike in reads if not spike]
    baseline_per_s = len(baseline) / (plan[-1].at_s - SPIKE_WINDOW_S)
    assert len(window) / SPIKE_WINDOW_S == pytest.approx(10 * baseline_per_s, rel=0.1)
    assert plan_reads(plan, readers=0, spike_factor=10) == []


def test_the_progress_line_is_plain_text() -> None:
    line = render_progress(120, 240, "45'", (2, 1), retries=3, reads=0)
    assert line == "[##########..........] 45' 2-1 events 120/240 retries 3"
    assert render_progress(240, 240, "90+4'", (2, 1), 0, 50).endswith("reads 50")


def test_the_live_clock_shows_stoppage_time_half_time_and_full_time() -> None:
    plan = PLANS[7]
    end = plan[-1]
    second_half_at = end.at_s - 60 * end.added - 45 * 60  # the second half's kick-off
    half_time_at = second_half_at - HALFTIME_BREAK_S
    first_half_added = round((half_time_at - 45 * 60) / 60)
    assert live_clock(plan, 0) == "1'"
    assert live_clock(plan, 44 * 60 + 59) == "45'"
    assert live_clock(plan, 45 * 60) == "45+1'"
    assert live_clock(plan, half_time_at - 1) == f"45+{first_half_added}'"
    assert live_clock(plan, half_time_at) == "HT"
    assert live_clock(plan, second_half_at - 1) == "HT"
    assert live_clock(plan, second_half_at) == "46'"
    assert live_clock(plan, end.at_s - 1) == f"90+{end.added}'"
    assert live_clock(plan, end.at_s) == "FT"
    assert all(event.at_s < half_time_at or event.at_s >= second_half_at for event in plan)


# --- the sender -----------------------------------------------------------------------------


Handler = Callable[[httpx.Request], httpx.Response]


def scripted_client(answers: list[Handler], seen: list[httpx.Request]) -> httpx.AsyncClient:
    """A client whose n-th request gets the n-th scripted answer."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers[len(seen) - 1](request)

    return httpx.AsyncClient(transport=httpx.MockTransport(handle), base_url="http://sim.test")


def answer(status: int, **headers: str) -> Handler:
    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers=headers, json={"detail": f"status {status}"})

    return respond


def time_out(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("no answer in time", request=request)


class RecordedSleeps:
    """Stands in for asyncio.sleep: remembers how long the sender asked to wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


CONFIG = SimulationConfig(match_id="retry-test", api_key=PRODUCER_KEY, backoff_s=0.01)


async def test_a_retried_event_keeps_its_event_id_and_counts_once() -> None:
    seen: list[httpx.Request] = []
    sleeps = RecordedSleeps()
    client = scripted_client(
        [
            answer(503, **{"Retry-After": "2"}),
            time_out,
            answer(429, **{"Retry-After": "1"}),
            answer(202, **{"Idempotent-Replayed": "true"}),
        ],
        seen,
    )
    stats = EventStats()
    async with client:
        stored = await post_event(client, PLANS[0][1], CONFIG, stats, sleep=sleeps)

    assert stored
    assert {request.content for request in seen} == {seen[0].content}  # same bytes every time
    assert len({json.loads(request.content)["eventId"] for request in seen}) == 1
    assert (stats.sent, stats.accepted, stats.duplicates, stats.retries) == (1, 1, 1, 3)
    assert sleeps.waits[0] == 2.0  # Retry-After honoured
    assert 0 < sleeps.waits[1] <= CONFIG.backoff_s * 2  # backoff after the timeout
    assert sleeps.waits[2] == 1.0
    assert stats.failures == []


async def test_a_409_is_reported_as_a_bug_and_a_422_is_not_retried() -> None:
    seen: list[httpx.Request] = []
    client = scripted_client([answer(409), answer(422)], seen)
    stats = EventStats()
    async with client:
        assert not await post_event(client, PLANS[0][1], CONFIG, stats, sleep=RecordedSleeps())
        assert not await post_event(client, PLANS[0][2], CONFIG, stats, sleep=RecordedSleeps())

    assert len(seen) == 2
    assert stats.failures[0].startswith("BUG: 409")
    assert "422" in stats.failures[1]
    assert (stats.sent, stats.accepted, stats.retries) == (2, 0, 0)


async def test_an_event_that_never_gets_through_fails_after_the_last_attempt() -> None:
    seen: list[httpx.Request] = []
    config = SimulationConfig(match_id="retry-test", api_key=PRODUCER_KEY, max_attempts=3)
    client = scripted_client([time_out] * 3, seen)
    stats = EventStats()
    async with client:
        assert not await post_event(client, PLANS[0][1], config, stats, sleep=RecordedSleeps())

    assert len(seen) == 3
    assert stats.retries == 2
    assert "ReadTimeout" in stats.failures[0]


# --- a whole match against the app ----------------------------------------------------------


async def test_a_whole_match_at_full_speed_is_counted_exactly(
    client: AsyncTestClient[Litestar],
) -> None:
    plan = PLANS[7]
    config = SimulationConfig(
        match_id="simulated-derby", api_key=PRODUCER_KEY, speed=0, readers=2, spike_factor=3
    )

    result = await run_simulation(client, plan, config)

    assert result.events.failures == []
    assert result.events.accepted == len(plan)
    assert result.counted == result.events.accepted
    assert result.ok
    assert result.reads.spike > 0
    assert result.metrics is not None
    assert result.metrics["status"] == "ended"
    summary = format_summary(result)
    assert f"accepted {len(plan)}" in summary
    assert f"check     totalEvents {len(plan)} vs accepted {len(plan)}: OK" in summary
    home, away = score_after(plan)
    assert f"Al-Hilal {home}-{away} Al-Nassr" in summary
