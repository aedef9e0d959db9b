"""INVITE client transactions: forwarding, failover on timeout and 503, CANCEL, Timers A and C, late answers (SPEC §6 "Next hops")."""

from __future__ import annotations

from gateway.proxy import Admit, Outcome, Release
from tests.unit.proxy._support import (
    ADMIT,
    HOP1,
    HOP2,
    LISTEN,
    T0,
    TRUNK,
    first_line,
    forwarded,
    hall,
    hget,
    invite,
    make_core,
    only_send,
    quiet_core,
    request,
    respond,
    sends,
    start_call,
    status_of,
)


def test_preloaded_route_to_us_is_removed() -> None:
    core = make_core()
    _, fwd = start_call(core, routes=(f"<sip:{LISTEN[0]}:{LISTEN[1]};lr>", "<sip:10.0.0.50;lr>"))
    assert hall(fwd.data, "Route") == ["<sip:10.0.0.50;lr>"]


def test_missing_max_forwards_gets_69() -> None:
    core = make_core()
    _, fwd = start_call(core, max_forwards=None)
    assert hget(fwd.data, "Max-Forwards") == "69"


def test_timer_a_retransmits_invite() -> None:
    core = make_core(hop_timeout=5.0)
    _, fwd = start_call(core)
    got = [s for t in (0.52, 1.0, 1.54, 2.0, 3.55) for s in sends(core.tick(T0 + t)) if s.dest == HOP1]
    assert [s.data for s in got] == [fwd.data] * 3


def test_cancel_after_180_goes_downstream() -> None:
    core = make_core()
    _, fwd = start_call(core)
    core.receive(respond(fwd.data, 180, "Ringing"), HOP1, "udp", None, T0 + 0.1, True)
    acts = core.receive(request("CANCEL"), TRUNK, "udp", None, T0 + 0.2)
    s = sends(acts)
    assert len(s) == 2
    ok = next(x for x in s if x.dest == TRUNK)
    assert status_of(ok.data) == 200
    cancel = next(x for x in s if x.dest == HOP1)
    assert cancel.private
    assert first_line(cancel.data) == "CANCEL sip:13800138000@10.0.0.2:5060 SIP/2.0"
    assert hall(cancel.data, "Via") == [hall(fwd.data, "Via")[0]]
    assert hget(cancel.data, "CSeq") == "1 CANCEL" and hget(cancel.data, "Max-Forwards") == "70"
    assert hget(cancel.data, "To") == hget(fwd.data, "To")
    # 200 for the CANCEL is absorbed; the 487 is ACKed and forwarded up.
    assert core.receive(respond(cancel.data, 200), HOP1, "udp", None, T0 + 0.3, True) == []
    acts = core.receive(respond(fwd.data, 487, "Request Terminated"), HOP1, "udp", None, T0 + 0.3, True)
    s = sends(acts)
    ack = next(x for x in s if x.dest == HOP1)
    assert first_line(ack.data) == "ACK sip:13800138000@10.0.0.2:5060 SIP/2.0"
    assert hget(ack.data, "CSeq") == "1 ACK" and "uas-tag-1" in (hget(ack.data, "To") or "")
    up = next(x for x in s if x.dest == TRUNK)
    assert status_of(up.data) == 487
    assert Release("t-a", "1-123@10.0.0.1") in acts
    assert [a.final_code for a in acts if isinstance(a, Outcome)] == [487]
    # A retransmitted 487 is re-ACKed, not re-forwarded.
    again = only_send(core.receive(respond(fwd.data, 487, "Request Terminated"), HOP1, "udp", None, T0 + 0.4, True))
    assert again.dest == HOP1 and first_line(again.data).startswith("ACK ")


def test_cancel_before_any_response_waits_for_provisional() -> None:
    core = make_core()
    _, fwd = start_call(core)
    acts = core.receive(request("CANCEL"), TRUNK, "udp", None, T0 + 0.05)
    assert [status_of(s.data) for s in sends(acts)] == [200]
    s = only_send(core.receive(respond(fwd.data, 100, "Trying"), HOP1, "udp", None, T0 + 0.1, True))
    assert s.dest == HOP1 and first_line(s.data).startswith("CANCEL ")


def test_cancel_without_provisional_gives_up_at_hop_timeout() -> None:
    core = make_core()
    start_call(core)
    core.receive(request("CANCEL"), TRUNK, "udp", None, T0 + 0.05)
    acts = core.tick(T0 + 1.2)
    up = [s for s in sends(acts) if s.dest == TRUNK]
    assert [status_of(s.data) for s in up] == [487]
    assert Release("t-a", "1-123@10.0.0.1") in acts


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
