"""HopSet.replaced (SIGHUP): Record-Route tokens carry hop indices, so they must stay stable."""

from __future__ import annotations

import random

import pytest

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


def test_next_hop_parse() -> None:
    assert NextHop.parse("10.0.0.1:5060") == NextHop("10.0.0.1", 5060, "udp", 1)
    assert NextHop.parse("tcp:core.example:5070;weight=3") == NextHop("core.example", 5070, "tcp", 3)
    assert NextHop.parse("udp:[2001:db8::1]:5060") == NextHop("2001:db8::1", 5060, "udp", 1)
    for bad in ("nohost", "1.2.3.4:x", "1.2.3.4:5060;weight=a", "1.2.3.4:70000", "1.2.3.4:5060;foo=1"):
        with pytest.raises(ValueError):
            NextHop.parse(bad)


def test_weighted_choice() -> None:
    hs = HopSet((NextHop("a", 1, weight=3), NextHop("b", 1, weight=1)))
    rng = random.Random(5)
    picks = [hs.pick(rng) for _ in range(4000)]
    assert 2800 < picks.count(0) < 3200
    assert hs.pick(rng, {0, 1}) is None
