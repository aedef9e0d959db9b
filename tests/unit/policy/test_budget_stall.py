"""A loop that stays behind: the budget's grace is renewed while its timers keep firing late.

Under saturation (or a worker the kernel does not schedule) the budget timer
and its grace both fire late; Redis answered on time, our loop had no turn
to read it. Failing then answers ``store_unavailable`` for a CPU shortage;
the grace is renewed instead, ``STALL_GRACES`` times at most, and a grace
that fires on time without an answer still fails, ``stalled``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from policy.budget import STALL_GRACES, BatchBudget, BudgetExceeded, Pending, wait_all
from tests.unit.policy._fakes import ManualTimers, turns

BUDGET = 0.05
LATE = 0.02  # stall_late_s
GRACE = 0.025
BEHIND = GRACE + 0.05  # each grace timer fires 50 ms late


def _pending(*kinds: Any) -> list[Pending]:
    loop = asyncio.get_running_loop()
    return [Pending(k, loop.create_future()) for k in kinds]


def _wait(pending: list[Pending], timers: ManualTimers) -> asyncio.Task[dict[str, Any]]:
    return asyncio.ensure_future(wait_all(pending, BUDGET, LATE, GRACE, timers))


async def test_wait_all_renews_the_grace_while_the_loop_stays_late() -> None:
    timers = ManualTimers()
    pending = _pending("callee")
    task = _wait(pending, timers)
    await turns()
    timers.stall(0.15)  # the budget timer: 100 ms late, first grace
    for _ in range(STALL_GRACES - 1):
        timers.stall(BEHIND)
        await turns()
        assert not task.done()
    pending[0].fut.set_result("c")  # the loop finally reads the reply
    assert await task == {"callee": "c"}


async def test_wait_all_renewals_are_bounded_then_stalled() -> None:
    timers = ManualTimers()
    task = _wait(_pending("callee"), timers)
    await turns()
    timers.stall(0.15)
    for _ in range(STALL_GRACES):
        timers.stall(BEHIND)
    with pytest.raises(BudgetExceeded) as e:
        await task
    assert e.value.stalled


async def test_a_grace_on_time_after_late_ones_still_fails() -> None:
    timers = ManualTimers()
    task = _wait(_pending("callee"), timers)
    await turns()
    timers.stall(0.15)
    timers.stall(BEHIND)  # still behind: renewed
    timers.advance(GRACE)  # the loop caught up and nothing came: fail
    with pytest.raises(BudgetExceeded) as e:
        await task
    assert e.value.stalled


def test_batch_budget_renews_while_late_and_expires_once() -> None:
    timers = ManualTimers()
    expired: list[bool] = []
    BatchBudget(timers, BUDGET, LATE, GRACE, 3, expired.append)
    timers.stall(0.15)
    for _ in range(STALL_GRACES - 1):
        timers.stall(BEHIND)
    assert expired == [] and timers.pending() == 1
    timers.stall(BEHIND)  # the last renewal's timer, late as well: the cap is reached
    assert expired == [True] and timers.pending() == 0


def test_batch_budget_settled_in_a_grace_cancels_the_timer() -> None:
    timers = ManualTimers()
    expired: list[bool] = []
    b = BatchBudget(timers, BUDGET, LATE, GRACE, 2, expired.append)
    timers.stall(0.15)
    timers.stall(BEHIND)
    b.settled()
    b.settled()  # both decisions answered while the loop was behind
    assert timers.pending() == 0
    timers.advance(1.0)
    assert expired == []
