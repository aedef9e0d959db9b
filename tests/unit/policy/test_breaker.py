"""The circuit breaker on a manual clock and a fake store: opening, late answers, probing, closing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from policy.breaker import SECOND_LOOK_S, Breaker
from tests.unit.policy._fakes import FakeStore, ManualTimers, turns

PROBE_S = 0.25
LATE_ANSWER_S = 0.2


def _breaker(store: FakeStore, timers: ManualTimers, closed: list[int] | None = None) -> Breaker:
    return Breaker(
        store.ping,
        failures=3,
        probe_s=PROBE_S,
        late_answer_s=LATE_ANSWER_S,
        timers=timers,
        on_close=lambda: closed.append(1) if closed is not None else None,
    )


def _futures(n: int = 2) -> list[asyncio.Future[Any]]:
    loop = asyncio.get_running_loop()
    return [loop.create_future() for _ in range(n)]


async def test_opens_on_the_third_consecutive_failure_only() -> None:
    b = _breaker(FakeStore(), ManualTimers())
    b.failure()
    b.failure()
    b.success()  # an answer in between: not consecutive
    b.failure()
    b.failure()
    assert not b.is_open
    b.failure()
    assert b.is_open and b.stats["breaker_opened"] == 1
    await b.stop()


async def test_probes_every_quarter_second_until_redis_answers_then_closes() -> None:
    store, timers = FakeStore(), ManualTimers()
    closed: list[int] = []
    b = _breaker(store, timers, closed)
    for _ in range(3):
        b.failure()
    timers.advance(PROBE_S - 0.01)
    await turns()
    assert store.pings == 0
    for expected in (1, 2, 3):
        timers.advance(0.01 if expected == 1 else PROBE_S)
        await turns()
        assert store.pings == expected and b.is_open
    store.ping_ok = True
    timers.advance(PROBE_S)
    await turns()
    assert store.pings == 4
    assert not b.is_open and closed == [1]
    timers.advance(10 * PROBE_S)
    await turns()
    assert store.pings == 4  # no probing while closed
    # Closed again means counting from zero: two failures do not reopen it.
    b.failure()
    b.failure()
    assert not b.is_open


async def test_stop_ends_probing_and_start_resumes_it() -> None:
    store, timers = FakeStore(), ManualTimers()
    b = _breaker(store, timers)
    for _ in range(3):
        b.failure()
    await b.stop()
    timers.advance(5 * PROBE_S)
    await turns()
    assert store.pings == 0
    b.start()  # the engine restarted while Redis still fails
    timers.advance(PROBE_S)
    await turns()
    assert store.pings == 1 and b.is_open
    await b.stop()


@pytest.mark.parametrize("stalled", [False, True], ids=["read-late", "read-between-looks"])
async def test_timeouts_answered_late_are_not_failures(stalled: bool) -> None:
    """A busy worker reads replies late; Redis answered, so this is no step to opening.

    After a stall the first look can fire before the loop has read the
    socket (the CI flake of test_late_answers_do_not_open_the_breaker): the
    second look, ``SECOND_LOOK_S`` later, sees the answer.
    """
    timers = ManualTimers()
    b = _breaker(FakeStore(), timers)
    for _ in range(5):
        futs = _futures()
        b.judge_late(futs)
        if stalled:
            timers.stall(LATE_ANSWER_S + 0.05)  # first look: nothing handed out yet
        else:
            timers.advance(LATE_ANSWER_S / 2)
        for f in futs:
            f.set_result(None)
        timers.advance(SECOND_LOOK_S if stalled else LATE_ANSWER_S)
    assert not b.is_open and b.stats["late_answers"] == 5


async def test_no_answer_after_both_looks_counts_and_opens() -> None:
    timers = ManualTimers()
    b = _breaker(FakeStore(), timers)
    for i in range(3):
        b.judge_late(_futures())
        timers.advance(LATE_ANSWER_S + SECOND_LOOK_S)
        assert b.is_open == (i == 2)
    await b.stop()


async def test_an_error_answer_is_not_a_late_answer() -> None:
    timers = ManualTimers()
    b = _breaker(FakeStore(), timers)
    for _ in range(3):
        futs = _futures(1)
        futs[0].set_exception(ConnectionError("reset"))
        futs[0].exception()
        b.judge_late(futs)
        timers.advance(LATE_ANSWER_S + SECOND_LOOK_S)
    assert b.is_open and b.stats["late_answers"] == 0
    await b.stop()
