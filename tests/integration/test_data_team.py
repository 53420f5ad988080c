"""The data team's aggregations (docs/data-team.md) on a real replica set, with exact answers.

A small known matchday goes in through the real ingest path (the group-commit batcher) and the
aggregator (which fills `match_summaries` and the time-series `match_events`); then every pipeline
of the guide runs and must give exactly the expected rows. The pipelines below are the guide's:
`test_the_guide_shows_exactly_these_pipelines` reads the mongosh blocks of the guide and fails
when either side changes without the other.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from fanfinity.api.validation import decode_event
from fanfinity.pipeline.ingest import WriteOutcome, event_document
from fanfinity.storage.engine import Engine
from fanfinity.storage.models import EVENTS, MATCH_EVENTS, MATCH_SUMMARIES
from tests.integration.conftest import (
    eventually,
    ingest,
    new_aggregator,
    running,
    running_batcher,
    wait_for_exact_summaries,
)

pytestmark = pytest.mark.integration

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "data-team.md"

# --- the pipelines (kept identical to the guide's mongosh blocks) ---------------------------------

SCORING = ["goal", "penalty_goal", "own_goal"]


def goals_per_team(match_ids: list[str]) -> list[dict[str, Any]]:
    """Goals each team scored in each match; an own goal counts for the other team."""
    return [
        {"$match": {"matchId": {"$in": match_ids}}},
        {
            "$group": {
                "_id": {"matchId": "$matchId", "teamId": "$teamId"},
                "scored": {
                    "$sum": {"$cond": [{"$in": ["$eventType", ["goal", "penalty_goal"]]}, 1, 0]}
                },
                "ownGoals": {"$sum": {"$cond": [{"$eq": ["$eventType", "own_goal"]}, 1, 0]}},
            }
        },
        {
            "$group": {
                "_id": "$_id.matchId",
                "teams": {
                    "$push": {
                        "teamId": "$_id.teamId",
                        "scored": "$scored",
                        "ownGoals": "$ownGoals",
                    }
                },
                "ownGoals": {"$sum": "$ownGoals"},
            }
        },
        {"$unwind": "$teams"},
        {
            "$project": {
                "_id": 0,
                "matchId": "$_id",
                "teamId": "$teams.teamId",
                "goals": {
                    "$add": ["$teams.scored", {"$subtract": ["$ownGoals", "$teams.ownGoals"]}]
                },
            }
        },
        {"$sort": {"matchId": 1, "teamId": 1}},
    ]


def busiest_minutes(day_start: datetime, day_end: datetime, top_n: int) -> list[dict[str, Any]]:
    """The busiest minutes over all matches of a day, from the time-series copy, deduplicated."""
    return [
        {"$match": {"timestamp": {"$gte": day_start, "$lt": day_end}}},
        {
            "$group": {
                "_id": "$eventId",
                "timestamp": {"$first": "$timestamp"},
                "matchId": {"$first": "$meta.matchId"},
            }
        },
        {
            "$group": {
                "_id": {"$dateTrunc": {"date": "$timestamp", "unit": "minute"}},
                "events": {"$sum": 1},
                "matches": {"$addToSet": "$matchId"},
            }
        },
        {"$sort": {"events": -1, "_id": 1}},
        {"$limit": top_n},
        {
            "$project": {
                "_id": 0,
                "minute": "$_id",
                "events": 1,
                "matches": {"$sortArray": {"input": "$matches", "sortBy": 1}},
            }
        },
    ]


def cards_by_player(day_start: datetime, day_end: datetime) -> list[dict[str, Any]]:
    """Yellow and red cards per player over a period, most sent-off and booked first."""
    return [
        {
            "$match": {
                "eventType": {"$in": ["yellow_card", "red_card"]},
                "timestamp": {"$gte": day_start, "$lt": day_end},
                "playerId": {"$type": "string"},
            }
        },
        {
            "$group": {
                "_id": "$playerId",
                "teams": {"$addToSet": "$teamId"},
                "yellow": {"$sum": {"$cond": [{"$eq": ["$eventType", "yellow_card"]}, 1, 0]}},
                "red": {"$sum": {"$cond": [{"$eq": ["$eventType", "red_card"]}, 1, 0]}},
            }
        },
        {"$sort": {"red": -1, "yellow": -1, "_id": 1}},
        {
            "$project": {
                "_id": 0,
                "playerId": "$_id",
                "teams": {"$sortArray": {"input": "$teams", "sortBy": 1}},
                "yellow": 1,
                "red": 1,
            }
        },
    ]


def minutes_around_goals(day_start: datetime, day_end: datetime) -> list[dict[str, Any]]:
    """For every goal of a day, the match's events per minute from 5 minutes before to 5 after."""
    window = {
        "$match": {
            "$expr": {
                "$and": [
                    {"$eq": ["$meta.matchId", "$$matchId"]},
                    {
                        "$gte": [
                            "$timestamp",
                            {
                                "$dateSubtract": {
                                    "startDate": "$$goalMinute",
                                    "unit": "minute",
                                    "amount": 5,
                                }
                            },
                        ]
                    },
                    {
                        "$lt": [
                            "$timestamp",
                            {
                                "$dateAdd": {
                                    "startDate": "$$goalMinute",
                                    "unit": "minute",
                                    "amount": 6,
                                }
                            },
                        ]
                    },
                ]
            }
        }
    }
    return [
        {
            "$match": {
                "eventType": {"$in": SCORING},
                "timestamp": {"$gte": day_start, "$lt": day_end},
            }
        },
        {
            "$lookup": {
                "from": "match_events",
                "let": {
                    "matchId": "$matchId",
                    "goalMinute": {"$dateTrunc": {"date": "$timestamp", "unit": "minute"}},
                },
                "pipeline": [
                    window,
                    {"$group": {"_id": "$eventId", "timestamp": {"$first": "$timestamp"}}},
                    {
                        "$group": {
                            "_id": {"$dateTrunc": {"date": "$timestamp", "unit": "minute"}},
                            "events": {"$sum": 1},
                        }
                    },
                    {
                        "$project": {
                            "_id": 0,
                            "minute": "$_id",
                            "offset": {
                                "$dateDiff": {
                                    "startDate": "$$goalMinute",
                                    "endDate": "$_id",
                                    "unit": "minute",
                                }
                            },
                            "events": 1,
                        }
                    },
                    {"$sort": {"minute": 1}},
                ],
                "as": "minutes",
            }
        },
        {
            "$project": {
                "_id": 0,
                "eventId": "$_id",
                "matchId": 1,
                "eventType": 1,
                "teamId": 1,
                "timestamp": 1,
                "minutes": 1,
            }
        },
        {"$sort": {"matchId": 1, "timestamp": 1}},
    ]


def late_events(match_ids: list[str]) -> list[dict[str, Any]]:
    """Events timed, or received, after their match's full-time whistle (its match_end)."""
    return [
        {"$match": {"matchId": {"$in": match_ids}}},
        {
            "$setWindowFields": {
                "partitionBy": "$matchId",
                "output": {
                    "fullTimeAt": {
                        "$min": {
                            "$cond": [{"$eq": ["$eventType", "match_end"]}, "$timestamp", None]
                        }
                    }
                },
            }
        },
        {
            "$match": {
                "eventType": {"$ne": "match_end"},
                "fullTimeAt": {"$ne": None},
                "$expr": {
                    "$or": [
                        {"$gt": ["$timestamp", "$fullTimeAt"]},
                        {"$gt": ["$receivedAt", "$fullTimeAt"]},
                    ]
                },
            }
        },
        {
            "$project": {
                "_id": 0,
                "eventId": "$_id",
                "matchId": 1,
                "eventType": 1,
                "timestamp": 1,
                "receivedAt": 1,
                "fullTimeAt": 1,
                "afterFullTime": {"$gt": ["$timestamp", "$fullTimeAt"]},
                "arrivedAfterFullTime": {"$gt": ["$receivedAt", "$fullTimeAt"]},
            }
        },
        {"$sort": {"matchId": 1, "timestamp": 1}},
    ]


def minute_series(match_id: str) -> list[dict[str, Any]]:
    """One match's events per minute, read from its summary document (one document read)."""
    return [
        {"$match": {"_id": match_id}},
        {"$project": {"_id": 0, "minute": {"$objectToArray": "$perMinute"}}},
        {"$unwind": "$minute"},
        {
            "$project": {
                "minute": {
                    "$dateFromString": {"dateString": "$minute.k", "format": "%Y-%m-%dT%H:%M"}
                },
                "events": "$minute.v",
            }
        },
        {"$sort": {"minute": 1}},
    ]


# --- the matchday -----------------------------------------------------------------------------

DERBY, CLASICO, FRIENDLY = "derby-2025-05-10", "clasico-2025-05-10", "friendly-2025-05-09"
HILAL, NASSR, ITTIHAD, AHLI = "al-hilal", "al-nassr", "al-ittihad", "al-ahli"
SHABAB, FATEH = "al-shabab", "al-fateh"
MATCH_IDS = [CLASICO, DERBY]
DAY_START = datetime(2025, 5, 10, tzinfo=UTC)
DAY_END = DAY_START + timedelta(days=1)


def at(clock: str, day: str = "2025-05-10") -> datetime:
    return datetime.fromisoformat(f"{day}T{clock}+00:00")


# (match, timestamp, type, team, player, received): received is a second later unless given.
MATCHDAY: list[tuple[str, datetime, str, str, str | None, datetime | None]] = [
    # Derby, Al-Hilal 2-2 Al-Nassr: Al-Nassr's first goal is an Al-Hilal own goal.
    (DERBY, at("18:00:00"), "match_start", HILAL, None, None),
    (DERBY, at("18:07:10"), "foul", NASSR, "an-4", None),
    (DERBY, at("18:07:30"), "free_kick", HILAL, "ah-10", None),
    (DERBY, at("18:12:00"), "goal", HILAL, "ah-9", None),
    (DERBY, at("18:12:20"), "foul", NASSR, "an-6", None),
    (DERBY, at("18:12:25"), "free_kick", HILAL, "ah-8", None),
    (DERBY, at("18:12:40"), "yellow_card", NASSR, "an-4", None),
    (DERBY, at("18:20:00"), "own_goal", HILAL, "ah-5", None),
    (DERBY, at("18:31:00"), "corner", NASSR, "an-7", None),
    (DERBY, at("18:33:00"), "penalty_goal", NASSR, "an-9", None),
    (DERBY, at("18:58:00"), "yellow_card", HILAL, "ah-6", None),
    (DERBY, at("19:10:00"), "yellow_card", NASSR, "an-4", None),
    (DERBY, at("19:10:05"), "red_card", NASSR, "an-4", None),
    (DERBY, at("19:15:00"), "goal", HILAL, "ah-9", None),
    (DERBY, at("19:15:30"), "penalty_missed", NASSR, "an-10", None),
    (DERBY, at("19:50:00"), "match_end", HILAL, None, None),
    # Timed before full time but delivered after it (a producer that buffered it).
    (DERBY, at("19:49:30"), "corner", HILAL, "ah-7", at("19:52:00")),
    # Shown after full time.
    (DERBY, at("19:51:00"), "yellow_card", NASSR, "an-8", None),
    # Clasico, Al-Ittihad 0-2 Al-Ahli: the second is an Al-Ittihad own goal.
    (CLASICO, at("19:00:00"), "match_start", ITTIHAD, None, None),
    (CLASICO, at("19:05:00"), "goal", AHLI, "ahl-11", None),
    (CLASICO, at("19:05:20"), "corner", ITTIHAD, "itt-7", None),
    (CLASICO, at("19:06:00"), "foul", AHLI, "ahl-4", None),
    (CLASICO, at("19:10:30"), "corner", ITTIHAD, "itt-7", None),
    (CLASICO, at("19:40:00"), "red_card", ITTIHAD, "itt-3", None),
    (CLASICO, at("19:44:00"), "own_goal", ITTIHAD, "itt-4", None),
    (CLASICO, at("20:50:00"), "match_end", ITTIHAD, None, None),
    # The day before: a busy minute, a goal and a card that the matchday queries must leave out.
    (FRIENDLY, at("22:00:00", "2025-05-09"), "match_start", SHABAB, None, None),
    (FRIENDLY, at("22:00:10", "2025-05-09"), "goal", SHABAB, "sh-9", None),
    (FRIENDLY, at("22:00:20", "2025-05-09"), "foul", FATEH, "fa-3", None),
    (FRIENDLY, at("22:00:30", "2025-05-09"), "free_kick", SHABAB, "sh-8", None),
    (FRIENDLY, at("22:00:40", "2025-05-09"), "yellow_card", FATEH, "fa-3", None),
    (FRIENDLY, at("22:00:50", "2025-05-09"), "corner", SHABAB, "sh-7", None),
    (FRIENDLY, at("23:50:00", "2025-05-09"), "match_end", SHABAB, None, None),
]


def stored(
    match_id: str,
    timestamp: datetime,
    event_type: str,
    team_id: str,
    player_id: str | None,
    received_at: datetime | None,
) -> dict[str, Any]:
    """The `events` document of a posted event, decoded exactly as `POST /api/events` does."""
    body: dict[str, Any] = {
        "eventId": str(uuid.uuid4()),
        "matchId": match_id,
        "eventType": event_type,
        "timestamp": timestamp.isoformat(),
        "teamId": team_id,
    }
    if player_id is not None:
        body["playerId"] = player_id
    event = decode_event(msgspec.json.encode(body), datetime.now(UTC))
    return event_document(event, received_at or timestamp + timedelta(seconds=1))


async def copied_event_ids(engine: Engine) -> set[str]:
    rows = await run(engine, MATCH_EVENTS, [{"$group": {"_id": "$eventId"}}])
    return {row["_id"] for row in rows}


@pytest.fixture
async def matchday(engine: Engine) -> dict[str, dict[str, Any]]:
    """The matchday ingested, counted and copied; returns the stored events by (match, time)."""
    documents = [stored(*row) for row in MATCHDAY]
    async with running_batcher(engine) as batcher:
        assert await ingest(batcher, documents) == [WriteOutcome.ACCEPTED] * len(documents)
    every_id = {document["_id"] for document in documents}
    aggregator = new_aggregator(engine)
    async with running(aggregator) as task:
        await wait_for_exact_summaries(engine, watch=[task])
        await eventually(
            lambda: copied_event_ids(engine),
            lambda ids: ids == every_id,
            what="every event copied to match_events",
            watch=[task],
        )
    by_key = {f"{d['matchId']} {d['timestamp']:%H:%M:%S}": d for d in documents}
    # The copy is at-least-once: a batch retried after a failed commit is copied again.
    redelivered = [by_key[f"{DERBY} 19:15:00"], by_key[f"{DERBY} 19:15:30"]]
    await engine.match_events.copy(redelivered)
    copies = await engine.database[MATCH_EVENTS].count_documents({})
    assert copies == len(documents) + len(redelivered)
    return by_key


async def run(engine: Engine, collection: str, pipeline: list[dict[str, Any]]) -> list[Any]:
    cursor = engine.database[collection].aggregate(pipeline)
    rows: list[Any] = await cursor.to_list(None)
    return rows


# --- the answers ------------------------------------------------------------------------------


async def test_goals_per_team_credit_own_goals_to_the_other_team(
    engine: Engine, matchday: dict[str, dict[str, Any]]
) -> None:
    rows = await run(engine, EVENTS, goals_per_team(MATCH_IDS))

    assert rows == [
        {"matchId": CLASICO, "teamId": AHLI, "goals": 2},
        {"matchId": CLASICO, "teamId": ITTIHAD, "goals": 0},
        {"matchId": DERBY, "teamId": HILAL, "goals": 2},
        {"matchId": DERBY, "teamId": NASSR, "goals": 2},
    ]


async def test_busiest_minutes_of_the_matchday_count_each_event_once(
    engine: Engine, matchday: dict[str, dict[str, Any]]
) -> None:
    rows = await run(engine, MATCH_EVENTS, busiest_minutes(DAY_START, DAY_END, 3))

    # Without the dedupe, 19:15 (two events, both copied twice) would come second with 4;
    # without the date range, the friendly's 22:00 on the day before (6 events) would lead.
    assert rows == [
        {"minute": at("18:12:00"), "events": 4, "matches": [DERBY]},
        {"minute": at("19:10:00"), "events": 3, "matches": [CLASICO, DERBY]},
        {"minute": at("18:07:00"), "events": 2, "matches": [DERBY]},
    ]


async def test_cards_by_player_over_the_matchday(
    engine: Engine, matchday: dict[str, dict[str, Any]]
) -> None:
    rows = await run(engine, EVENTS, cards_by_player(DAY_START, DAY_END))

    assert rows == [
        {"playerId": "an-4", "teams": [NASSR], "yellow": 2, "red": 1},
        {"playerId": "itt-3", "teams": [ITTIHAD], "yellow": 0, "red": 1},
        {"playerId": "ah-6", "teams": [HILAL], "yellow": 1, "red": 0},
        {"playerId": "an-8", "teams": [NASSR], "yellow": 1, "red": 0},
    ]


async def test_events_per_minute_around_each_goal(
    engine: Engine, matchday: dict[str, dict[str, Any]]
) -> None:
    rows = await run(engine, EVENTS, minutes_around_goals(DAY_START, DAY_END))

    def goal(key: str, *minutes: tuple[str, int, int]) -> dict[str, Any]:
        document = matchday[key]
        return {
            "eventId": document["_id"],
            "matchId": document["matchId"],
            "eventType": document["eventType"],
            "teamId": document["teamId"],
            "timestamp": document["timestamp"],
            "minutes": [
                {"minute": at(f"{clock}:00"), "offset": offset, "events": events}
                for clock, offset, events in minutes
            ],
        }

    assert rows == [
        goal(f"{CLASICO} 19:05:00", ("19:00", -5, 1), ("19:05", 0, 2), ("19:06", 1, 1),
             ("19:10", 5, 1)),
        goal(f"{CLASICO} 19:44:00", ("19:40", -4, 1), ("19:44", 0, 1)),
        goal(f"{DERBY} 18:12:00", ("18:07", -5, 2), ("18:12", 0, 4)),
        goal(f"{DERBY} 18:20:00", ("18:20", 0, 1)),
        goal(f"{DERBY} 18:33:00", ("18:31", -2, 1), ("18:33", 0, 1)),
        goal(f"{DERBY} 19:15:00", ("19:10", -5, 2), ("19:15", 0, 2)),  # its copies deduplicated
    ]  # fmt: skip


async def test_late_events_after_full_time(
    engine: Engine, matchday: dict[str, dict[str, Any]]
) -> None:
    rows = await run(engine, EVENTS, late_events(MATCH_IDS))

    corner, card = matchday[f"{DERBY} 19:49:30"], matchday[f"{DERBY} 19:51:00"]
    assert rows == [
        {
            "eventId": corner["_id"],
            "matchId": DERBY,
            "eventType": "corner",
            "timestamp": at("19:49:30"),
            "receivedAt": at("19:52:00"),
            "fullTimeAt": at("19:50:00"),
            "afterFullTime": False,
            "arrivedAfterFullTime": True,
        },
        {
            "eventId": card["_id"],
            "matchId": DERBY,
            "eventType": "yellow_card",
            "timestamp": at("19:51:00"),
            "receivedAt": at("19:51:01"),
            "fullTimeAt": at("19:50:00"),
            "afterFullTime": True,
            "arrivedAfterFullTime": True,
        },
    ]


async def test_a_match_minute_by_minute_from_its_summary(
    engine: Engine, matchday: dict[str, dict[str, Any]]
) -> None:
    rows = await run(engine, MATCH_SUMMARIES, minute_series(DERBY))

    expected = [
        ("18:00", 1), ("18:07", 2), ("18:12", 4), ("18:20", 1), ("18:31", 1), ("18:33", 1),
        ("18:58", 1), ("19:10", 2), ("19:15", 2), ("19:49", 1), ("19:50", 1), ("19:51", 1),
    ]  # fmt: skip
    assert rows == [{"minute": at(f"{clock}:00"), "events": n} for clock, n in expected]


# --- the guide shows these very pipelines -----------------------------------------------------

DOC_PARAMETERS: dict[str, Any] = {
    "matchIds": MATCH_IDS,
    "matchId": DERBY,
    "dayStart": DAY_START,
    "dayEnd": DAY_END,
    "topN": 3,
}
TESTED: dict[str, tuple[str, Callable[[], list[dict[str, Any]]]]] = {
    "goals-per-team": (EVENTS, lambda: goals_per_team(MATCH_IDS)),
    "busiest-minutes": (MATCH_EVENTS, lambda: busiest_minutes(DAY_START, DAY_END, 3)),
    "cards-by-player": (EVENTS, lambda: cards_by_player(DAY_START, DAY_END)),
    "minutes-around-goals": (EVENTS, lambda: minutes_around_goals(DAY_START, DAY_END)),
    "late-events": (EVENTS, lambda: late_events(MATCH_IDS)),
    "minute-series": (MATCH_SUMMARIES, lambda: minute_series(DERBY)),
}

_BLOCK = re.compile(r"```js\n(.*?)```", re.DOTALL)
_NAME = re.compile(r"^// pipeline: ([\w-]+)$", re.MULTILINE)
_CALL = re.compile(r"db\.(\w+)\.aggregate\((.*)\);?\s*$", re.DOTALL)
_CONST = re.compile(r"^const (\w+) = ", re.MULTILINE)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|//[^\n]*|[$A-Za-z_][$\w]*|\s+|.', re.DOTALL)
_PLACEHOLDER = "\x00parameter:"


def _to_json(source: str) -> str:
    """mongosh object literals -> JSON: quote bare keys, drop comments, mark parameters."""
    tokens = [token for token in _TOKEN.findall(source) if not token.startswith("//")]
    out: list[str] = []
    for index, token in enumerate(tokens):
        if re.fullmatch(r"[$A-Za-z_][$\w]*", token) and token not in ("true", "false", "null"):
            following = next((t for t in tokens[index + 1 :] if not t.isspace()), "")
            out.append(json.dumps(token if following == ":" else _PLACEHOLDER + token))
        else:
            out.append(token)
    return re.sub(r",(\s*[}\]])", r"\1", "".join(out))


def _bind(value: Any, parameters: dict[str, Any], used: set[str]) -> Any:
    if isinstance(value, str) and value.startswith(_PLACEHOLDER):
        name = value.removeprefix(_PLACEHOLDER)
        used.add(name)
        return parameters[name]
    if isinstance(value, list):
        return [_bind(item, parameters, used) for item in value]
    if isinstance(value, dict):
        return {key: _bind(item, parameters, used) for key, item in value.items()}
    return value


def guide_pipelines() -> dict[str, tuple[str, list[dict[str, Any]], set[str], set[str]]]:
    """name -> (collection, pipeline with the test's parameters, parameters used, declared)."""
    found = {}
    for block in _BLOCK.findall(GUIDE.read_text(encoding="utf-8")):
        name = _NAME.search(block)
        call = _CALL.search(block)
        if name is None or call is None:
            continue
        used: set[str] = set()
        pipeline = _bind(json.loads(_to_json(call.group(2))), DOC_PARAMETERS, used)
        found[name.group(1)] = (call.group(1), pipeline, used, set(_CONST.findall(block)))
    return found


def test_the_guide_shows_exactly_these_pipelines() -> None:
    shown = guide_pipelines()

    assert set(shown) == set(TESTED)
    for name, (collection, build) in TESTED.items():
        shown_collection, pipeline, used, declared = shown[name]
        assert shown_collection == collection, name
        assert used == declared, f"{name}: parameters used {used}, declared {declared}"
        # Compared as text, so that key order (which matters in $sort and $group) counts too.
        assert json.dumps(pipeline, default=str) == json.dumps(build(), default=str), name
