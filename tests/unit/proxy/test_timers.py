"""The core's timers: one heap, and ``next_deadline()`` that an adapter can arm a single ``call_at`` from."""

from __future__ import annotations

import math

from gateway.proxy import Admit
from gateway.proxy.routing import ROUTE_MAP_TTL
from gateway.proxy.transaction import T1, TIMER_H
from tests.unit.proxy._support import (
    ADMIT,
    HOP1,
    T0,
    TRUNK,
    forwarded,
    hget,
    invite,
    make_core,
    request,
    respond,
    sends,
    start_call,
)


def test_an_idle_core_has_no_deadline() -> None:
    assert make_core().next_deadline() == math.inf


def test_deadlines_follow_the_transactions() -> None:
    core = make_core()
    (a,) = core.receive(invite(), TRUNK, "udp", None, T0)
    assert isinstance(a, Admit)
    assert core.next_deadline() == T0 + TIMER_H  # the pending bound
    core.decided(a.key, ADMIT, T0)
    assert core.next_deadline() == T0 + T1  # Timer A of the forwarded INVITE
    assert core.tick(T0 + T1 - 0.001) == []  # nothing early
    again = sends(core.tick(core.next_deadline()))
    assert [s.dest for s in again] == [HOP1]  # Timer A fired at its deadline
    assert core.next_deadline() == T0 + 1.0  # then the hop timeout (1 s) comes before the next Timer A


def test_only_a_tick_at_each_deadline_drains_a_call() -> None:
    """Ticking exactly at ``next_deadline()`` (no 20 ms polling) ends every transaction."""
    core = make_core()
    fwd = forwarded(core)
    core.receive(respond(fwd.data, 486, "Busy Here"), HOP1, "udp", None, T0 + 0.1, True)
    ticks = 0
    while core.next_deadline() != math.inf and ticks < 50:
        core.tick(core.next_deadline())
        ticks += 1
    assert core.in_flight() == 0 and not core.shared.clients and ticks < 50


def test_probes_and_the_route_map_have_deadlines_too() -> None:
    core = make_core(probe_interval=2.0)
    assert core.next_deadline() == -math.inf  # never probed: at once
    core.tick(T0)
    assert core.next_deadline() == T0 + 1.0  # the probes' answer timeout (hop_timeout) comes first
    core.tick(T0 + 1.0)
    assert core.next_deadline() == T0 + 2.0  # the next round
    quiet = make_core()
    _, fwd = start_call(quiet)
    quiet.receive(respond(fwd.data, 200), HOP1, "udp", None, T0 + 0.1, True)
    rr = hget(fwd.data, "Record-Route")
    assert rr is not None
    bye = request("BYE", branch="z9hG4bK-b", cseq=2, to_tag="uas-tag-1", routes=(rr,), uri="sip:uas@10.0.0.9:5070")
    quiet.receive(bye, TRUNK, "udp", None, T0 + 1)
    assert quiet.dialogs.next_deadline() == T0 + 1 + ROUTE_MAP_TTL
    quiet.tick(T0 + 1 + ROUTE_MAP_TTL)
    assert quiet.dialogs.next_deadline() == math.inf
