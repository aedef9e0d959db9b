"""The decision budget on a manual clock: on time, missed, and missed because the loop stalled."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from policy.budget import BudgetExceeded, Pending, wait_all
from policy.ports import StoreError
from tests.unit.policy._fakes import ManualTimers, turns

BUDGET = 0.05
LATE = 0.02  # stall_late_s
GRACE = 0.025


def _pending(*kinds: Any) -> list[Pending]:
    loop = asyncio.get_running_loop()
    return [Pending(k, loop.create_future()) for k in kinds]


def _wait(pending: list[Pending], timers: ManualTimers) -> asyncio.Task[dict[str, Any]]:
    return asyncio.ensure_future(wait_all(pending, BUDGET, LATE, GRACE, timers))


async def test_answers_in_time_come_back_by_kind_and_disarm_the_timer() -> None:
    timers = ManualTimers()
    pending = _pending("callee", "token")
    task = _wait(pending, timers)
    await turns()
    timers.advance(0.01)
    pending[0].fut.set_result("c")
    pending[1].fut.set_result("t")
    assert await task == {"callee": "c", "token": "t"}
    assert timers.pending() == 0


async def test_no_answer_fails_at_the_deadline_not_before() -> None:
    timers = ManualTimers()
    pending = _pending("callee")
    task = _wait(pending, timers)
    await turns()
    timers.advance(BUDGET - 0.001)
    await turns()
    assert not task.done()
    timers.advance(0.001)
    with pytest.raises(BudgetExceeded) as e:
        await task
    assert not e.value.stalled
    assert isinstance(e.value, TimeoutError)  # the engine catches TimeoutError
    # The store's own future is not failed: its late answer can still be refunded.
    assert not pending[0].fut.done()


async def test_a_store_error_fails_at_once() -> None:
    timers = ManualTimers()
    pending = _pending("callee", "trunk")
    task = _wait(pending, timers)
    await turns()
    pending[1].fut.set_exception(StoreError("redis: down"))
    with pytest.raises(StoreError):
        await task
    assert timers.now == 1000.0  # no time passed


async def test_late_timer_after_a_stall_gives_one_grace_for_an_answer_already_sent() -> None:
    timers = ManualTimers()
    pending = _pending("callee")
    task = _wait(pending, timers)
    await turns()
    timers.stall(0.15)  # the loop was busy for 150 ms: the timer fires 100 ms late
    await turns()
    assert not task.done()  # re-armed for GRACE, not expired
    pending[0].fut.set_result("c")  # the reply that sat in the socket buffer
    assert await task == {"callee": "c"}


async def test_no_answer_within_the_grace_is_a_stalled_timeout() -> None:
    timers = ManualTimers()
    pending = _pending("callee")
    task = _wait(pending, timers)
    await turns()
    timers.stall(0.15)
    await turns()
    timers.advance(GRACE)
    with pytest.raises(BudgetExceeded) as e:
        await task
    assert e.value.stalled  # the engine does not count it towards the breaker


async def test_a_timer_late_by_less_than_stall_late_s_is_an_ordinary_timeout() -> None:
    timers = ManualTimers()
    pending = _pending("callee")
    task = _wait(pending, timers)
    await turns()
    timers.stall(BUDGET + LATE / 2)
    with pytest.raises(BudgetExceeded) as e:
        await task
    assert not e.value.stalled
