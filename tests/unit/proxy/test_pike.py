"""gateway/proxy/pike.py: the per-source rate limiter, driven by passing ``now``."""

from __future__ import annotations

from gateway.proxy.pike import Pike, PikeConfig
from tests.unit.proxy._support import HOP1, TRUNK, invite, make_core


def test_off_by_default_never_blocks() -> None:
    p = Pike(PikeConfig())
    assert not p.enabled
    core = make_core()
    assert not any(core.pike.cfg.density and core.pike.hit("10.0.0.1", 0.0) for _ in range(10_000))


def test_density_exceeded_within_the_interval_blocks() -> None:
    p = Pike(PikeConfig(density=5, interval=2.0, block=10.0))
    assert [p.hit("1.2.3.4", 0.1 * i) for i in range(6)] == [False] * 5 + [True]
    assert p.blocks == 1
    assert p.hit("1.2.3.4", 1.0)  # still blocked
    assert not p.hit("5.6.7.8", 1.0)  # other sources are not affected


def test_requests_spread_over_windows_pass() -> None:
    p = Pike(PikeConfig(density=5, interval=1.0, block=10.0))
    # 5 per second, forever: never more than the density in one window.
    assert not any(p.hit("1.2.3.4", t * 0.2) for t in range(200))


def test_block_is_extended_while_the_flood_continues_then_expires() -> None:
    p = Pike(PikeConfig(density=2, interval=1.0, block=5.0))
    for i in range(3):
        p.hit("9.9.9.9", i * 0.01)
    # Keep hammering every 4 s: each hit is within the block, so it is extended.
    for t in (4.0, 8.0, 12.0):
        assert p.hit("9.9.9.9", t)
    # Silent for longer than the block: let through again.
    assert not p.hit("9.9.9.9", 12.0 + 5.0)


def test_tracked_sources_are_bounded() -> None:
    p = Pike(PikeConfig(density=1, interval=1.0, block=100.0, max_sources=100))
    for i in range(1000):
        p.hit(f"10.{i // 256}.{i % 256}.1", 0.0)
    assert len(p) <= 100
    # Once the windows end, a sweep makes room for new sources.
    p.hit("192.0.2.1", 5.0)
    p.hit("192.0.2.1", 5.1)
    assert p.hit("192.0.2.1", 5.2)


def test_core_drops_a_flooding_trunk_before_parsing_but_never_a_next_hop() -> None:
    core = make_core(pike=PikeConfig(density=3, interval=1.0, block=30.0))
    sent = [core.receive(b"garbage", TRUNK, "udp", None, 0.01 * i) for i in range(10)]
    assert core.stats["dropped_pike"] == 7
    assert all(out == [] for out in sent)
    # A blocked trunk's valid INVITE is dropped too...
    assert core.receive(invite(), TRUNK, "udp", None, 0.5) == []
    assert core.stats["dropped_pike"] == 8
    # ...while the next hop is never rate-limited.
    for i in range(10):
        core.receive(b"OPTIONS x", HOP1, "udp", None, 0.01 * i)
    assert core.stats["dropped_pike"] == 8


def test_a_new_block_is_counted_once() -> None:
    core = make_core(pike=PikeConfig(density=2, interval=1.0, block=30.0))
    for i in range(20):
        core.receive(b"x", TRUNK, "udp", None, 0.01 * i)
    assert core.stats["pike_blocked"] == 1 and core.stats["dropped_pike"] == 18
    assert core.pike.blocked() == [TRUNK[0]]
