"""The budget timer and the answers in the same loop iteration: answers in hand are not a timeout.

The store's futures are resolved when the reply is read, but their
done-callbacks run in the next loop iteration, and an iteration runs its
timers first. A budget timer due then must decide from the answers already
in, not fail the call ``store_unavailable``.
"""

from __future__ import annotations

from policy.decision import Decision
from policy.ports import StoreError
from tests.unit.policy import _fixtures as fx
from tests.unit.policy._fakes import answer_calls, turns
from tests.unit.policy.test_engine_batch import BUDGET_S, _engine


async def test_answers_read_but_not_yet_called_back_are_decided_at_the_budget() -> None:
    store, timers, e = await _engine("hang")
    got: dict[int, Decision] = {}
    e.admit_many(((i, fx.call(call_id=f"c{i}")) for i in range(3)), got.__setitem__)
    per_call = len(store.calls) // 3
    answer_calls(store, 0, 2 * per_call)  # two decisions' replies read; their callbacks not run yet
    timers.advance(BUDGET_S)  # the timer runs first in the next iteration
    assert sorted(got) == [0, 1, 2]
    assert got[0].admit and got[1].admit
    assert got[2].reason == "store_unavailable"  # no answer: the fail mode, as before
    assert e.stats["answered_at_budget"] == 2 and e.stats["store_timeouts"] == 1
    await turns()  # the callbacks run now and find their decisions made
    assert len(got) == 3 and e.stats["decisions_admitted"] == 2


async def test_an_error_among_the_answers_in_hand_is_a_store_error_not_a_timeout() -> None:
    store, timers, e = await _engine("hang")
    got: dict[int, Decision] = {}
    e.admit_many([(0, fx.call(call_id="c0"))], got.__setitem__)
    store.calls[0][1].set_exception(StoreError("redis: boom"))
    answer_calls(store)
    timers.advance(BUDGET_S)
    assert got[0].reason == "store_unavailable"
    assert e.stats["store_errors"] == 1 and e.stats["store_timeouts"] == 0
    await turns()
    assert len(got) == 1
