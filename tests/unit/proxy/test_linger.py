"""Tombs (gateway/proxy/linger.py): what an answered or dropped call keeps for its 32 s linger, and does."""

from __future__ import annotations

from gateway.proxy import Admit, ProxyCore
from gateway.proxy.linger import Graveyard, Tomb
from policy.decision import admitted, reject
from tests.unit.proxy._support import (
    HOP1,
    TRUNK,
    invite,
    make_core,
    request,
    respond,
    sends,
    status_of,
)


def _answered(core: ProxyCore, now: float = 1000.0) -> tuple[bytes, bytes, bytes]:
    inv = invite()
    adm = next(a for a in core.receive(inv, TRUNK, "udp", None, now) if isinstance(a, Admit))
    fwd = sends(core.decided(adm.key, admitted(trunk_id="t-a"), now))[1].data
    ok = respond(fwd, 200, "OK")
    up = sends(core.receive(ok, HOP1, "udp", None, now, True))
    assert [status_of(s.data) for s in up] == [200]
    return inv, ok, up[0].data


def test_a_2xx_retransmission_is_relayed_upstream_from_the_tomb() -> None:
    core = make_core()
    _, ok, first = _answered(core)
    assert not core.shared.clients and len(core.servers.graves) == 1
    again = sends(core.receive(ok, HOP1, "udp", None, 1003.0, True))
    assert [(s.data, s.dest, s.transport) for s in again] == [(first, TRUNK, "udp")]
    assert core.stats["forwarded_responses"] == 2


def test_a_late_provisional_or_non_invite_answer_on_a_buried_branch_is_not_relayed() -> None:
    core = make_core()
    _, ok, _ = _answered(core)
    ringing = ok.replace(b"SIP/2.0 200 OK", b"SIP/2.0 180 Ringing", 1)
    assert core.receive(ringing, HOP1, "udp", None, 1001.0, True) == []
    assert core.stats["retransmission_absorbed"] == 1


def test_the_tomb_absorbs_the_invite_answers_cancel_and_expires_after_timer_l() -> None:
    core = make_core()
    inv, ok, _ = _answered(core)
    assert core.receive(inv, TRUNK, "udp", None, 1010.0) == []
    cancel = request("CANCEL")
    assert [status_of(s.data) for s in sends(core.receive(cancel, TRUNK, "udp", None, 1010.0))] == [200]
    assert core.next_deadline() <= 1000.0 + 32.0
    core.tick(1000.0 + 31.9)
    assert core.in_flight() == 1
    core.tick(1000.0 + 32.0)
    assert core.in_flight() == 0 and not core.servers.graves.by_branch
    assert core.receive(ok, HOP1, "udp", None, 1033.0, True) == []
    assert core.stats["dropped_unmatched_response"] == 1


def test_a_dropped_call_is_a_tomb_that_absorbs_its_retransmissions_and_acks() -> None:
    core = make_core()
    inv = invite()
    adm = next(a for a in core.receive(inv, TRUNK, "udp", None, 1000.0) if isinstance(a, Admit))
    assert core.decided(adm.key, reject("unknown_source"), 1000.0) == []
    assert not core.shared.servers and len(core.servers.graves) == 1
    assert core.receive(inv, TRUNK, "udp", None, 1001.0) == []
    ack = request("ACK")
    assert core.receive(ack, TRUNK, "udp", None, 1001.0) == []
    assert core.stats["ack_absorbed"] == 1 and core.stats["retransmission_absorbed"] == 1


def test_graveyard_expires_in_order_and_a_reburied_key_keeps_the_newest() -> None:
    g = Graveyard()
    g.bury(Tomb("k1", "b1", TRUNK, "udp", None, 10.0))
    g.bury(Tomb("k2", "", TRUNK, "udp", None, 11.0))
    g.bury(Tomb("k1", "b3", TRUNK, "udp", None, 12.0))
    assert set(g.by_branch) == {"b3"} and g.next_deadline() == 10.0
    assert g.expire(10.0) == 0  # k1's first tomb was replaced: nothing of the newest goes
    assert "k1" in g.by_key and g.expire(11.0) == 1 and g.expire(12.0) == 1
    assert not g.by_key and not g.by_branch and g.next_deadline() == float("inf")
