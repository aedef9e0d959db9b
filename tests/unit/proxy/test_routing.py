"""In-dialog routing on the Record-Route token: forged tags, tampering, the callee's BYE, forged responses (SPEC §6 "Dialogs")."""

from __future__ import annotations

from gateway.proxy import Release
from tests.unit.proxy._support import (
    HOP1,
    LISTEN,
    T0,
    TRUNK,
    first_line,
    hall,
    hget,
    invite,
    make_core,
    only_send,
    param,
    request,
    respond,
    start_call,
    status_of,
)


def test_forged_to_tag_without_route_gets_481_and_never_reaches_hop() -> None:
    core = make_core()
    forged = invite(to_tag="made-up")
    s = only_send(core.receive(forged, TRUNK, "udp", None, T0))
    assert status_of(s.data) == 481 and s.dest == TRUNK
    bye = request("BYE", to_tag="made-up")
    assert status_of(only_send(core.receive(bye, TRUNK, "udp", None, T0)).data) == 481
    assert core.receive(request("ACK", to_tag="x"), TRUNK, "udp", None, T0) == []
    assert core.stats["in_dialog_rejected"] == 3 and core.stats["forwarded_requests"] == 0


def test_tampered_token_gets_481() -> None:
    core = make_core()
    _, fwd = start_call(core)
    rr = hget(fwd.data, "Record-Route")
    assert rr is not None
    token = param(rr, "cag")
    assert token
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    bad = rr.replace(token, flipped)
    bye = request("BYE", cseq=2, to_tag="uas-tag-1", routes=(bad,))
    assert status_of(only_send(core.receive(bye, TRUNK, "udp", None, T0 + 1)).data) == 481
    # The right token but another dialog (other Call-ID): 481 too.
    other = request("BYE", call_id="other@x", cseq=2, to_tag="uas-tag-1", routes=(rr,))
    assert status_of(only_send(core.receive(other, TRUNK, "udp", None, T0 + 1)).data) == 481
    # The route of someone else's host: 481.
    foreign = rr.replace(LISTEN[0], "10.9.9.9")
    bye2 = request("BYE", cseq=2, to_tag="uas-tag-1", routes=(foreign,))
    assert status_of(only_send(core.receive(bye2, TRUNK, "udp", None, T0 + 1)).data) == 481
    assert core.stats["forwarded_requests"] == 1  # only the INVITE


def test_callee_bye_from_hop_goes_upstream() -> None:
    core = make_core()
    _adm, fwd = start_call(core)
    core.receive(respond(fwd.data, 200), HOP1, "udp", None, T0 + 1, True)
    rr = hget(fwd.data, "Record-Route")
    assert rr is not None
    # The callee's BYE: tags swapped, Request-URI = the caller's Contact.
    bye = (
        "BYE sip:sipp@10.0.0.1:5060 SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 10.0.0.9:5070;branch=z9hG4bK-uas-1\r\n"
        f"Route: {rr}\r\n"
        "From: <sip:13800138000@10.0.0.2:5060>;tag=uas-tag-1\r\n"
        "To: sipp <sip:1058001234@10.0.0.1:5060>;tag=123SIPpTag001\r\n"
        "Call-ID: 1-123@10.0.0.1\r\n"
        "CSeq: 1 BYE\r\n"
        "Max-Forwards: 70\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    acts = core.receive(bye, HOP1, "udp", None, T0 + 3)
    s = only_send(acts)
    assert s.dest == TRUNK and first_line(s.data) == "BYE sip:sipp@10.0.0.1:5060 SIP/2.0"
    assert hget(s.data, "Route") is None
    assert Release("t-a", "1-123@10.0.0.1") in acts
    back = only_send(core.receive(respond(s.data, 200), TRUNK, "udp", None, T0 + 3.1, True))
    assert back.dest == HOP1 and hall(back.data, "Via") == ["SIP/2.0/UDP 10.0.0.9:5070;branch=z9hG4bK-uas-1"]
    # The same BYE from a trunk (not a hop) with swapped tags does not verify.
    trunk_bye = bye.replace(b"z9hG4bK-uas-1", b"z9hG4bK-uas-2")
    assert status_of(only_send(core.receive(trunk_bye, TRUNK, "udp", None, T0 + 4)).data) == 481


def test_forged_response_is_not_reflected() -> None:
    core = make_core()
    resp = (
        b"SIP/2.0 200 OK\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.2:40000;branch=z9hG4bKcags0011223344556677, SIP/2.0/UDP 6.6.6.6:5060;branch=x\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
    )
    assert core.receive(resp, HOP1, "udp", None, T0, True) == []
    assert core.stats["dropped_unmatched_response"] == 1
