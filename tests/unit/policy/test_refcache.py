"""The reference-data cache with a fake store: reload on version change, and its "confirmed" age."""

from __future__ import annotations

import asyncio

import pytest

from policy.model import NumberFiling, Trunk
from policy.ports import StoreError
from policy.refcache import RefCache
from tests.unit.policy._fakes import FakeStore, turns


class Wall:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def _cache(store: FakeStore, wall: Wall) -> RefCache:
    return RefCache(store, wall=wall)


async def test_first_refresh_loads_and_confirms() -> None:
    store, wall = FakeStore(), Wall()
    cache = _cache(store, wall)
    assert not cache.loaded and cache.confirmed_at == 0.0 and cache.ref.version == -1
    await cache.refresh()
    assert cache.loaded and cache.refresh_ok
    assert cache.ref.version == 7 and store.loads == 1
    assert cache.confirmed_at == 5000.0
    assert cache.ref.source_known("192.0.2.10")


async def test_same_version_is_confirmed_without_reloading() -> None:
    store, wall = FakeStore(), Wall()
    cache = _cache(store, wall)
    await cache.reload()
    before = cache.ref
    wall.now += 30
    await cache.refresh()
    assert store.loads == 1 and cache.ref is before
    assert cache.confirmed_at == 5030.0  # the age a NOC watches restarts


async def test_new_version_reloads_the_snapshot() -> None:
    store, wall = FakeStore(), Wall()
    cache = _cache(store, wall)
    await cache.reload()
    assert not cache.ref.source_known("203.0.113.9")
    store.trunks.append(Trunk(trunk_id="t-new", enterprise_id="ent-a", sources=("203.0.113.9",)))
    store.version = 8
    await cache.refresh()
    assert store.loads == 2 and cache.ref.version == 8
    assert cache.ref.source_known("203.0.113.9")


async def test_redis_away_keeps_the_snapshot_and_its_age() -> None:
    store, wall = FakeStore(), Wall()
    cache = _cache(store, wall)
    await cache.reload()
    store.ref_error = StoreError("redis: connection refused")
    wall.now += 60
    await cache.refresh()  # never raises
    assert not cache.refresh_ok
    assert cache.loaded and cache.ref.version == 7
    assert cache.confirmed_at == 5000.0  # 60 s old now
    store.ref_error = None
    await cache.refresh()
    assert cache.refresh_ok and cache.confirmed_at == 5060.0


async def test_a_notification_wakes_the_loop_only_for_another_version() -> None:
    store, wall = FakeStore(), Wall()
    cache = _cache(store, wall)
    await cache.reload()
    stop = asyncio.Event()
    task = asyncio.ensure_future(cache.run(3600.0, stop))  # the poll never fires in this test
    await turns()
    store.version = 8
    cache.on_change(7)  # our own version: nothing to do
    await turns()
    assert store.loads == 1
    cache.on_change(8)
    await turns(20)
    assert store.loads == 2 and cache.ref.version == 8
    stop.set()
    cache.wake()
    await asyncio.wait_for(task, 1.0)


# ------------------------------------------------------------ filings by deltas (issue 14)


async def test_a_trunk_change_reloads_trunks_not_filings() -> None:
    store, wall = FakeStore(), Wall()
    cache = _cache(store, wall)
    await cache.reload()
    table = cache.ref.filings
    assert store.scans == 1 and len(table) == 7
    store.trunks[0] = store.trunks[0].model_copy(update={"status": "suspended"})
    store.version += 1  # what a suspension does: the reference version alone
    await cache.refresh()
    assert store.loads == 2 and store.scans == 1
    assert cache.ref.filings is table and cache.ref.version == store.version


async def test_a_filings_write_is_applied_as_a_delta() -> None:
    store, wall = FakeStore(), Wall()
    cache = _cache(store, wall)
    await cache.reload()
    store.write_filings(
        {
            "+861058001234": None,  # removed
            "+8613700000001": NumberFiling(
                number="+8613700000001", enterprise_id="ent-b", outbound=True
            ),
        }
    )
    await cache.refresh()
    assert store.scans == 1 and store.loads == 1 and cache.deltas == 1
    assert "+861058001234" not in cache.ref.filings and "+8613700000001" in cache.ref.filings
    assert len(cache.ref.filings) == 7 and cache.ref.version == store.version


async def test_a_rewrite_builds_a_new_table_in_the_background_the_old_one_serving() -> None:
    store, wall = FakeStore(), Wall()
    cache = _cache(store, wall)
    await cache.reload()
    old = cache.ref.filings
    store.replace_filings(
        [NumberFiling(number="+8613700000001", enterprise_id="ent-a", outbound=True)]
    )
    await cache.refresh()
    await turns(50)
    assert store.scans == 2 and cache.builds == 2
    assert list(cache.ref.filings) == ["+8613700000001"] and len(old) == 7
    await cache.refresh()
    assert cache.ref.version == store.version


async def test_a_large_overlay_is_folded(monkeypatch: pytest.MonkeyPatch) -> None:
    import policy.refcache

    monkeypatch.setattr(policy.refcache, "FOLD_AT", 2)
    store, wall = FakeStore(), Wall()
    cache = _cache(store, wall)
    await cache.reload()
    store.write_filings(
        {
            f"+861370000000{i}": NumberFiling(number=f"+861370000000{i}", enterprise_id="ent-a")
            for i in range(3)
        }
    )
    await cache.refresh()
    await turns(50)
    assert cache.builds == 2 and store.scans == 1  # folded from the table, not read again
    assert cache.ref.filings.overlay_size == 0 and len(cache.ref.filings) == 10


async def test_a_write_during_a_build_is_caught_up() -> None:
    store, wall = FakeStore(), Wall()
    cache = _cache(store, wall)
    task = asyncio.ensure_future(cache.reload())
    await turns(2)  # the build is reading
    store.write_filings(
        {"+8613700000009": NumberFiling(number="+8613700000009", enterprise_id="ent-a")}
    )
    await task
    assert "+8613700000009" in cache.ref.filings


async def test_explain_loads_one_callers_filings() -> None:
    store = FakeStore()
    cache = _cache(store, Wall())
    await cache.load_for_call("+8610580012345")  # 1058001234 with a digit appended
    assert store.scans == 0 and len(cache.ref.filings) <= 2
    assert cache.ref.length_altered("+8610580012345", "ent-a") == "1058001234"
