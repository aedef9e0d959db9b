"""Next-hop probing: OPTIONS answered marks a hop up, silence marks it down."""

from __future__ import annotations

import random

import pytest

from tests.unit.proxy._support import (
    HOP1,
    HOP2,
    T0,
    first_line,
    hget,
    make_core,
    respond,
    sends,
)


def test_probes_mark_hops_down_and_up() -> None:
    core = make_core(hops=(HOP1, HOP2), probe_interval=2.0, hop_timeout=1.0)
    probes = sends(core.tick(T0))
    assert sorted(p.dest for p in probes) == sorted([HOP1, HOP2])
    p1 = next(p for p in probes if p.dest == HOP1)
    assert first_line(p1.data) == f"OPTIONS sip:{HOP1[0]}:{HOP1[1]} SIP/2.0"
    assert "branch=z9hG4bKcagprobe" in (hget(p1.data, "Via") or "")
    assert hget(p1.data, "Max-Forwards") == "70" and p1.private
    # HOP1 answers (even a 404 proves it alive), HOP2 does not.
    core.receive(respond(p1.data, 404, "Not Found"), HOP1, "udp", None, T0 + 0.1, True)
    probes = sends(core.tick(T0 + 2.0))
    status = dict((h.addr, up) for h, up in core.hop_status())
    assert status == {HOP1: True, HOP2: False}
    assert core.hop_rtt == {0: pytest.approx(0.1)}  # the OPTIONS round trip: the hop latency metric
    # HOP2 comes back when it answers a probe.
    p2 = next(p for p in probes if p.dest == HOP2)
    core.receive(respond(p2.data, 200), HOP2, "udp", None, T0 + 2.1, True)
    assert all(up for _, up in core.hop_status())
    # A down hop is not chosen while another is up.
    core.hops.mark(1, False)
    picks = {core.hops.pick(random.Random(i)) for i in range(20)}
    assert picks == {0}
