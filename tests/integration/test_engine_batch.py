"""``admit_many`` against a real redis-server: one turn's INVITEs, one pipeline, exact counting.

The store fixture connects over the unix socket, so these batches go through
the hot link (``policy.hotlink``); ``test_cluster.py`` covers the Cluster path.
"""

from __future__ import annotations

import asyncio

import pytest

from policy.decision import Decision
from policy.engine import AdmissionEngine
from policy.model import CallAttempt
from policy.store import PolicyStore
from tests.integration.conftest import EngineFactory, call
from tests.integration.test_engine import day_count, eventually

pytestmark = pytest.mark.integration


async def _decide_all(engine: AdmissionEngine, calls: list[CallAttempt]) -> dict[int, Decision]:
    got: dict[int, Decision] = {}
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_decided(i: int, d: Decision) -> None:
        assert i not in got, "each item is decided once"
        got[i] = d
        if len(got) == len(calls) and not done.done():
            done.set_result(None)

    engine.admit_many(enumerate(calls), on_decided)
    await asyncio.wait_for(done, 5.0)
    return got


async def test_a_batch_counts_exactly_up_to_the_cap(
    store: PolicyStore, make_engine: EngineFactory
) -> None:
    e = await make_engine()
    calls = [call(call_id=f"b{i}", branch=f"z9hG4bKb{i}") for i in range(6)]
    got = await _decide_all(e, calls)
    assert sorted(d.reason for d in got.values()) == ["admitted"] * 3 + ["callee_daily_cap"] * 3
    assert await day_count(store) == 3  # the three rejected counted nothing (or were refunded)


async def test_a_mixed_batch_decides_each_call_on_its_own(
    store: PolicyStore, make_engine: EngineFactory
) -> None:
    e = await make_engine()
    calls = [
        call(call_id="ok", branch="z9hG4bKok"),
        call(call_id="unknown", branch="z9hG4bKun", consent_token="nope"),
        call(call_id="unfiled", branch="z9hG4bKuf", from_user="01058000000"),
    ]
    got = await _decide_all(e, calls)
    assert got[0].admit
    assert got[1].reason == "consent_unknown"
    assert not got[2].admit and got[2].reason not in ("admitted", "store_unavailable")

    async def one() -> bool:
        return await day_count(store) == 1

    await eventually(one)  # only the admitted call counts for the callee


async def test_a_retransmitted_batch_counts_nothing_twice(
    store: PolicyStore, make_engine: EngineFactory
) -> None:
    e = await make_engine()
    calls = [call(call_id=f"r{i}", branch=f"z9hG4bKr{i}") for i in range(2)]
    first = await _decide_all(e, calls)
    again = await _decide_all(e, calls)
    assert (
        [d.reason for d in first.values()] == [d.reason for d in again.values()] == ["admitted"] * 2
    )
    assert await day_count(store) == 2
