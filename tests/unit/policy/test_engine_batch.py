"""``AdmissionEngine.admit_many``: a loop turn's INVITEs decided as one batch, one budget timer.

``admit`` is a batch of one, so tests/unit/policy/test_engine.py covers the
shared logic; these tests cover what only a batch has: many decisions under
one timer, mixed outcomes in one batch, answers in any order, and the
synchronous hand-over of decisions the in-memory checks settle.
"""

from __future__ import annotations

from typing import Any

from policy.decision import Decision
from policy.engine import AdmissionEngine, EngineConfig
from policy.ports import StoreError
from tests.unit.policy import _fixtures as fx
from tests.unit.policy._fakes import (
    FakeStore,
    ManualTimers,
    answer_calls,
    turns,
)

BUDGET_S = 0.05


async def _engine(
    mode: Any = "answer", **cfg: Any
) -> tuple[FakeStore, ManualTimers, AdmissionEngine]:
    store, timers = FakeStore(), ManualTimers()
    store.mode = mode
    e = AdmissionEngine(
        store,
        EngineConfig(budget_ms=BUDGET_S * 1000, breaker_failures=3, **cfg),
        clock=fx.NOON.timestamp,
        timers=timers,
    )
    await e.refcache.reload()
    return store, timers, e




async def test_a_batch_decides_every_item_once_under_one_timer() -> None:
    store, timers, e = await _engine("hang")
    got: dict[int, Decision] = {}
    e.admit_many(((i, fx.call(call_id=f"c{i}")) for i in range(8)), got.__setitem__)
    assert got == {} and timers.pending() == 1  # one budget timer, not eight
    answer_calls(store)
    await turns()
    assert sorted(got) == list(range(8)) and all(d.admit for d in got.values())
    assert timers.pending() == 0  # the last answer cancelled the timer
    assert e.stats["decisions_admitted"] == 8


async def test_in_memory_rejections_are_handed_over_before_admit_many_returns() -> None:
    store, _, e = await _engine("hang")
    got: list[tuple[str, Decision]] = []
    e.admit_many(
        [("bad", fx.call(from_user="01058000000")), ("ok", fx.call())],
        lambda t, d: got.append((t, d)),
    )
    assert [t for t, _ in got] == ["bad"] and not got[0][1].admit
    assert got[0][1].reason != "store_unavailable"
    answer_calls(store)
    await turns()
    assert [t for t, _ in got] == ["bad", "ok"] and got[1][1].admit


async def test_the_budget_fails_only_the_items_still_waiting() -> None:
    store, timers, e = await _engine("hang")
    got: dict[int, Decision] = {}
    e.admit_many(((i, fx.call(call_id=f"c{i}")) for i in range(3)), got.__setitem__)
    per_call = len(store.calls) // 3
    answer_calls(store, 0, per_call)  # the first decision's answers arrive in time
    await turns()
    assert list(got) == [0] and got[0].admit
    timers.advance(BUDGET_S)
    assert sorted(got) == [0, 1, 2]
    assert [got[i].reason for i in (1, 2)] == ["store_unavailable"] * 2
    assert e.stats["store_timeouts"] == 2 and e.stats["fail_closed"] == 2
    # The late answers of the two rejected calls are refunded.
    answer_calls(store)
    await turns()
    assert len(store.refunds) == 2 * (per_call - 1)  # callee + rate per call, not the token lookup


async def test_a_stalled_timer_gives_one_grace_and_does_not_count_towards_the_breaker() -> None:
    store, timers, e = await _engine("hang")
    got: dict[int, Decision] = {}
    e.admit_many(((i, fx.call(call_id=f"c{i}")) for i in range(4)), got.__setitem__)
    timers.stall(0.2)  # the budget timer fires 150 ms late: a grace, not a failure yet
    assert got == {}
    answer_calls(store)  # the answers were in the socket buffer
    await turns()
    assert all(d.admit for d in got.values()) and len(got) == 4
    e.admit_many(((i, fx.call(call_id=f"d{i}")) for i in range(4)), got.__setitem__)
    timers.stall(0.2)
    timers.advance(0.025)
    assert [got[i].reason for i in range(4)] == ["store_unavailable"] * 4
    timers.advance(1.0)
    assert e.stats["loop_stall_timeouts"] == 4 and not e.breaker.is_open


async def test_a_store_error_fails_its_own_decision_at_once() -> None:
    store, timers, e = await _engine("hang")
    got: dict[int, Decision] = {}
    e.admit_many(((i, fx.call(call_id=f"c{i}")) for i in range(2)), got.__setitem__)

    store.calls[0][1].set_exception(StoreError("redis: boom"))
    await turns()
    assert list(got) == [0] and got[0].reason == "store_unavailable"
    assert e.stats["store_errors"] == 1
    answer_calls(store)
    await turns()
    assert got[1].admit and timers.pending() == 0


async def test_fail_open_and_shadow_apply_per_item() -> None:
    _, timers, e = await _engine("hang", fail_mode="open")
    got: dict[int, Decision] = {}
    e.admit_many(((i, fx.call(call_id=f"c{i}")) for i in range(2)), got.__setitem__)
    timers.advance(BUDGET_S)
    assert all(d.admit and d.fail_open for d in got.values())
    _, _, e = await _engine("error", shadow=True)
    got.clear()
    e.admit_many(((i, fx.call(call_id=f"c{i}")) for i in range(2)), got.__setitem__)
    await turns()
    assert all(d.admit and d.shadow_reject == "store_unavailable" for d in got.values())


async def test_a_callback_that_raises_does_not_strand_the_rest() -> None:
    _, _, e = await _engine()
    seen: list[int] = []

    def on_decided(token: int, d: Decision) -> None:
        seen.append(token)
        if token == 0:
            raise RuntimeError("caller bug")

    e.admit_many(((i, fx.call(call_id=f"c{i}")) for i in range(3)), on_decided)
    await turns()
    assert seen == [0, 1, 2]


async def test_admit_is_a_batch_of_one() -> None:
    _, timers, e = await _engine()
    d = await e.admit(fx.call())
    assert d.admit and timers.pending() == 0
