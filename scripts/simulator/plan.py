"""The match plan (pure): a seeded, realistic 90-minute football match as a list of events.

Kick-off, fouls and their free kicks and cards, corners, offsides, injuries, VAR checks, goals
(penalties and own goals too), substitutions and full time, each placed on the wall-clock timeline
of the match (stoppage time and the half-time break included), and the dashboards' read schedule
with its goal spikes. Same seed, same match; no I/O. The squads are fictional.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

HALF_S = 45 * 60
HALFTIME_BREAK_S = 15 * 60
SPIKE_WINDOW_S = 30.0
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


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
