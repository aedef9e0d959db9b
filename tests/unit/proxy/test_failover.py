"""Next hops: failover on timeout and 503, probes, weights (SPEC §6 "Next hops")."""

from __future__ import annotations

import random

import pytest

from gateway.proxy import Admit, NextHop, Outcome, Release, RouteToken
from gateway.proxy.hops import HopSet
from policy.decision import admitted
from tests.unit.proxy._support import (
    HOP1,
    HOP2,
    TRUNK,
    first_line,
    hall,
    hget,
    invite,
    make_core,
    only_send,
    respond,
    sends,
    status_of,
)

T0 = 1000.0
ADMIT = admitted(trunk_id="t-a")


def forwarded(core, now=T0):  # type: ignore[no-untyped-def]
    (a,) = core.receive(invite(), TRUNK, "udp", None, now)
    assert isinstance(a, Admit)
    s = sends(core.decided(a.key, ADMIT, now))
    return s[1]


def quiet_core(**kw):  # type: ignore[no-untyped-def]
    return make_core(**kw)


def test_failover_on_timeout() -> None:
    core = quiet_core(hops=(HOP1, HOP2))
    fwd = forwarded(core)
    first = fwd.dest
    other = HOP2 if first == HOP1 else HOP1
    acts = core.tick(T0 + 1.01)
    s = [x for x in sends(acts) if x.dest == other]
    assert len(s) == 1 and first_line(s[0].data).startswith("INVITE ")
    assert hall(s[0].data, "Via")[0] != hall(fwd.data, "Via")[0]  # new branch
    assert dict((h.addr, up) for h, up in core.hop_status()) == {first: False, other: True}
    assert core.stats["failovers"] == 1
    # The second hop answers: the call proceeds through it.
    up = only_send(core.receive(respond(s[0].data, 180, "Ringing"), other, "udp", None, T0 + 1.1, True))
    assert up.dest == TRUNK and status_of(up.data) == 180


def test_no_hop_answers_gives_408() -> None:
    core = quiet_core(hops=(HOP1, HOP2))
    forwarded(core)
    core.tick(T0 + 1.01)
    acts = core.tick(T0 + 2.02)
    up = [s for s in sends(acts) if s.dest == TRUNK]
    assert [status_of(s.data) for s in up] == [408]
    assert hget(up[0].data, "Reason") == 'SIP;cause=408;text="next hop timeout"'
    assert Release("t-a", "1-123@10.0.0.1") in acts
    assert [a.final_code for a in acts if isinstance(a, Outcome)] == [408]
    assert not any(up for _, up in core.hop_status())
    # With every hop down the next call still tries one (better than refusing outright).
    (a,) = core.receive(invite(call_id="c2"), TRUNK, "udp", None, T0 + 3)
    assert isinstance(a, Admit)
    assert len(sends(core.decided(a.key, ADMIT, T0 + 3))) == 2


def test_failover_on_503_before_provisional() -> None:
    core = quiet_core(hops=(HOP1, HOP2))
    fwd = forwarded(core)
    other = HOP2 if fwd.dest == HOP1 else HOP1
    acts = core.receive(respond(fwd.data, 503, "Service Unavailable"), fwd.dest, "udp", None, T0 + 0.1, True)
    s = sends(acts)
    assert {x.dest for x in s} == {fwd.dest, other}
    ack = next(x for x in s if x.dest == fwd.dest)
    assert first_line(ack.data).startswith("ACK ")
    assert first_line(next(x for x in s if x.dest == other).data).startswith("INVITE ")
    # Both 503: 500 upstream, never 503.
    inv2 = next(x for x in s if x.dest == other)
    acts = core.receive(respond(inv2.data, 503, "Service Unavailable"), other, "udp", None, T0 + 0.2, True)
    up = [x for x in sends(acts) if x.dest == TRUNK]
    assert [status_of(x.data) for x in up] == [500]


def test_503_after_180_is_relayed_as_500() -> None:
    core = quiet_core(hops=(HOP1, HOP2))
    fwd = forwarded(core)
    core.receive(respond(fwd.data, 180, "Ringing"), fwd.dest, "udp", None, T0 + 0.1, True)
    acts = core.receive(respond(fwd.data, 503, "Service Unavailable"), fwd.dest, "udp", None, T0 + 0.2, True)
    up = [x for x in sends(acts) if x.dest == TRUNK]
    assert [status_of(x.data) for x in up] == [500]
    assert core.stats["failovers"] == 0
    assert [a.final_code for a in acts if isinstance(a, Outcome)] == [500]


def test_no_failover_after_180_on_timeout_either() -> None:
    core = quiet_core(hops=(HOP1, HOP2))
    fwd = forwarded(core)
    core.receive(respond(fwd.data, 180, "Ringing"), fwd.dest, "udp", None, T0 + 0.1, True)
    assert [x for x in sends(core.tick(T0 + 5)) if first_line(x.data).startswith("INVITE")] == []


def test_timer_c_cancels_and_answers_408() -> None:
    core = quiet_core(timer_c=10.0)
    fwd = forwarded(core)
    core.receive(respond(fwd.data, 180, "Ringing"), HOP1, "udp", None, T0 + 0.1, True)
    acts = core.tick(T0 + 10.2)
    kinds = sorted(first_line(s.data).split()[0] for s in sends(acts))
    assert kinds == ["CANCEL", "SIP/2.0"]


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


def test_route_token() -> None:
    t = RouteToken(b"k")
    tok = t.mint("cid", "ftag", "gw-0-1-abc", 2, "trunk-9")
    assert all(c.isalnum() or c in "-_." for c in tok)
    res = t.verify(tok, "cid", ("ftag",))
    assert res is not None and res[0].record_id == "gw-0-1-abc" and res[0].hop == 2 and res[0].trunk_id == "trunk-9"
    assert t.verify(tok, "cid", ("other", "ftag")) is not None and t.verify(tok, "cid", ("other", "ftag"))[1] == 1  # type: ignore[index]
    assert t.verify(tok, "cid2", ("ftag",)) is None
    assert RouteToken(b"k2").verify(tok, "cid", ("ftag",)) is None
    assert t.verify("garbage", "cid", ("ftag",)) is None
    assert t.verify("!!.??", "cid", ("ftag",)) is None


def test_late_responses_from_abandoned_hop_are_ended_not_forwarded() -> None:
    core = quiet_core(hops=(HOP1, HOP2))
    fwd = forwarded(core)
    core.tick(T0 + 1.01)  # failover
    # A late provisional: the abandoned branch is cancelled, nothing goes upstream.
    s = only_send(core.receive(respond(fwd.data, 180, "Ringing"), fwd.dest, "udp", None, T0 + 1.1, True))
    assert s.dest == fwd.dest and first_line(s.data).startswith("CANCEL ")
    s = only_send(core.receive(respond(fwd.data, 487, "Request Terminated"), fwd.dest, "udp", None, T0 + 1.2, True))
    assert s.dest == fwd.dest and first_line(s.data).startswith("ACK ")


def test_late_2xx_from_abandoned_hop_gets_ack_and_bye() -> None:
    core = quiet_core(hops=(HOP1, HOP2))
    fwd = forwarded(core)
    core.tick(T0 + 1.01)  # failover
    acts = core.receive(respond(fwd.data, 200), fwd.dest, "udp", None, T0 + 1.5, True)
    s = sends(acts)
    assert [first_line(x.data) for x in s] == [
        "ACK sip:uas@10.0.0.9:5070 SIP/2.0",
        "BYE sip:uas@10.0.0.9:5070 SIP/2.0",
    ]
    assert all(x.dest == fwd.dest and x.private for x in s)
    assert hget(s[1].data, "CSeq") == "2 BYE" and "uas-tag-1" in (hget(s[1].data, "To") or "")
    assert hget(s[0].data, "Route") is None  # our own Record-Route is not a hop to route through
    # Its retransmission does not start a second BYE.
    assert core.receive(respond(fwd.data, 200), fwd.dest, "udp", None, T0 + 1.6, True) == []


def test_cancel_is_retransmitted_until_answered() -> None:
    core = quiet_core(hop_timeout=5.0)
    fwd = forwarded(core)
    core.receive(respond(fwd.data, 180, "Ringing"), HOP1, "udp", None, T0 + 0.1, True)
    acts = core.receive(invite(method="CANCEL", extra=(), body=b""), TRUNK, "udp", None, T0 + 0.2)
    cancel = next(s for s in sends(acts) if s.dest == HOP1)
    again = [s for s in sends(core.tick(T0 + 0.71)) if s.dest == HOP1]
    assert [s.data for s in again] == [cancel.data]
    core.receive(respond(cancel.data, 200), HOP1, "udp", None, T0 + 0.8, True)
    assert [s for s in sends(core.tick(T0 + 3)) if s.dest == HOP1] == []


def test_many_calls_leave_no_state_behind() -> None:
    core = quiet_core()
    for i in range(300):
        cid = f"m{i}@t"
        (a,) = core.receive(invite(call_id=cid), TRUNK, "udp", None, T0 + i * 0.01)
        assert isinstance(a, Admit)
        fwd = sends(core.decided(a.key, ADMIT, T0 + i * 0.01))[1]
        core.receive(respond(fwd.data, 180, "Ringing"), HOP1, "udp", None, T0 + i * 0.01, True)
        if i % 3:
            acts = core.receive(respond(fwd.data, 200), HOP1, "udp", None, T0 + i * 0.01, True)
            assert not any(isinstance(x, Release) for x in acts)  # an answered call holds its slot
        else:
            core.receive(respond(fwd.data, 486, "Busy Here"), HOP1, "udp", None, T0 + i * 0.01, True)
    assert core.in_flight() == 300
    for k in range(1, 300):
        core.tick(T0 + k * 0.25)
    assert core.in_flight() == 0 and not core.shared.clients
    core.tick(T0 + 200)  # stale Timer C entries (keys only) drain by their due time
    assert not core.shared.timers.entries()


@pytest.mark.parametrize(
    ("call_id", "tags"),
    [("cid", ("ftag",)), ("cid", ("other", "ftag")), ("cid", (None, "ftag")), ("cid", ("other",)),
     ("cid2", ("ftag",)), ("cid", ())],
)
def test_token_minted_here_verifies_as_a_fresh_worker_would(call_id: str, tags: tuple[str | None, ...]) -> None:
    """The remembered-token shortcut gives the same answer as the full HMAC check of another worker."""
    minter, other = RouteToken(b"k"), RouteToken(b"k")
    tok = minter.mint("cid", "ftag", "gw-0-1-abc", 2, "trunk-9")
    assert minter.verify(tok, call_id, tags) == other.verify(tok, call_id, tags)


def test_remembered_tokens_are_bounded() -> None:
    t = RouteToken(b"k", minted_max=2)
    toks = [t.mint(f"c{i}", "f", f"r{i}", 0, "t") for i in range(3)]
    assert t.verify(toks[0], "c0", ("f",)) is not None  # forgotten, still verified in full
    assert len(t._minted) == 2
