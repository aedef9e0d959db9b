"""The reference-data cache with a fake store: reload on version change, and its "confirmed" age."""

from __future__ import annotations

import asyncio

from policy.model import Trunk
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
