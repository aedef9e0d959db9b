"""In-dialog routing on the Record-Route token: forged tags, tampering, the callee's BYE, forged responses (SPEC §6 "Dialogs")."""

from __future__ import annotations

import math

from gateway.proxy import Outcome, ProxyCore, Release
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
    sends,
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


def _answered(core: ProxyCore) -> str:
    """A call through to its 200; the Record-Route the trunk's in-dialog requests carry."""
    _, fwd = start_call(core)
    core.receive(respond(fwd.data, 200), HOP1, "udp", None, T0 + 1, True)
    rr = hget(fwd.data, "Record-Route")
    assert rr is not None
    return rr


def test_in_dialog_udp_requests_are_relayed_with_no_state_kept() -> None:
    """UPDATE, INFO, re-INVITE, ACK: forwarded on the token; no transaction, no timer, no route entry."""
    core = make_core()
    rr = _answered(core)
    servers, clients, deadline = len(core.shared.servers), len(core.shared.clients), core.next_deadline()
    # A NATed trunk: the Via says 5062 without rport, so the answer goes to source IP : Via port.
    natted = ("10.0.0.1", 31000)
    for n, method in enumerate(("UPDATE", "INFO", "INVITE", "ACK"), start=2):
        data = request(
            method, branch=f"z9hG4bK-nat-{n}", via_host="10.0.0.1:5062", cseq=n, to_tag="uas-tag-1", routes=(rr,)
        )
        s = only_send(core.receive(data, natted, "udp", None, T0 + n))
        assert s.dest == HOP1 and first_line(s.data).startswith(f"{method} ") and hget(s.data, "Route") is None
        if method == "ACK":
            continue
        back = only_send(core.receive(respond(s.data, 200), HOP1, "udp", None, T0 + n + 0.1, True))
        assert back.dest == ("10.0.0.1", 5062) and back.transport == "udp"
        assert hall(back.data, "Via") == [f"SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK-nat-{n}"]
    assert not core.dialogs._routes and core.dialogs.next_deadline() == math.inf
    assert (len(core.shared.servers), len(core.shared.clients)) == (servers, clients)
    assert core.next_deadline() == deadline  # no new timer either
    assert core.stats["forwarded_requests"] == 1 + 4 and core.stats["forwarded_responses"] == 1 + 3


def test_rport_return_address_rides_in_the_branch_and_cannot_be_redirected() -> None:
    core = make_core()
    rr = _answered(core)
    data = request("INFO", branch="z9hG4bK-r", via_host="10.0.0.1:5060;rport", cseq=2, to_tag="uas-tag-1", routes=(rr,))
    s = only_send(core.receive(data, ("10.0.0.1", 31000), "udp", None, T0 + 2))
    ours = param(hall(s.data, "Via")[0], "branch")
    assert ours is not None and ours.endswith("-10.0.0.1-31000")
    back = only_send(core.receive(respond(s.data, 200), HOP1, "udp", None, T0 + 2.1, True))
    assert back.dest == ("10.0.0.1", 31000)
    # The same response with the return address in our branch changed: not ours, dropped.
    forged = respond(s.data, 200).replace(b"-10.0.0.1-31000", b"-6.6.6.6-31000")
    assert core.receive(forged, HOP1, "udp", None, T0 + 2.2, True) == []
    assert core.stats["dropped_unmatched_response"] == 1


def test_bye_still_releases_and_files_its_outcome_once() -> None:
    """The one in-dialog request that keeps an entry: a retransmitted BYE must not end the call twice."""
    core = make_core()
    rr = _answered(core)
    bye = request("BYE", branch="z9hG4bK-bye", cseq=2, to_tag="uas-tag-1", routes=(rr,))
    first = core.receive(bye, TRUNK, "udp", None, T0 + 2)
    again = core.receive(bye, TRUNK, "udp", None, T0 + 2.5)
    assert Release("t-a", "1-123@10.0.0.1") in first and sum(isinstance(a, Outcome) for a in first) == 1
    assert len(sends(again)) == 1 and not any(isinstance(a, (Release, Outcome)) for a in again)
    back = only_send(core.receive(respond(sends(first)[0].data, 200), HOP1, "udp", None, T0 + 2.6, True))
    assert back.dest == TRUNK


def test_tampered_token_on_a_stateless_request_is_refused_and_keeps_nothing() -> None:
    core = make_core()
    rr = _answered(core)
    token = param(rr, "cag")
    assert token
    bad = rr.replace(token, token[:-1] + ("A" if token[-1] != "A" else "B"))
    info = request("INFO", cseq=2, to_tag="uas-tag-1", routes=(bad,))
    s = only_send(core.receive(info, TRUNK, "udp", None, T0 + 2))
    assert status_of(s.data) == 481 and s.dest == TRUNK
    assert not core.dialogs._routes and core.stats["forwarded_requests"] == 1
