"""Filings at scale on a real redis-server: deltas, not reloads (issue 14, item 4).

A trunk suspension reloads trunks and enterprises only; a filings upsert is
applied as a delta (the numbers it changed); a ``--replace`` builds a new
table; ``cag explain`` reads the filings of one caller, not the kind.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from policy.model import NumberFiling
from policy.refcache import RefCache
from policy.rules import RuleConfig, evaluate_local
from policy.rules.caller_id import caller_of
from policy.store import PolicyStore
from policy.store_keys import FILINGS_LOG_KEEP
from tests.integration.conftest import EngineFactory, call, cluster_flush, load_world

pytestmark = pytest.mark.integration

MANY = 30_000  # over REF_MULTI_MAX: the staged load path


def _many(n: int = MANY, ent: str = "ent-a") -> list[NumberFiling]:
    return [
        NumberFiling(number=f"+86139{i:08d}", enterprise_id=ent, outbound=True) for i in range(n)
    ]


async def _scans(store: PolicyStore) -> int:
    stats = await store.client.info("commandstats")
    return int(stats.get("cmdstat_hscan", {}).get("calls", 0))


async def _loaded(store: PolicyStore) -> RefCache:
    cache = RefCache(store)
    await cache.reload()
    return cache


async def test_a_suspension_reloads_trunks_not_the_filings(store: PolicyStore) -> None:
    await store.put_records("filings", _many())
    cache = await _loaded(store)
    assert len(cache.ref.filings) == MANY + 2 and cache.builds == 1
    table = cache.ref.filings
    await store.set_status("trunk", "t-a", "suspended")
    t0 = time.process_time()
    await cache.refresh()
    cpu = time.process_time() - t0
    assert cache.ref.trunks["t-a"].status == "suspended"
    assert cache.ref.filings is table and cache.builds == 1 and cache.deltas == 0
    assert cache.ref.version == await store.ref_version()
    assert cpu < 0.2, cpu  # what it costs without any filing


async def test_a_filings_upsert_is_a_delta_and_a_replace_a_build(store: PolicyStore) -> None:
    await store.put_records("filings", _many())
    cache = await _loaded(store)
    base = cache.ref.filings
    await store.put_records(
        "filings",
        [
            NumberFiling(number="+8613700000001", enterprise_id="ent-b", outbound=True),
            NumberFiling(number="+8613900000005", enterprise_id="ent-b", outbound=True),  # moved
        ],
    )
    await cache.refresh()
    t = cache.ref.filings
    assert cache.deltas == 1 and cache.builds == 1 and t._keys is base._keys
    assert len(t) == MANY + 3
    p = t.profile("+8613900000005")
    assert p is not None and p.enterprise_id == "ent-b"
    assert t.profile("+8613700000001") is not None
    assert cache.ref.length_altered("+861370000000", "ent-b") == "13700000001"  # R4 over the delta
    # A replace without some numbers: they are gone after a (background) build.
    await store.put_records("filings", _many(1000), replace=True)
    await cache.refresh()
    for _ in range(100):
        if cache.builds == 2:
            break
        await asyncio.sleep(0.05)
    await cache.refresh()
    assert cache.builds == 2 and len(cache.ref.filings) == 1000
    assert "+8613700000001" not in cache.ref.filings and "+8613900000999" in cache.ref.filings


async def test_a_running_engine_sees_a_filing_added_within_a_second(
    store: PolicyStore, make_engine: EngineFactory
) -> None:
    await store.put_records("filings", _many())
    e = await make_engine()
    assert len(e.ref.filings) == MANY + 2
    t0 = time.monotonic()
    await store.put_records(
        "filings", [NumberFiling(number="+8613600000001", enterprise_id="ent-a", outbound=True)]
    )
    while "+8613600000001" not in e.ref.filings:
        assert time.monotonic() - t0 < 1.0
        await asyncio.sleep(0.01)
    assert e.refcache.builds == 1 and e.refcache.deltas == 1
    # And a suspension with the filings loaded takes effect as fast.
    await store.set_status("trunk", "t-a", "suspended")
    t0 = time.monotonic()
    while e.ref.trunks["t-a"].status != "suspended":
        assert time.monotonic() - t0 < 1.0
        await asyncio.sleep(0.01)
    assert e.refcache.builds == 1


async def test_a_worker_behind_the_log_builds_again(store: PolicyStore) -> None:
    cache = await _loaded(store)
    assert await store.filing_changes(0, 1) is not None
    _, fv = await store.ref_versions()
    assert await store.filing_changes(fv - FILINGS_LOG_KEEP - 1, fv) is None
    await store.put_records("filings", _many(10), replace=True)
    _, fv2 = await store.ref_versions()
    assert await store.filing_changes(fv, fv2) is None  # a rewrite: no delta
    await cache.refresh()
    await asyncio.sleep(0)
    for _ in range(100):
        if cache.builds == 2:
            break
        await asyncio.sleep(0.02)
    assert cache.builds == 2 and len(cache.ref.filings) == 10


@pytest.mark.parametrize(
    "caller",
    [
        "01058001234",  # filed (ent-a)
        "010580012345",  # digits appended
        "0105800123",  # digits removed
        "+8613900000042",  # one of MANY
        "+86139000000421",
        "+861390000004",  # removed: many longer candidates
        "+8613800000000",  # not filed
        "01058007777",  # filed to ent-b
    ],
)
async def test_explain_reads_one_callers_filings_and_answers_as_the_full_table(
    store: PolicyStore, caller: str
) -> None:
    await store.put_records("filings", _many())
    full = await _loaded(store)
    one = RefCache(store)
    c = call(from_user=caller)
    before = await _scans(store)
    await one.load_for_call(caller_of(c))
    assert await _scans(store) == before  # no HSCAN: the kind is not read
    assert len(one.ref.filings) <= 12  # not the kind
    at = datetime(2026, 6, 1, 12, tzinfo=UTC)
    cfg = RuleConfig()
    a = evaluate_local(c, full.ref, at, cfg, all_checks=True)
    b = evaluate_local(c, one.ref, at, cfg, all_checks=True)
    assert a.checks == b.checks


async def test_deltas_on_the_cluster(redis_cluster: str) -> None:
    """The filings version is read under WATCH in a cluster pipeline: the same slot, the same deltas."""
    cluster_flush(redis_cluster)
    s = await PolicyStore.connect(redis_cluster)
    try:
        await load_world(s)
        await s.put_records("filings", _many(6000))  # staged: the rename under MULTI
        cache = await _loaded(s)
        assert len(cache.ref.filings) == 6002
        await s.put_records(
            "filings", [NumberFiling(number="+8613700000001", enterprise_id="ent-b")]
        )
        await s.set_status("trunk", "t-a", "suspended")
        await cache.refresh()
        assert cache.deltas == 1 and cache.builds == 1 and "+8613700000001" in cache.ref.filings
        assert cache.ref.trunks["t-a"].status == "suspended"
        c = call(from_user="+861390000004")
        one = RefCache(s)
        await one.load_for_call(caller_of(c))
        assert one.ref.length_altered("+861390000004", "ent-a") == "1390000004" + "0"
    finally:
        await s.close()
