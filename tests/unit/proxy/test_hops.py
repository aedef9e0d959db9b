"""HopSet.replaced (SIGHUP): Record-Route tokens carry hop indices, so they must stay stable."""

from __future__ import annotations

import random

from gateway.proxy.hops import HopSet, NextHop


def test_reload_keeps_indices_retires_removed_and_appends_new() -> None:
    a, b, c = NextHop.parse("udp:10.0.0.1:5060"), NextHop.parse("udp:10.0.0.2:5060"), NextHop.parse("10.0.0.3:5060")
    old = HopSet((a, b))
    old.mark(1, False)
    new = old.replaced((NextHop.parse("udp:10.0.0.2:5060;weight=5"), c))
    assert [h.addr for h in new.hops] == [a.addr, b.addr, c.addr]  # a keeps index 0 for its dialogs
    assert new.hops[1].weight == 5 and new.up == [True, False, True]  # health carried over
    assert new.retired == frozenset({0})
    rng = random.Random(1)
    picks = {new.pick(rng) for _ in range(200)}
    assert 0 not in picks  # a retired hop gets no new call
    assert new.pick(rng, tried={2}) is None  # 1 is down, 0 retired: no failover target
    assert new.replaced((a,)).retired == frozenset({1, 2})  # and a hop can come back
