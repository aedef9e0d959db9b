"""The bounded maps kept in order of age (token cache, in-dialog route map) evict and expire in O(1).

``next(iter(d))`` on a dict whose oldest entries were deleted skips every
deleted slot at the front, one by one, until the dict resizes: evicting
the oldest of 65,536 remembered tokens cost ~25 µs a call (docs/performance.md,
session 6). The maps now keep their order in a deque; these tests hold the
deque and the dict to the same contents through eviction and expiry.
"""

from __future__ import annotations

import math

from gateway.proxy import ProxyCore
from gateway.proxy.dialog import RouteToken
from gateway.proxy.routing import ROUTE_MAP_TTL
from tests.unit.proxy._support import HOP1, T0, TRUNK, hget, make_core, request, respond, start_call


def _aged(t: RouteToken) -> list[str]:
    return [tok for tok, _ in t._age]


def test_the_token_cache_keeps_its_age_order_with_the_dict() -> None:
    t = RouteToken(b"k", minted_max=4)
    toks = [t.mint(f"c{i}", "f", f"r{i}", 0, "t") for i in range(10)]
    assert list(t._minted) == toks[6:] == _aged(t)
    again = t.mint("c9", "f", "r9", 0, "t")  # the same call minted twice: the same token, kept once
    assert again == toks[9] and _aged(t) == toks[6:] and len(t._minted) == 4
    for _ in range(3):
        toks.append(t.mint(f"d{len(toks)}", "f", "r", 0, "t"))
    assert list(t._minted) == _aged(t) == toks[-4:]


def test_the_token_cache_is_full_after_its_ttl_at_any_rate() -> None:
    """Bounded by age as well as count: its size stops growing after ``minted_ttl``, however
    slowly calls are admitted, so a worker's RSS does not creep for minutes after warm-up."""
    t = RouteToken(b"k", minted_max=1000, minted_ttl=10.0)
    sizes = []
    for second in range(40):  # 5 calls a second: the count bound (1,000) is never reached
        for i in range(5):
            t.mint(f"c{second}-{i}", "f", "r", 0, "t", now=float(second))
        sizes.append(len(t._minted))
    assert sizes[9] == 50 and set(sizes[10:]) == {50}  # full after 10 s, then flat
    old = t.mint("c0-0", "f", "r", 0, "t", now=0.0)  # a token forgotten still verifies, by its MAC
    res = t.verify(old, "c0-0", ("f",))
    assert res is not None and res[1] == 0


def _bye_routes(core: ProxyCore, n: int, now: float) -> None:
    _, fwd = start_call(core)
    core.receive(respond(fwd.data, 200), HOP1, "udp", None, now, True)
    rr = hget(fwd.data, "Record-Route")
    assert rr is not None
    for i in range(n):
        bye = request("BYE", branch=f"z9hG4bK-bye-{i}", cseq=2, to_tag="uas-tag-1", routes=(rr,))
        core.receive(bye, TRUNK, "udp", None, now)


def test_the_route_map_expires_oldest_first_and_empties_with_its_deque() -> None:
    core = make_core()
    _bye_routes(core, 5, T0 + 1)
    d = core.dialogs
    assert list(d._age) == list(d._routes) and len(d._routes) == 5
    assert d.next_deadline() == T0 + 1 + ROUTE_MAP_TTL
    d.expire(T0 + 1 + ROUTE_MAP_TTL)
    assert not d._routes and not d._age and d.next_deadline() == math.inf
