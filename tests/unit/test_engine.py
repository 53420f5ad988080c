"""Engine start-up: losing the race to create the collections is retried, whichever way it shows."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.errors import CollectionInvalid, OperationFailure

from fanfinity.storage import engine as engine_module


class InitBeanieDouble:
    """`init_beanie` failing the first time as the loser of a concurrent creation does."""

    def __init__(self, first_error: Exception) -> None:
        self.first_error = first_error
        self.calls = 0

    async def __call__(self, **kwargs: Any) -> None:
        self.calls += 1
        if self.calls == 1:
            raise self.first_error


@pytest.mark.parametrize(
    "lost_race",
    [
        # PyMongo's own check in Database.create_collection (pymongo/synchronous/database.py)
        CollectionInvalid("collection match_events already exists"),
        # both creates reached the server: NamespaceExists
        OperationFailure("Collection already exists", 48, {"code": 48}),
    ],
)
async def test_losing_the_collection_creation_race_is_retried(
    monkeypatch: pytest.MonkeyPatch, lost_race: Exception
) -> None:
    init = InitBeanieDouble(lost_race)
    monkeypatch.setattr(engine_module, "init_beanie", init)
    monkeypatch.setattr(engine_module.asyncio, "sleep", _no_wait)

    await engine_module._init_documents(database=None)

    assert init.calls == 2


async def test_other_start_up_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    init = InitBeanieDouble(OperationFailure("not authorized", 13, {"code": 13}))
    monkeypatch.setattr(engine_module, "init_beanie", init)

    with pytest.raises(OperationFailure):
        await engine_module._init_documents(database=None)

    assert init.calls == 1


async def _no_wait(seconds: float) -> None:
    return None
