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
    uv run python scripts/simulate_match.py                  # one match minute per second
    uv run python scripts/simulate_match.py --speed 0 --seed 7 --readers 50 --spike-factor 20

Exit status: 0 when every event was stored and counted, 1 on failures or a count mismatch, 2 when
the service cannot be reached or refuses the API key. The squads are fictional.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TextIO

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_API_KEY = "local-dev-producer-key"  # what `make run` configures
IDENTIFIER = re.compile(r"^[A-Za-z0-9\-_.:]{1,64}$")

HALF_S = 45 * 60
HALFTIME_BREAK_S = 15 * 60
SPIKE_WINDOW_S = 30.0
LATENCY_SETTLE_S = 1.5
POLL_INTERVAL_S = 60.0  # a dashboard polls once per match minute outside the goal spikes
MAX_SUBSTITUTIONS = 5
SCORING_TYPES = frozenset({"goal", "penalty_goal", "own_goal"})

FORMATION = ("GK", "DF", "DF", "DF", "DF", "MF", "MF", "MF", "FW", "FW", "FW")
STARTING_SHIRTS = (1, 2, 3, 4, 5, 6, 8, 10, 7, 9, 11)
BENCH = ("GK", "DF", "DF", "MF", "MF", "FW", "FW")
BENCH_SHIRTS = (21, 12, 15, 14, 16, 17, 19)
FIRST_NAMES = (
    "Fahad", "Nawaf", "Yasser", "Saud", "Turki", "Abdullah", "Faisal", "Khalid", "Sultan",
    "Hattan", "Omar", "Majed", "Bandar", "Hamad", "Rakan", "Ziyad", "Mansour", "Nasser",
    "Waleed", "Hassan", "Ibrahim", "Marwan", "Riyadh", "Talal", "Meshal", "Awad", "Hamdan",
)  # fmt: skip
FAMILY_NAMES = (
    "Al-Harbi", "Al-Qahtani", "Al-Otaibi", "Al-Ghamdi", "Al-Shehri", "Al-Zahrani", "Al-Mutairi",
    "Al-Anazi", "Al-Shammari", "Al-Malki", "Al-Yami", "Al-Juhani", "Al-Subaie", "Al-Rashidi",
    "Al-Amri", "Al-Bishi", "Al-Faraj", "Al-Khaibari", "Al-Hamdan", "Al-Oboud", "Al-Najei",
)  # fmt: skip

# How likely each position is to be the player in an incident of each kind.
ROLE_WEIGHTS: dict[str, dict[str, float]] = {
    "score": {"GK": 0.0, "DF": 1.0, "MF": 3.0, "FW": 6.0},
    "assist": {"GK": 0.1, "DF": 1.0, "MF": 4.0, "FW": 3.0},
    "foul": {"GK": 0.2, "DF": 4.0, "MF": 3.0, "FW": 2.0},
    "set_piece": {"GK": 0.0, "DF": 1.0, "MF": 5.0, "FW": 2.0},
    "offside": {"GK": 0.0, "DF": 0.2, "MF": 1.0, "FW": 6.0},
    "own_goal": {"GK": 1.0, "DF": 6.0, "MF": 2.0, "FW": 0.5},
    "injury": {"GK": 0.5, "DF": 3.0, "MF": 3.0, "FW": 3.0},
    "sub_off": {"GK": 0.0, "DF": 2.0, "MF": 3.0, "FW": 4.0},
}
# Expected incidents per 90 minutes of play, from typical top-flight averages.
PER_90 = {"foul": 22.0, "corner": 9.5, "offside": 4.0, "injury": 1.6, "var_check": 0.5}
GOALS_PER_MATCH = (1.45, 1.15)  # home, away
PENALTY_MISSES_PER_TEAM = 0.06
SECOND_YELLOW_LENIENCY = 0.75


# --- the match plan (pure) --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Player:
    player_id: str
    name: str
    position: str


@dataclass(frozen=True, slots=True)
class Team:
    name: str
    team_id: str
    starters: tuple[Player, ...]
    bench: tuple[Player, ...]


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    """One event of the match script, placed on the wall-clock timeline of the match."""

    at_s: float  # seconds after kick-off, the 15-minute half-time break included
    half: int
    minute: int  # the minute fans see: 1..45 and 46..90; stoppage time stays at 45 or 90
    added: int  # the stoppage-time minute (45+2' is minute 45, added 2), else 0
    event_type: str
    team_id: str
    player_id: str | None
    metadata: dict[str, Any]

    @property
    def clock(self) -> str:
        return clock_label(self.minute, self.added)

    def body(self, match_id: str, event_id: str, timestamp: datetime) -> dict[str, Any]:
        """The JSON body of `POST /api/events` for this event."""
        body: dict[str, Any] = {
            "eventId": event_id,
            "matchId": match_id,
            "eventType": self.event_type,
            "timestamp": iso_utc(timestamp),
            "teamId": self.team_id,
        }
        if self.player_id is not None:
            body["playerId"] = self.player_id
        body["metadata"] = self.metadata
        return body


@dataclass(slots=True)
class _Incident:
    """Something that happens at `play_s` seconds of play (both halves back to back)."""

    play_s: float
    kind: str
    side: int  # 0 home, 1 away: the team the event belongs to
    chain: int  # incidents of one passage of play (foul -> free kick -> card) share a chain
    note: str = ""


@dataclass(frozen=True, slots=True)
class _Timeline:
    added: tuple[int, int]  # stoppage minutes of each half

    @property
    def first_half_s(self) -> float:
        return HALF_S + 60 * self.added[0]

    @property
    def play_s(self) -> float:
        return self.first_half_s + HALF_S + 60 * self.added[1]

    @property
    def full_time_at_s(self) -> float:
        return self.first_half_s + HALFTIME_BREAK_S + HALF_S + 60 * self.added[1]

    def half_of(self, play_s: float) -> int:
        return 1 if play_s < self.first_half_s else 2

    def same_half(self, first: float, then: float) -> bool:
        return then < self.play_s and self.half_of(first) == self.half_of(then)

    def place(self, play_s: float) -> tuple[float, int, int, int]:
        """(at_s, half, minute, added) of a moment of play."""
        if play_s < self.first_half_s:
            clock, at_s, half = play_s, play_s, 1
        else:
            clock = HALF_S + play_s - self.first_half_s
            at_s, half = play_s + HALFTIME_BREAK_S, 2
        regular_end = HALF_S * half
        if clock < regular_end:
            return at_s, half, int(clock // 60) + 1, 0
        return at_s, half, regular_end // 60, int((clock - regular_end) // 60) + 1


def clock_label(minute: int, added: int) -> str:
    return f"{minute}+{added}'" if added else f"{minute}'"


def live_clock(plan: Sequence[PlannedEvent], at_s: float) -> str:
    """The match clock `at_s` seconds after kick-off: 1' ... 45+2', HT, 46' ... 90+4', FT."""
    end = plan[-1]
    if at_s >= end.at_s:
        return "FT"
    second_half_at = end.at_s - 60 * end.added - HALF_S
    first_half_end = second_half_at - HALFTIME_BREAK_S
    if first_half_end <= at_s < second_half_at:
        return "HT"
    timeline = _Timeline((round((first_half_end - HALF_S) / 60), end.added))
    play_s = at_s if at_s < first_half_end else at_s - HALFTIME_BREAK_S
    _, _, minute, added = timeline.place(max(play_s, 0.0))
    return clock_label(minute, added)


def team_id_for(name: str) -> str:
    """A team's id from its name: "Al-Hilal" -> "al-hilal"."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-")
    if not slug:
        raise ValueError(f"team name {name!r} has no letters or digits")
    return slug


def build_team(name: str, rng: random.Random) -> Team:
    team_id = team_id_for(name)
    names = iter(rng.sample([f"{f} {s}" for f in FIRST_NAMES for s in FAMILY_NAMES], 18))

    def squad(positions: Sequence[str], shirts: Sequence[int]) -> tuple[Player, ...]:
        return tuple(
            Player(f"{team_id}-{shirt}", next(names), position)
            for position, shirt in zip(positions, shirts, strict=True)
        )

    return Team(name, team_id, squad(FORMATION, STARTING_SHIRTS), squad(BENCH, BENCH_SHIRTS))


def plan_match(seed: int, home: str, away: str) -> list[PlannedEvent]:
    """The whole script of a match, decided by `seed` alone: kick-off, play, full time."""
    rng = random.Random(seed)
    teams = (build_team(home, rng), build_team(away, rng))
    if teams[0].team_id == teams[1].team_id:
        raise ValueError(f"{home!r} and {away!r} have the same team id {teams[0].team_id!r}")
    timeline = _Timeline((rng.randint(1, 4), rng.randint(3, 7)))
    incidents = _draw_incidents(rng, timeline)
    return _play(rng, teams, timeline, incidents)


def _poisson(rng: random.Random, mean: float) -> int:
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def _draw_incidents(rng: random.Random, timeline: _Timeline) -> list[_Incident]:
    """When things happen and to which side; who is involved is settled while playing them."""
    incidents: list[_Incident] = []
    chains = iter(range(1_000_000))
    scale = timeline.play_s / (90 * 60)

    def moment(low: float = 1.0, high_margin: float = 1.0) -> float:
        return rng.uniform(low, timeline.play_s - high_margin)

    def add(play_s: float, kind: str, side: int, chain: int, note: str = "") -> None:
        incidents.append(_Incident(play_s, kind, side, chain, note))

    def follow(start: float, delay: float, kind: str, side: int, chain: int, note: str) -> None:
        if timeline.same_half(start, start + delay):  # else the whistle went first
            add(start + delay, kind, side, chain, note)

    for _ in range(_poisson(rng, PER_90["foul"] * scale)):
        at, side, chain = moment(), rng.randrange(2), next(chains)
        add(at, "foul", side, chain)
        follow(at, rng.uniform(8, 25), "free_kick", 1 - side, chain, "foul")
        card = rng.random()
        if card < 0.006:
            follow(at, rng.uniform(20, 60), "red_card", side, chain, "serious foul play")
        elif card < 0.18:
            follow(at, rng.uniform(15, 50), "yellow_card", side, chain, "foul")
    for _ in range(_poisson(rng, PER_90["corner"] * scale)):
        add(moment(), "corner", 0 if rng.random() < 0.53 else 1, next(chains))
    for _ in range(_poisson(rng, PER_90["offside"] * scale)):
        at, side, chain = moment(), rng.randrange(2), next(chains)
        add(at, "offside", side, chain)
        follow(at, rng.uniform(10, 20), "free_kick", 1 - side, chain, "offside")
    for _ in range(_poisson(rng, PER_90["injury"] * scale)):
        at, side, chain = moment(), rng.randrange(2), next(chains)
        add(at, "injury", side, chain, rng.choice(("knock", "muscle strain", "head knock")))
        if rng.random() < 0.35:
            follow(at, rng.uniform(60, 150), "substitution", side, chain, "injury")
    for _ in range(_poisson(rng, PER_90["var_check"] * scale)):
        check = rng.choice(("possible penalty", "possible red card", "possible handball"))
        add(moment(), "var_review", rng.randrange(2), next(chains), check)
    for side in (0, 1):
        for _ in range(min(_poisson(rng, GOALS_PER_MATCH[side]), 6)):
            _draw_goal(rng, timeline, side, next(chains), add, follow)
        for _ in range(_poisson(rng, PENALTY_MISSES_PER_TEAM)):
            at, chain = moment(120, 30), next(chains)
            foul_at = max(_half_start(timeline, at) + 5, at - rng.uniform(30, 90))
            add(foul_at, "foul", 1 - side, chain, "penalty")
            add(at, "penalty_missed", side, chain)
        _draw_substitutions(rng, timeline, side, chains, add)
    incidents = [i for i in incidents if 1 <= i.play_s < timeline.play_s]
    return sorted(incidents, key=lambda incident: incident.play_s)


def _half_start(timeline: _Timeline, play_s: float) -> float:
    return 0.0 if timeline.half_of(play_s) == 1 else timeline.first_half_s


def _draw_goal(
    rng: random.Random,
    timeline: _Timeline,
    side: int,
    chain: int,
    add: Callable[..., None],
    follow: Callable[..., None],
) -> None:
    at = rng.uniform(120, timeline.play_s - 30)
    kind = rng.random()
    if kind < 0.10:  # a penalty: the foul in the box, sometimes a VAR check, then the kick
        foul_at = max(_half_start(timeline, at) + 5, at - rng.uniform(50, 110))
        add(foul_at, "foul", 1 - side, chain, "penalty")
        if rng.random() < 0.5:
            add((foul_at + at) / 2, "var_review", side, chain, "penalty")
        add(at, "penalty_goal", side, chain)
    elif kind < 0.15:  # the defending side's player puts it in his own net
        add(at, "own_goal", 1 - side, chain)
    else:
        add(at, "goal", side, chain)
        if rng.random() < 0.3:
            follow(at, rng.uniform(40, 90), "var_review", side, chain, "goal")


def _draw_substitutions(
    rng: random.Random,
    timeline: _Timeline,
    side: int,
    chains: Iterator[int],
    add: Callable[..., None],
) -> None:
    """Tactical changes: now and then one at half-time, mostly in one to three windows after 55'."""
    second_half = timeline.first_half_s - HALF_S  # play_s of the second half's 45:00
    planned = rng.choice((3, 4, 5, 5))
    if rng.random() < 0.2:
        add(timeline.first_half_s + rng.uniform(1, 20), "substitution", side, next(chains), "")
        planned -= 1
    windows = sorted(rng.uniform(56, 88) * 60 + second_half for _ in range(rng.randint(1, 3)))
    for index in range(planned):
        window = windows[index % len(windows)]
        add(window + 25 * (index // len(windows)), "substitution", side, next(chains), "")


@dataclass(slots=True)
class _Side:
    team: Team
    on_pitch: list[Player]
    bench: list[Player]
    came_on: set[str] = field(default_factory=set)
    booked: set[str] = field(default_factory=set)
    substitutions: int = 0


def _choose(
    rng: random.Random, players: Sequence[Player], role: str, exclude: Player | None = None
) -> Player | None:
    candidates = [player for player in players if player != exclude]
    if not candidates:
        return None
    weights = [ROLE_WEIGHTS[role][player.position] for player in candidates]
    if not any(weights):
        return rng.choice(candidates)
    return rng.choices(candidates, weights)[0]


def _play(
    rng: random.Random, teams: tuple[Team, Team], timeline: _Timeline, incidents: list[_Incident]
) -> list[PlannedEvent]:
    """Walk the incidents in order, keeping the line-ups, cards, substitutions and score."""
    sides = [_Side(team, list(team.starters), list(team.bench)) for team in teams]
    protagonists: dict[int, Player] = {}
    score = [0, 0]
    teams_meta = {
        "homeTeam": teams[0].team_id,
        "awayTeam": teams[1].team_id,
        "homeTeamName": teams[0].name,
        "awayTeamName": teams[1].name,
    }
    kick_off = {"minute": 0, "half": 1, **teams_meta}
    events = [PlannedEvent(0.0, 1, 0, 0, "match_start", teams[0].team_id, None, kick_off)]

    def emit(incident: _Incident, event_type: str, player: Player | None, **extra: Any) -> None:
        at_s, half, minute, added = timeline.place(incident.play_s)
        metadata: dict[str, Any] = {"minute": minute, "half": half}
        if added:
            metadata["addedTime"] = added
        if player is not None:
            metadata["playerName"] = player.name
        metadata.update(extra)
        team_id = sides[incident.side].team.team_id
        player_id = None if player is None else player.player_id
        events.append(
            PlannedEvent(at_s, half, minute, added, event_type, team_id, player_id, metadata)
        )

    for incident in incidents:
        side, kind = sides[incident.side], incident.kind
        if kind == "foul":
            player = _choose(rng, side.on_pitch, "foul")
            if player is None:
                continue
            protagonists[incident.chain] = player
            if incident.note == "penalty":
                emit(incident, "foul", player, inPenaltyArea=True)
            else:
                emit(incident, "foul", player)
        elif kind in ("free_kick", "corner"):
            taker = _choose(rng, side.on_pitch, "set_piece")
            if incident.note:
                emit(incident, kind, taker, awardedFor=incident.note)
            else:
                emit(incident, kind, taker)
        elif kind == "offside":
            emit(incident, "offside", _choose(rng, side.on_pitch, "offside"))
        elif kind in ("yellow_card", "red_card"):
            player = protagonists.get(incident.chain)
            if player is None or player not in side.on_pitch:
                continue
            if kind == "yellow_card" and player.player_id not in side.booked:
                side.booked.add(player.player_id)
                emit(incident, "yellow_card", player, reason=incident.note)
                continue
            if kind == "yellow_card" and rng.random() < SECOND_YELLOW_LENIENCY:
                continue  # a booked player's next foul is usually let go with a word
            if kind == "yellow_card":
                emit(incident, "yellow_card", player, reason=incident.note, secondYellow=True)
            reason = "second yellow card" if kind == "yellow_card" else incident.note
            side.on_pitch.remove(player)
            emit(incident, "red_card", player, reason=reason)
        elif kind in SCORING_TYPES:
            credited = 1 - incident.side if kind == "own_goal" else incident.side
            role = "own_goal" if kind == "own_goal" else "score"
            player = _choose(rng, side.on_pitch, role)
            if player is None:
                continue
            score[credited] += 1
            protagonists[incident.chain] = player
            details: dict[str, Any] = {"score": f"{score[0]}-{score[1]}"}
            if kind == "goal" and rng.random() < 0.7:
                assist = _choose(rng, side.on_pitch, "assist", exclude=player)
                if assist is not None:
                    details.update(assistPlayerId=assist.player_id, assistName=assist.name)
            emit(incident, kind, player, **details)
        elif kind == "penalty_missed":
            player = _choose(rng, side.on_pitch, "score")
            outcome = rng.choice(("saved", "wide", "hit the post"))
            emit(incident, "penalty_missed", player, outcome=outcome)
        elif kind == "var_review":
            player = protagonists.get(incident.chain) if incident.note == "goal" else None
            if player not in side.on_pitch:
                player = None
            decision = "no action" if incident.note.startswith("possible") else "confirmed"
            emit(incident, "var_review", player, check=incident.note, decision=decision)
        elif kind == "injury":
            player = _choose(rng, side.on_pitch, "injury")
            if player is None:
                continue
            protagonists[incident.chain] = player
            emit(incident, "injury", player, injury=incident.note)
        elif kind == "substitution":
            _substitute(rng, incident, side, protagonists.get(incident.chain), emit)
    added = timeline.added[1]
    full_time = {"minute": 90, "half": 2, "addedTime": added, **teams_meta}
    full_time["finalScore"] = f"{score[0]}-{score[1]}"
    events.append(
        PlannedEvent(
            timeline.full_time_at_s, 2, 90, added, "match_end", teams[0].team_id, None, full_time
        )
    )
    return events


def _substitute(
    rng: random.Random,
    incident: _Incident,
    side: _Side,
    injured: Player | None,
    emit: Callable[..., None],
) -> None:
    if side.substitutions >= MAX_SUBSTITUTIONS or not side.bench:
        return
    if incident.note == "injury":
        if injured is None or injured not in side.on_pitch:
            return
        leaving: Player | None = injured
    else:
        fresh = [player for player in side.on_pitch if player.player_id not in side.came_on]
        leaving = _choose(rng, fresh, "sub_off")
    if leaving is None:
        return
    same_position = [player for player in side.bench if player.position == leaving.position]
    outfield = [player for player in side.bench if player.position != "GK"]
    choices = same_position or (outfield if leaving.position != "GK" else side.bench)
    if not choices:
        return
    coming = rng.choice(choices)
    side.bench.remove(coming)
    side.on_pitch[side.on_pitch.index(leaving)] = coming
    side.came_on.add(coming.player_id)
    side.substitutions += 1
    emit(
        incident,
        "substitution",
        coming,
        playerOutId=leaving.player_id,
        playerOutName=leaving.name,
        reason=incident.note or "tactical",
    )


def teams_of(plan: Sequence[PlannedEvent]) -> tuple[str, str]:
    """(home, away) team ids, as the kick-off event names them."""
    start = plan[0].metadata
    return str(start["homeTeam"]), str(start["awayTeam"])


def credited_team(event: PlannedEvent, home: str, away: str) -> str | None:
    """The team a scoring event counts for: an own goal counts for the other team."""
    if event.event_type in ("goal", "penalty_goal"):
        return event.team_id
    if event.event_type == "own_goal":
        return away if event.team_id == home else home
    return None


def score_after(plan: Sequence[PlannedEvent]) -> tuple[int, int]:
    """(home, away) goals over the given events."""
    home, away = teams_of(plan)
    credits = [credited_team(event, home, away) for event in plan]
    return credits.count(home), credits.count(away)


def plan_reads(
    plan: Sequence[PlannedEvent], readers: int, spike_factor: float
) -> list[tuple[float, bool]]:
    """When the dashboards poll the metrics, as (at_s, during a goal spike), in time order.

    Each reader polls once per match minute; for `SPIKE_WINDOW_S` after a goal every reader polls
    `spike_factor` times as often, so the read rate inside a spike window is multiplied by it.
    """
    if readers <= 0 or not plan:
        return []
    end = plan[-1].at_s
    windows: list[list[float]] = []
    for event in plan:
        if event.event_type in SCORING_TYPES:
            start, stop = event.at_s, min(event.at_s + SPIKE_WINDOW_S, end)
            if windows and start <= windows[-1][1]:
                windows[-1][1] = max(windows[-1][1], stop)
            else:
                windows.append([start, stop])
    reads: list[tuple[float, bool]] = []
    for reader in range(readers):
        at = reader * POLL_INTERVAL_S / readers
        while at <= end:
            if not any(start <= at < stop for start, stop in windows):
                reads.append((at, False))
            at += POLL_INTERVAL_S
    interval = POLL_INTERVAL_S / spike_factor
    for start, stop in windows:
        for reader in range(readers):
            at = start + reader * interval / readers
            while at < stop:
                reads.append((at, True))
                at += interval
    return sorted(reads)


# --- sending -----------------------------------------------------------------------------------


class FatalError(Exception):
    """The run cannot go on: the service is unreachable or refuses the API key."""


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    match_id: str
    api_key: str
    speed: float = 60.0
    readers: int = 10
    spike_factor: float = 10.0
    max_attempts: int = 8
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    max_retry_after_s: float = 30.0
    verify_wait_s: float = 5.0
    read_concurrency: int = 32


@dataclass(slots=True)
class EventStats:
    sent: int = 0  # events posted at least once
    accepted: int = 0  # events the service confirmed stored (202), replays included
    duplicates: int = 0  # of those, 202 with Idempotent-Replayed: true
    retries: int = 0  # extra POST attempts
    failures: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ReadStats:
    sent: int = 0
    spike: int = 0
    ok: int = 0
    not_found: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)


@dataclass(slots=True)
class SimulationResult:
    match_id: str
    home_name: str
    away_name: str
    score: tuple[int, int]
    full_time: str
    planned: int
    events: EventStats
    reads: ReadStats
    already_counted: int  # events the match had before this run (a reused --match-id)
    metrics: dict[str, Any] | None
    elapsed_s: float
    speed: float
    spike_factor: float

    @property
    def expected_total(self) -> int:
        return self.already_counted + self.events.accepted

    @property
    def counted(self) -> int | None:
        return None if self.metrics is None else int(self.metrics["totalEvents"])

    @property
    def ok(self) -> bool:
        return not self.events.failures and self.counted == self.expected_total


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _backoff_s(config: SimulationConfig, attempt: int) -> float:
    ceiling = min(config.max_backoff_s, config.backoff_s * 2.0 ** (attempt - 1))
    return ceiling * random.uniform(0.5, 1.0)


def _problem_detail(response: httpx.Response) -> str:
    try:
        problem = response.json()
    except ValueError:
        return response.text[:200]
    if not isinstance(problem, dict):
        return str(problem)[:200]
    detail = str(problem.get("detail") or problem.get("title") or "")
    errors = problem.get("errors")
    if errors:
        detail += " " + "; ".join(f"{e.get('field')}: {e.get('message')}" for e in errors)
    return detail


async def post_event(
    client: httpx.AsyncClient,
    event: PlannedEvent,
    config: SimulationConfig,
    stats: EventStats,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> bool:
    """Post one event until it is stored; every attempt sends the same eventId and bytes."""
    event_id = str(uuid.uuid4())
    body = json.dumps(event.body(config.match_id, event_id, datetime.now(UTC))).encode()
    headers = {"X-API-Key": config.api_key, "Content-Type": "application/json"}
    stats.sent += 1
    attempt, reason = 0, ""
    while attempt < config.max_attempts:
        attempt += 1
        if attempt > 1:
            stats.retries += 1
        try:
            response = await client.post("/api/events", content=body, headers=headers)
        except httpx.TransportError as exc:  # a timeout or a lost connection: maybe stored
            reason = f"{type(exc).__name__}: {exc}"
            wait = _backoff_s(config, attempt)
        else:
            status = response.status_code
            if status == 202:
                stats.accepted += 1
                if response.headers.get("Idempotent-Replayed", "").lower() == "true":
                    stats.duplicates += 1
                return True
            reason = f"{status} {_problem_detail(response)}"
            if status in (401, 403):
                raise FatalError(f"the service refused the API key: {reason}")
            if status == 409:
                stats.failures.append(
                    f"BUG: 409 for eventId {event_id} ({event.event_type} {event.clock}), which "
                    f"this run only ever sent with one payload: {reason}"
                )
                return False
            if status not in (429, 503) and status < 500:
                break  # the service will never take this body: retrying cannot help
            after = retry_after_s(response.headers.get("Retry-After"))
            wait = _backoff_s(config, attempt) if after is None else after
        if attempt < config.max_attempts:
            await sleep(min(wait, config.max_retry_after_s))
    stats.failures.append(
        f"{event.event_type} {event.clock} eventId {event_id}: not stored after "
        f"{attempt} attempt(s): {reason}"
    )
    return False


async def fetch_metrics(
    client: httpx.AsyncClient, config: SimulationConfig
) -> dict[str, Any] | None:
    """The match's metrics, or None when nothing is counted for it yet (404)."""
    try:
        response = await client.get(
            f"/api/matches/{config.match_id}/metrics", headers={"X-API-Key": config.api_key}
        )
    except httpx.TransportError as exc:
        raise FatalError(f"cannot reach the service: {type(exc).__name__}: {exc}") from None
    if response.status_code == 404:
        return None
    if response.status_code in (401, 403):
        raise FatalError(f"the service refused the API key: {_problem_detail(response)}")
    if response.status_code != 200:
        raise FatalError(f"GET metrics answered {response.status_code}: {response.text[:200]}")
    metrics: dict[str, Any] = response.json()
    return metrics


async def wait_for_count(
    client: httpx.AsyncClient, config: SimulationConfig, expected: int
) -> dict[str, Any] | None:
    """Poll the metrics until they count `expected` events or `verify_wait_s` has passed.

    Once the count is right, wait a little longer (at most `LATENCY_SETTLE_S`) for the ingest
    latencies, which the service adds to the summary about once a second.
    """
    deadline = time.monotonic() + config.verify_wait_s
    counted_at: float | None = None
    while True:
        metrics = await fetch_metrics(client, config)
        now = time.monotonic()
        if metrics is not None and metrics["totalEvents"] == expected:
            counted_at = counted_at or now
            samples = metrics.get("responseTimeMs", {}).get("samples", expected)
            if samples >= expected or now - counted_at >= LATENCY_SETTLE_S:
                return metrics
        if now >= deadline:
            return metrics
        await asyncio.sleep(0.1)


async def _read_once(
    client: httpx.AsyncClient, config: SimulationConfig, stats: ReadStats, spike: bool
) -> None:
    stats.sent += 1
    stats.spike += spike
    started = time.perf_counter()
    try:
        response = await client.get(
            f"/api/matches/{config.match_id}/metrics", headers={"X-API-Key": config.api_key}
        )
    except httpx.TransportError:
        stats.errors += 1
        return
    if response.status_code == 200:
        stats.ok += 1
        stats.latencies_ms.append((time.perf_counter() - started) * 1000)
    elif response.status_code == 404:  # nothing counted yet, right after kick-off
        stats.not_found += 1
    else:
        stats.errors += 1


async def _wait_until(started: float, at_s: float, speed: float) -> None:
    if speed <= 0:
        await asyncio.sleep(0)
        return
    delay = started + at_s / speed - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def _run_readers(
    client: httpx.AsyncClient,
    schedule: Sequence[tuple[float, bool]],
    config: SimulationConfig,
    stats: ReadStats,
    started: float,
) -> None:
    slots = asyncio.Semaphore(config.read_concurrency)
    tasks: set[asyncio.Task[None]] = set()

    async def read(spike: bool) -> None:
        try:
            await _read_once(client, config, stats, spike)
        finally:
            slots.release()

    try:
        for at_s, spike in schedule:
            await _wait_until(started, at_s, config.speed)
            await slots.acquire()
            task = asyncio.create_task(read(spike))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


# --- progress ----------------------------------------------------------------------------------


def render_progress(
    done: int, total: int, clock: str, score: tuple[int, int], retries: int, reads: int
) -> str:
    """One plain-text progress line, e.g. `[#####.....] 45' 2-1 events 120/240 retries 3`."""
    width = 20
    filled = width if total <= 0 else min(width, round(width * done / total))
    bar = "#" * filled + "." * (width - filled)
    line = f"[{bar}] {clock} {score[0]}-{score[1]} events {done}/{total} retries {retries}"
    return f"{line} reads {reads}" if reads else line


class Progress:
    """Redraws the progress line on a terminal; elsewhere prints it every few seconds."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self._tty = stream is not None and stream.isatty()
        self._every_s = 0.1 if self._tty else 5.0
        self._last = 0.0
        self._width = 0

    def show(self, line: str, *, force: bool = False) -> None:
        if self._stream is None:
            return
        now = time.monotonic()
        if not force and now - self._last < self._every_s:
            return
        self._last = now
        if self._tty:
            self._stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def finish(self, line: str) -> None:
        self.show(line, force=True)
        if self._stream is not None and self._tty:
            self._stream.write("\n")
            self._stream.flush()


# --- the run -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _MatchState:
    clock: str = "0'"
    score: tuple[int, int] = (0, 0)
    done: int = 0


async def run_simulation(
    client: httpx.AsyncClient,
    plan: Sequence[PlannedEvent],
    config: SimulationConfig,
    progress: Progress | None = None,
) -> SimulationResult:
    """Play `plan` against the service behind `client` (any httpx.AsyncClient with a base URL)."""
    progress = progress or Progress(None)
    before = await fetch_metrics(client, config)
    already_counted = 0 if before is None else int(before["totalEvents"])
    events, reads = EventStats(), ReadStats()
    started = time.monotonic()
    state = _MatchState()

    def line() -> str:
        clock = state.clock
        if config.speed > 0:  # the live match clock, quiet spells and half-time included
            clock = live_clock(plan, (time.monotonic() - started) * config.speed)
        return render_progress(
            state.done, len(plan), clock, state.score, events.retries, reads.sent
        )

    async def tick() -> None:
        while True:
            progress.show(line())
            await asyncio.sleep(0.2)

    schedule = plan_reads(plan, config.readers, config.spike_factor)
    readers = asyncio.create_task(_run_readers(client, schedule, config, reads, started))
    ticker = asyncio.create_task(tick())
    try:
        for index, event in enumerate(plan):
            await _wait_until(started, event.at_s, config.speed)
            await post_event(client, event, config, events)
            state.clock, state.done = event.clock, index + 1
            state.score = score_after(plan[: index + 1])
            progress.show(line())
        await readers
    finally:
        for task in (readers, ticker):
            task.cancel()
        await asyncio.gather(readers, ticker, return_exceptions=True)
    progress.finish(line())
    elapsed = time.monotonic() - started
    metrics = await wait_for_count(client, config, already_counted + events.accepted)
    start, end = plan[0].metadata, plan[-1]
    return SimulationResult(
        match_id=config.match_id,
        home_name=str(start["homeTeamName"]),
        away_name=str(start["awayTeamName"]),
        score=score_after(plan),
        full_time=end.clock,
        planned=len(plan),
        events=events,
        reads=reads,
        already_counted=already_counted,
        metrics=metrics,
        elapsed_s=elapsed,
        speed=config.speed,
        spike_factor=config.spike_factor,
    )


def _percentile(values: Sequence[float], rank: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(rank / 100 * len(ordered)) - 1)]


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:g} ms"


def format_summary(result: SimulationResult) -> str:
    """The closing report: what was sent, what the service says, and whether they agree."""
    events, reads = result.events, result.reads
    home, away = result.score
    lines = [
        f"match     {result.home_name} {home}-{away} {result.away_name}  "
        f"(full time {result.full_time}, matchId {result.match_id})",
        f"events    sent {events.sent}/{result.planned}  accepted {events.accepted}  "
        f"duplicates {events.duplicates}  retries {events.retries}  "
        f"failures {len(events.failures)}",
    ]
    if reads.sent:
        latency = ""
        if reads.latencies_ms:
            latency = (
                f", p50 {_percentile(reads.latencies_ms, 50):.1f} ms"
                f" p99 {_percentile(reads.latencies_ms, 99):.1f} ms"
            )
        lines.append(
            f"reads     {reads.sent} GET /metrics ({reads.spike} in goal spikes at "
            f"x{result.spike_factor:g}): 200 {reads.ok}, 404 {reads.not_found}, "
            f"errors {reads.errors}{latency}"
        )
    pace = "as fast as possible" if result.speed <= 0 else f"speed {result.speed:g}"
    lines.append(f"elapsed   {result.elapsed_s:.1f} s ({pace})")
    metrics = result.metrics
    if metrics is None:
        lines.append("metrics   none: the service has counted no event of this match")
    else:
        by_type = ", ".join(f"{k} {v}" for k, v in sorted(metrics["eventsByType"].items()))
        by_team = ", ".join(f"{k} {v}" for k, v in sorted(metrics["eventsByTeam"].items()))
        response, lag = metrics["responseTimeMs"], metrics["processingLagMs"]
        peak = metrics["peakEngagementPeriods"][:1]
        lines += [
            f"metrics   status {metrics['status']}  totalEvents {metrics['totalEvents']}",
            f"          by type: {by_type}",
            f"          by team: {by_team}",
            f"          ingest response p50 {_ms(response['p50'])}  p95 {_ms(response['p95'])}"
            f"  p99 {_ms(response['p99'])} ({response['samples']} samples)",
            f"          processing lag p50 {_ms(lag['p50'])}  p95 {_ms(lag['p95'])}"
            f"  p99 {_ms(lag['p99'])}",
        ]
        if peak:
            lines.append(
                f"          busiest minute {peak[0]['minute']} ({peak[0]['events']} events)"
            )
    before = (
        f" + {result.already_counted} counted before this run" if result.already_counted else ""
    )
    verdict = "OK" if result.counted == result.expected_total else "MISMATCH"
    lines.append(
        f"check     totalEvents {result.counted} vs accepted {events.accepted}{before}: {verdict}"
    )
    lines += [f"FAILURE   {failure}" for failure in events.failures[:20]]
    if len(events.failures) > 20:
        lines.append(f"FAILURE   ... and {len(events.failures) - 20} more")
    return "\n".join(lines)


# --- command line ------------------------------------------------------------------------------


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
            print(f"\nsimulate_match: {exc}", file=sys.stderr)
            return 2
    print(format_summary(result))
    return 0 if result.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(_main(args))
    except KeyboardInterrupt:
        print("\nsimulate_match: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
