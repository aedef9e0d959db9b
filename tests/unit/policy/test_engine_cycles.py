"""A decided batch leaves no reference cycle behind (issue 13, worker RSS under load).

``admit_many``'s budget closure holds the batch's decisions and each
decision held the budget: one cycle per batch, freed only by the garbage
collector. On a saturated worker decisions outlive a young collection, so
those cycles reached the oldest generation, which is collected rarely, and
RSS grew with them. Each test decides a batch with the collector off and
then asks it what the batch left: nothing of the engine's may be there.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from policy.budget import BatchBudget
from policy.decision import Decision
from policy.engine import AdmissionEngine, EngineConfig
from tests.unit.policy import _fixtures as fx
from tests.unit.policy._fakes import (
    FakeStore,
    ManualTimers,
    answer_calls,
    turns,
)

BUDGET_S = 0.05
OURS = {"_Waiting", "Pending"}  # a decision and its store calls


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _left_in_cycles() -> set[str]:
    """The types of the engine's objects only the collector could free."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return {type(o).__name__ for o in gc.garbage} & OURS
    finally:
        gc.garbage.clear()
        gc.set_debug(0)


async def _engine(mode: Any) -> tuple[FakeStore, ManualTimers, AdmissionEngine]:
    store, timers = FakeStore(), ManualTimers()
    store.mode = mode
    e = AdmissionEngine(
        store, EngineConfig(budget_ms=BUDGET_S * 1000), clock=fx.NOON.timestamp, timers=timers
    )
    await e.refcache.reload()
    return store, timers, e


async def test_a_batch_answered_in_time_leaves_no_cycle(no_gc: None) -> None:
    store, timers, e = await _engine("hang")
    got: dict[int, Decision] = {}
    e.admit_many(((i, fx.call(call_id=f"c{i}")) for i in range(8)), got.__setitem__)
    answer_calls(store)
    await turns()
    assert len(got) == 8 and all(d.admit for d in got.values())
    del store, timers, e
    assert _left_in_cycles() == set()


async def test_a_batch_failed_by_its_budget_leaves_no_cycle(no_gc: None) -> None:
    store, timers, e = await _engine("hang")
    got: dict[int, Decision] = {}
    e.admit_many(((i, fx.call(call_id=f"c{i}")) for i in range(4)), got.__setitem__)
    timers.advance(BUDGET_S)
    assert [d.reason for d in got.values()] == ["store_unavailable"] * 4
    answer_calls(store)  # the late answers land (and are refunded)
    await turns()
    del store, timers, e
    assert _left_in_cycles() == set()


async def test_a_batch_failed_by_a_store_error_leaves_no_cycle(no_gc: None) -> None:
    store, timers, e = await _engine("error")
    got: dict[int, Decision] = {}
    e.admit_many(((i, fx.call(call_id=f"c{i}")) for i in range(4)), got.__setitem__)
    await turns()
    assert len(got) == 4 and not any(d.admit for d in got.values())
    del store, timers, e
    assert _left_in_cycles() == set()


def test_a_spent_budget_lets_go_of_its_callback() -> None:
    timers = ManualTimers()
    held: list[bool] = []
    settled = BatchBudget(timers, BUDGET_S, 0.02, 0.025, 2, held.append)
    settled.settled()
    settled.settled()
    fired = BatchBudget(timers, BUDGET_S, 0.02, 0.025, 2, held.append)
    timers.advance(BUDGET_S)
    assert held == [False]
    for budget in (settled, fired):
        assert budget._on_expire is not held.append  # the caller's closure is no longer held
