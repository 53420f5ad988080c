"""The benchmark's zero-loss check (scripts/bench/zero_loss.py): right when it says "loss".

The check is fed a service seen from outside: what it durably stored and what its summaries count,
read as often as the check asks. The clock is a fake one that moves only when the check sleeps.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

from scripts.bench.zero_loss import Reading, Settled, judge, wait_until_settled


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Service:
    """Stored events and the events its summaries counted, as lists of eventIds."""

    def __init__(self, acknowledged: list[str]) -> None:
        self.stored = list(acknowledged)
        self.counted = list(acknowledged)

    def read(self) -> Reading:
        return Reading(stored=len(self.stored), counted=len(self.counted))


def event_ids(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


def check(service: Service, acknowledged: int, timeout_s: float = 10.0) -> tuple[bool, str]:
    clock = FakeClock()
    outcome = wait_until_settled(
        service.read, interval_s=0.5, timeout_s=timeout_s, clock=clock, sleep=clock.sleep
    )
    verdict = judge(acknowledged, outcome)
    return verdict.ok, verdict.text


def test_every_acknowledged_event_stored_and_counted_once_is_ok() -> None:
    acknowledged = event_ids(200)
    service = Service(acknowledged)

    ok, text = check(service, len(acknowledged))

    assert ok
    assert text == "acknowledged 200 <= stored 200 == counted 200 -> OK"


def test_an_acknowledged_event_missing_from_the_store_is_reported_as_a_loss() -> None:
    acknowledged = event_ids(200)
    service = Service(acknowledged)
    lost = acknowledged[17]
    service.stored.remove(lost)
    service.counted.remove(lost)

    ok, text = check(service, len(acknowledged))

    assert not ok
    assert "LOSS: 1 acknowledged events are not stored" in text


def test_an_event_counted_twice_is_reported_as_a_double_count() -> None:
    acknowledged = event_ids(200)
    service = Service(acknowledged)
    service.counted.append(acknowledged[3])  # a redelivered change applied a second time

    ok, text = check(service, len(acknowledged))

    assert not ok
    assert "DOUBLE COUNT: 1 more events counted than stored" in text
    assert "LOSS" not in text


def test_a_stored_event_the_summaries_never_count_is_a_loss() -> None:
    acknowledged = event_ids(50)
    service = Service(acknowledged)
    service.counted.pop()

    ok, text = check(service, len(acknowledged))

    assert not ok
    assert "LOSS: 1 stored events are not counted" in text


def test_requests_still_landing_after_wrk_stopped_are_not_a_loss() -> None:
    """The false alarm of the old check: stored moved on while counted caught up with an older
    stored figure. Requests wrk gave up on still land (stored > acknowledged), then are counted."""
    acknowledged = event_ids(33_499)
    late = event_ids(25)
    service = Service(acknowledged)
    service.counted = acknowledged[:33_400]
    # What happens between two reads: the aggregator catches up, then the late requests land
    # and are counted in two batches.
    moments: Iterator[Callable[[], None]] = iter(
        [
            lambda: service.counted.extend(acknowledged[33_400:]),
            lambda: service.stored.extend(late),
            lambda: service.counted.extend(late[:10]),
            lambda: service.counted.extend(late[10:]),
        ]
    )
    real_read = service.read

    def read_while_landing() -> Reading:
        reading = real_read()
        next(moments, lambda: None)()
        return reading

    service.read = read_while_landing  # type: ignore[method-assign]

    ok, text = check(service, len(acknowledged))

    assert ok, text
    assert text == "acknowledged 33499 <= stored 33524 == counted 33524 -> OK"


def test_figures_that_never_settle_are_not_judged() -> None:
    service = Service(event_ids(10))
    real_read = service.read

    def growing() -> Reading:
        service.stored.append(str(uuid.uuid4()))
        service.counted.append(str(uuid.uuid4()))
        return real_read()

    service.read = growing  # type: ignore[method-assign]

    ok, text = check(service, 10, timeout_s=5.0)

    assert not ok
    assert "NOT SETTLED" in text


def test_the_verdict_judges_one_reading_and_not_a_mixture() -> None:
    outcome = Settled(Reading(stored=120, counted=120), settled=True, reads=3)

    assert judge(100, outcome).ok  # 20 requests landed after wrk stopped waiting: stored, counted
    assert not judge(121, outcome).ok
