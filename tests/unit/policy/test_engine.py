"""The engine over a fake store and a manual clock: budget → fail mode, breaker, refunds.

The same behaviours against a real, stopped or stalled Redis are in
tests/integration/test_engine.py and test_store_faults.py.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from policy.decision import Decision
from policy.engine import AdmissionEngine, EngineConfig
from policy.rules import CAP_NAMES
from tests.unit.policy import _fixtures as fx
from tests.unit.policy._fakes import FakeStore, ManualTimers, callee_result, rate_result, turns

BUDGET_S = 0.05


async def _engine(
    mode: Literal["answer", "hang", "error"] = "answer",
    fail_mode: Literal["closed", "open"] = "closed",
) -> tuple[FakeStore, ManualTimers, AdmissionEngine]:
    """An engine with its reference data loaded, over a store that answers as ``mode`` says."""
    store, timers = FakeStore(), ManualTimers()
    store.mode = mode
    cfg = EngineConfig(fail_mode=fail_mode, budget_ms=BUDGET_S * 1000, breaker_failures=3)
    e = AdmissionEngine(store, cfg, clock=fx.NOON.timestamp, timers=timers)
    await e.refcache.reload()
    return store, timers, e


def _admit(e: AdmissionEngine, **call: Any) -> asyncio.Task[Decision]:
    return asyncio.ensure_future(e.admit(fx.call(**call)))


async def _missed_budget(e: AdmissionEngine, timers: ManualTimers) -> Decision:
    """One decision whose store calls are not answered within the budget."""
    task = _admit(e)
    await turns()
    timers.advance(BUDGET_S)
    return await task


async def test_all_checks_pass_admits() -> None:
    store, _, e = await _engine()
    d = await _admit(e)
    assert d.admit and not d.fail_open and d.evidence_ref == "ev-1"
    assert sorted(store.hot_calls()) == ["callee", "rate", "token"]  # t-a has max_cps


async def test_budget_missed_fail_closed_rejects_503_and_refunds_the_late_answer() -> None:
    store, timers, e = await _engine("hang", "closed")
    d = await _missed_budget(e, timers)
    assert (d.admit, d.reason, d.sip_code) == (False, "store_unavailable", 503)
    assert d.retry_after == e.cfg.rules.responses.default_retry_after
    assert e.stats["store_timeouts"] == 1 and e.stats["fail_closed"] == 1
    # Redis answers after all: what its scripts counted for this rejection is undone.
    for kind, fut in store.calls:
        fut.set_result(
            callee_result() if kind == "callee" else rate_result() if kind == "rate" else fx.CALLEE
        )
    await turns()
    assert sorted(k for k, _, _ in store.refunds) == ["admit", "rate"]


async def test_budget_missed_fail_open_decides_on_the_in_memory_checks() -> None:
    store, timers, e = await _engine("hang", "open")
    d = await _missed_budget(e, timers)
    assert d.admit and d.fail_open
    assert [c.outcome for c in d.checks if c.name in ("consent", "dnc")] == ["skip", "skip"]
    # An in-memory failure still rejects: an unfiled caller never reaches the store.
    calls = len(store.calls)
    d = await _admit(e, from_user="01058000000")
    assert not d.admit and d.reason != "store_unavailable" and len(store.calls) == calls


async def test_a_stalled_loop_misses_the_budget_without_stepping_towards_the_breaker() -> None:
    _, timers, e = await _engine("hang")
    for _ in range(5):
        task = _admit(e)
        await turns()
        timers.stall(0.2)  # the budget timer fires 150 ms late
        await turns()
        timers.advance(0.025)  # the grace passes without an answer
        d = await task
        assert d.reason == "store_unavailable"
    timers.advance(1.0)  # any late-answer judge would have run by now
    assert e.stats["loop_stall_timeouts"] == 5
    assert not e.breaker.is_open and e.redis_ok


async def test_store_errors_open_the_breaker_then_the_store_is_not_asked() -> None:
    store, timers, e = await _engine("error")
    for _ in range(3):
        assert (await _admit(e)).reason == "store_unavailable"
    assert e.breaker.is_open and not e.redis_ok
    asked = len(store.calls)
    d = await _admit(e)
    assert d.reason == "store_unavailable" and len(store.calls) == asked  # no budget spent
    # Redis is back: the next probe closes the breaker and decisions use the store again.
    store.mode = "answer"
    store.ping_ok = True
    timers.advance(e.cfg.breaker_probe_s)
    await turns()
    assert not e.breaker.is_open
    assert (await _admit(e)).admit and len(store.calls) > asked
    await e.stop()


async def test_timeouts_unanswered_after_late_answer_s_open_the_breaker() -> None:
    _, timers, e = await _engine("hang")
    for _ in range(3):
        await _missed_budget(e, timers)
    assert not e.breaker.is_open  # judged later, not at the timeout
    timers.advance(e.cfg.late_answer_s + 0.02)
    assert e.breaker.is_open
    await e.stop()


async def test_shadow_admits_what_it_would_reject() -> None:
    _, _, e = await _engine("error")
    e.reconfigure(EngineConfig(shadow=True, breaker_failures=3))
    d = await _admit(e)
    assert d.admit and d.shadow_reject == "store_unavailable"


async def test_explain_runs_the_scripts_dry_and_lists_every_check() -> None:
    store, _, e = await _engine()
    d = await e.explain(fx.call(), fx.NOON)
    assert store.dry_runs and all(store.dry_runs)
    assert [c.name for c in d.checks][-5:] == list(CAP_NAMES)
    assert d.admit and store.refunds == []
