"""ProxyCore: admitted call flow, rejections, retransmissions, dialogs (SPEC §6).

Pure: bytes in, actions out, time passed explicitly.
"""

from __future__ import annotations

from gateway.proxy import Admit, Outcome, ProxyCore, Release, Send
from policy.decision import admitted, reject
from tests.unit.proxy._support import (
    HOP1,
    LISTEN,
    PRIVATE,
    SDP,
    TRUNK,
    WALL,
    body_of,
    first_line,
    hall,
    headers,
    hget,
    invite,
    make_core,
    only_send,
    param,
    request,
    respond,
    sends,
    status_of,
)

T0 = 1000.0
ADMIT = admitted(trunk_id="t-a")


def start_call(core: ProxyCore, now: float = T0, **kw: object) -> tuple[Admit, Send]:
    """INVITE in, admitted: returns the Admit and the INVITE forwarded to the hop."""
    acts = core.receive(invite(**kw), TRUNK, "udp", None, now)  # type: ignore[arg-type]
    assert len(acts) == 1 and isinstance(acts[0], Admit)
    adm = acts[0]
    out = core.decided(adm.key, ADMIT, now + 0.01)
    s = sends(out)
    assert len(s) == 2, out
    trying, fwd = s
    assert status_of(trying.data) == 100 and trying.dest == TRUNK and not trying.private
    assert fwd.dest == HOP1 and fwd.private and fwd.transport == "udp"
    return adm, fwd


def test_admit_reads_the_call_attempt() -> None:
    core = make_core()
    inv = invite(extra=(
        "P-Asserted-Identity: <sip:1058001234@10.0.0.1;user=phone>",
        "Privacy: none",
        "X-Consent-Token: tok-9",
        "X-Call-Purpose: consultation",
        "Identity: abc;info=<https://cert>",
    ))
    (adm,) = core.receive(inv, TRUNK, "udp", None, T0)
    assert isinstance(adm, Admit)
    c = adm.call
    assert c.call_id == "1-123@10.0.0.1" and c.branch == "z9hG4bK-123-1-0"
    assert (c.source_ip, c.source_port) == TRUNK
    assert c.callee == "13800138000" and c.from_user == "1058001234" and c.pai_user == "1058001234"
    assert not c.anonymous and not c.privacy_id
    assert c.consent_token == "tok-9" and c.purpose == "consultation"
    assert c.identity is not None and c.identity.startswith("abc")
    assert c.received_at == WALL + T0  # loop time + the adapter's wall offset
    assert adm.record_id.startswith("gw-0-")
    assert core.in_flight() == 1 and core.stats["invites"] == 1


def test_anonymous_and_privacy_flags() -> None:
    core = make_core()
    (a,) = core.receive(invite(extra=("Privacy: id",), caller="anonymous"), TRUNK, "udp", None, T0)
    assert isinstance(a, Admit) and a.call.anonymous and a.call.privacy_id


def test_full_admitted_call_flow() -> None:
    core = make_core()
    original = invite()
    adm, fwd = start_call(core)
    data = fwd.data
    # Forwarded INVITE: our Via on top, original Via kept.
    vias = hall(data, "Via")
    assert vias[0].startswith(f"SIP/2.0/UDP {PRIVATE[0]}:{PRIVATE[1]};branch=z9hG4bKcag")
    assert "rport" in vias[0]
    assert vias[1] == "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-123-1-0"
    assert first_line(data) == first_line(original)
    assert hget(data, "Max-Forwards") == "69"
    rr = hget(data, "Record-Route")
    assert rr is not None and rr.startswith(f"<sip:{LISTEN[0]}:{LISTEN[1]};transport=udp;lr;cag=")
    assert hget(data, "X-Consent-Token") is None and hget(data, "X-Call-Purpose") is None
    assert hget(data, "X-Admission-Id") == adm.record_id
    assert body_of(data) == SDP
    # Everything else byte-identical.
    changed = {"via", "max-forwards", "record-route", "x-consent-token", "x-call-purpose", "x-admission-id"}
    keep_in = [h for h in headers(original) if h[0].lower() not in changed]
    keep_out = [h for h in headers(data) if h[0].lower() not in changed]
    assert keep_in == keep_out
    for line in original.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name = line.split(b":")[0].decode().lower()
        if name not in changed:
            assert line in data

    # 100 from the hop is absorbed; 180 and 200 (comma-joined Vias) go up without our Via.
    assert core.receive(respond(data, 100, "Trying"), HOP1, "udp", None, T0 + 0.02, True) == []
    up = only_send(core.receive(respond(data, 180, "Ringing"), HOP1, "udp", None, T0 + 0.03, True))
    assert up.dest == TRUNK and not up.private and status_of(up.data) == 180
    assert hall(up.data, "Via") == ["SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-123-1-0"]
    acts = core.receive(respond(data, 200, "OK"), HOP1, "udp", None, T0 + 1, True)
    up = only_send(acts)
    assert status_of(up.data) == 200 and hall(up.data, "Via") == [vias[1]]
    assert hget(up.data, "Record-Route") == rr
    (oc,) = [a for a in acts if isinstance(a, Outcome)]
    assert oc.final_code == 200 and oc.answered_at == WALL + T0 + 1 and oc.record_id == adm.record_id

    # ACK and BYE from the trunk follow the Route to the hop.
    route = rr
    ack = request("ACK", branch="z9hG4bK-123-5-0", to_tag="uas-tag-1", routes=(route,),
                  uri="sip:uas@10.0.0.99:5070")
    s = only_send(core.receive(ack, TRUNK, "udp", None, T0 + 1.1))
    assert s.dest == HOP1 and s.private
    assert hget(s.data, "Route") is None and first_line(s.data) == "ACK sip:uas@10.0.0.99:5070 SIP/2.0"
    assert hall(s.data, "Via")[0].startswith(f"SIP/2.0/UDP {PRIVATE[0]}:{PRIVATE[1]};branch=z9hG4bKcag")
    assert hget(s.data, "Max-Forwards") == "69"

    bye = request("BYE", branch="z9hG4bK-123-7-0", cseq=2, to_tag="uas-tag-1", routes=(route,),
                  uri="sip:uas@10.0.0.9:5070")
    acts = core.receive(bye, TRUNK, "udp", None, T0 + 5)
    s = only_send(acts)
    assert s.dest == HOP1 and first_line(s.data).startswith("BYE ")
    assert Release("t-a", "1-123@10.0.0.1") in acts
    (oc,) = [a for a in acts if isinstance(a, Outcome)]
    assert oc.record_id == adm.record_id and oc.ended_at == WALL + T0 + 5 and oc.final_code is None

    # A retransmitted BYE is forwarded again but releases nothing twice.
    acts = core.receive(bye, TRUNK, "udp", None, T0 + 5.5)
    assert len(sends(acts)) == 1 and not [a for a in acts if isinstance(a, Release)]

    # The 200 for BYE is routed back by Via, from the listen socket.
    back = only_send(core.receive(respond(s.data, 200), HOP1, "udp", None, T0 + 5.6, True))
    assert back.dest == TRUNK and not back.private
    assert hall(back.data, "Via") == ["SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-123-7-0"]

    # Retransmitted 200 for the INVITE is still forwarded (2xx retransmissions are end to end).
    up = only_send(core.receive(respond(data, 200, "OK"), HOP1, "udp", None, T0 + 2, True))
    assert status_of(up.data) == 200
    # A retransmitted INVITE after the 2xx is absorbed.
    assert core.receive(invite(), TRUNK, "udp", None, T0 + 2) == []

    core.tick(T0 + 40)
    assert core.in_flight() == 0 and not core.shared.clients


def test_rejection_retransmission_and_ack() -> None:
    core = make_core()
    (adm,) = core.receive(invite(), TRUNK, "udp", None, T0)
    assert isinstance(adm, Admit)
    assert core.receive(invite(), TRUNK, "udp", None, T0 + 0.01) == []  # pending: absorbed
    assert core.stats["retransmission_absorbed"] == 1
    dec = reject("quiet_hours", retry_after=3600, trunk_id="t-a")
    s = only_send(core.decided(adm.key, dec, T0 + 0.02))
    assert s.dest == TRUNK and status_of(s.data) == 603
    assert hget(s.data, "Reason") == 'SIP;cause=603;text="quiet_hours"'
    assert hget(s.data, "Retry-After") == "3600"
    to = hget(s.data, "To")
    assert to is not None and param(to, "tag")
    # Retransmitted INVITE: exactly the same bytes, and no second Admit.
    again = core.receive(invite(), TRUNK, "udp", None, T0 + 0.3)
    assert only_send(again).data == s.data
    # Timer G retransmits until the ACK (backed off by the retransmission just answered).
    assert core.tick(T0 + 0.53) == []
    g = only_send(core.tick(T0 + 1.31))
    assert g.data == s.data
    ack = request("ACK", to_tag=param(to, "tag"))
    assert core.receive(ack, TRUNK, "udp", None, T0 + 1.4) == []
    assert core.tick(T0 + 3) == []
    core.tick(T0 + 6)
    assert core.in_flight() == 1  # Timer I (T4 = 5 s) absorbs ACK retransmissions
    core.tick(T0 + 6.5)
    assert core.in_flight() == 0


def test_retransmitting_client_gets_one_final_per_invite() -> None:
    """The integration test's pattern: four INVITEs 0.4 s apart, four identical finals, then the ACK."""
    core = make_core()
    (adm,) = core.receive(invite(), TRUNK, "udp", None, T0)
    assert isinstance(adm, Admit)
    finals = sends(core.decided(adm.key, reject("consent_unknown", trunk_id="t-a"), T0 + 0.005))
    t = T0
    for i in range(1, 16 * 4):
        t = T0 + i * 0.025
        if i % 16 == 0:
            finals += sends(core.receive(invite(), TRUNK, "udp", None, t))
        finals += sends(core.tick(t))
    assert len(finals) == 4 and len({f.data for f in finals}) == 1
    to = hget(finals[0].data, "To") or ""
    assert core.receive(request("ACK", to_tag=param(to, "tag")), TRUNK, "udp", None, t + 0.01) == []
    assert all(core.tick(t + k * 0.1) == [] for k in range(1, 10))


def test_reject_with_code_zero_is_silent() -> None:
    core = make_core()
    (adm,) = core.receive(invite(), TRUNK, "udp", None, T0)
    assert isinstance(adm, Admit)
    assert core.decided(adm.key, reject("unknown_source"), T0) == []
    assert core.receive(invite(), TRUNK, "udp", None, T0 + 0.5) == []


def test_timer_h_ends_unacked_rejection() -> None:
    core = make_core()
    (adm,) = core.receive(invite(), TRUNK, "udp", None, T0)
    assert isinstance(adm, Admit)
    core.decided(adm.key, reject("callee_dnc", trunk_id="t-a"), T0)
    n = 0
    t = T0
    while t < T0 + 40:
        t += 0.02
        n += len(core.tick(t))
    # 0.5, 1, 2, 4, 4, ... until 32 s
    assert 8 <= n <= 12
    assert core.in_flight() == 0


def test_decided_for_unknown_key_releases_admission() -> None:
    core = make_core()
    assert core.decided("nope|x|h:1", ADMIT, T0) == [Release("t-a", "nope")]
    assert core.decided("nope|x|h:1", reject("callee_dnc"), T0) == []


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


def test_cancel_while_pending() -> None:
    core = make_core()
    (adm,) = core.receive(invite(), TRUNK, "udp", None, T0)
    assert isinstance(adm, Admit)
    acts = core.receive(request("CANCEL"), TRUNK, "udp", None, T0 + 0.01)
    codes = sorted((hget(s.data, "CSeq"), status_of(s.data)) for s in sends(acts))
    assert codes == [("1 CANCEL", 200), ("1 INVITE", 487)]
    assert core.decided(adm.key, ADMIT, T0 + 0.02) == [Release("t-a", "1-123@10.0.0.1")]
    assert core.stats["forwarded_requests"] == 0


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


def test_cancel_unknown_gets_481() -> None:
    core = make_core()
    s = only_send(core.receive(request("CANCEL"), TRUNK, "udp", None, T0))
    assert status_of(s.data) == 481


def test_invite_retransmission_after_forwarding_replays_provisional() -> None:
    core = make_core()
    _, fwd = start_call(core)
    s = only_send(core.receive(invite(), TRUNK, "udp", None, T0 + 0.5))
    assert status_of(s.data) == 100
    core.receive(respond(fwd.data, 180, "Ringing"), HOP1, "udp", None, T0 + 0.6, True)
    s = only_send(core.receive(invite(), TRUNK, "udp", None, T0 + 1))
    assert status_of(s.data) == 180


def test_timer_a_retransmits_invite() -> None:
    core = make_core(hop_timeout=5.0)
    _, fwd = start_call(core)
    got = [s for t in (0.52, 1.0, 1.54, 2.0, 3.55) for s in sends(core.tick(T0 + t)) if s.dest == HOP1]
    assert [s.data for s in got] == [fwd.data] * 3


def test_unknown_source_dropped_or_403() -> None:
    core = make_core()
    assert core.receive(invite(), ("10.6.6.6", 5060), "udp", None, T0) == []
    assert core.stats["dropped_unknown_source"] == 1
    core403 = make_core(unknown_source_code=403)
    s = only_send(core403.receive(invite(), ("10.6.6.6", 5060), "udp", None, T0))
    assert status_of(s.data) == 403 and hget(s.data, "Reason") == 'SIP;cause=403;text="unknown_source"'


def test_max_forwards_zero_and_loop() -> None:
    core = make_core()
    s = only_send(core.receive(invite(max_forwards="0"), TRUNK, "udp", None, T0))
    assert status_of(s.data) == 483 and hget(s.data, "Reason") == 'SIP;cause=483;text="too_many_hops"'
    looped = invite().replace(
        b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-123-1-0",
        b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-123-1-0\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.2:40000;branch=z9hG4bKcagt0x1abc;rport",
    )
    s = only_send(core.receive(looped, TRUNK, "udp", None, T0))
    assert status_of(s.data) == 482 and hget(s.data, "Reason") == 'SIP;cause=482;text="loop_detected"'
    assert core.in_flight() == 0


def test_preloaded_route_to_us_is_removed() -> None:
    core = make_core()
    _, fwd = start_call(core, routes=(f"<sip:{LISTEN[0]}:{LISTEN[1]};lr>", "<sip:10.0.0.50;lr>"))
    assert hall(fwd.data, "Route") == ["<sip:10.0.0.50;lr>"]


def test_missing_max_forwards_gets_69() -> None:
    core = make_core()
    _, fwd = start_call(core, max_forwards=None)
    assert hget(fwd.data, "Max-Forwards") == "69"


def test_options_and_other_methods() -> None:
    core = make_core()
    opt = request("OPTIONS", uri=f"sip:{LISTEN[0]}:{LISTEN[1]}")
    s = only_send(core.receive(opt, TRUNK, "udp", None, T0))
    assert status_of(s.data) == 200
    assert hget(s.data, "Allow") == "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, PRACK, NOTIFY, REFER"
    s = only_send(core.receive(request("MESSAGE"), TRUNK, "udp", None, T0))
    assert status_of(s.data) == 405 and hget(s.data, "Allow")
    assert core.receive(request("ACK"), TRUNK, "udp", None, T0) == []  # stray ACK


def test_overload() -> None:
    core = make_core(max_transactions=2)
    for i in range(2):
        (a,) = core.receive(invite(call_id=f"c{i}"), TRUNK, "udp", None, T0)
        assert isinstance(a, Admit)
    s = only_send(core.receive(invite(call_id="c3"), TRUNK, "udp", None, T0))
    assert status_of(s.data) == 503 and hget(s.data, "Retry-After") == "1"
    assert hget(s.data, "Reason") == 'SIP;cause=503;text="overload"'


def test_pending_transactions_expire() -> None:
    core = make_core()
    (a,) = core.receive(invite(), TRUNK, "udp", None, T0)
    assert isinstance(a, Admit)
    core.tick(T0 + 33)
    assert core.in_flight() == 0
    assert core.decided(a.key, ADMIT, T0 + 34) == [Release("t-a", "1-123@10.0.0.1")]


def test_tcp_responses_use_the_connection_and_no_retransmissions() -> None:
    core = make_core(hop_transport="tcp")
    (a,) = core.receive(invite(transport="TCP"), TRUNK, "tcp", 42, T0)
    assert isinstance(a, Admit)
    s = sends(core.decided(a.key, ADMIT, T0))
    assert s[0].conn_id == 42 and s[0].transport == "tcp" and s[0].dest == TRUNK
    fwd = s[1]
    assert fwd.transport == "tcp" and fwd.conn_id is None and fwd.dest == HOP1
    assert hall(fwd.data, "Via")[0].startswith(f"SIP/2.0/TCP {LISTEN[0]}:{LISTEN[1]};branch=z9hG4bKcag")
    rr = hget(fwd.data, "Record-Route")
    assert rr is not None and "transport=tcp" in rr
    assert core.tick(T0 + 0.6) == []  # reliable transport: no Timer A
    up = only_send(core.receive(respond(fwd.data, 180, "Ringing"), HOP1, "tcp", 7, T0 + 0.7))
    assert up.conn_id == 42 and up.transport == "tcp"
    (a2,) = core.receive(invite(call_id="t2", transport="TCP"), TRUNK, "tcp", 43, T0)
    assert isinstance(a2, Admit)
    r = only_send(core.decided(a2.key, reject("callee_dnc", trunk_id="t-a"), T0))
    assert r.conn_id == 43 and r.transport == "tcp"
    assert core.tick(T0 + 0.9) == []  # no Timer G over TCP
    # In-dialog BYE over TCP: its response goes back on the same connection.
    bye = request("BYE", transport="TCP", branch="z9hG4bK-b", cseq=2, to_tag="uas-tag-1", routes=(rr,))
    s2 = only_send(core.receive(bye, TRUNK, "tcp", 42, T0 + 1))
    assert s2.dest == HOP1 and s2.transport == "tcp"
    back = only_send(core.receive(respond(s2.data, 200), HOP1, "tcp", 7, T0 + 1.1))
    assert back.conn_id == 42 and back.transport == "tcp"


def test_garbage_never_raises() -> None:
    import random

    core = make_core()
    rng = random.Random(3)
    base = invite()
    samples = [b"", b"\r\n\r\n", b"\x00" * 50, b"INVITE", b"SIP/2.0 200 OK\r\n\r\n", bytes(range(256))]
    for _ in range(400):
        b = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            op = rng.random()
            if op < 0.4:
                b[i] = rng.randrange(256)
            elif op < 0.7:
                del b[i : i + rng.randint(1, 40)]
            else:
                b[i:i] = rng.choice([b"\r\n", b":", b";", b",", b"<", b"\x00", b"Via: x"])
        samples.append(bytes(b))
    for i, s in enumerate(samples):
        for src in (TRUNK, HOP1, ("6.6.6.6", 1)):
            acts = core.receive(s, src, "udp", None, T0 + i * 0.001)
            for a in acts:
                if isinstance(a, Admit):
                    core.decided(a.key, ADMIT if i % 2 else reject("callee_dnc"), T0)
    core.tick(T0 + 100)
    assert core.stats["internal_error"] == 0


def test_malformed_requests_are_answered_with_their_status_or_dropped() -> None:
    core = make_core()
    cases = [
        (invite().replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE"), 400),
        (invite().replace(b"sip:13800138000@10.0.0.2:5060 SIP/2.0", b"http://x SIP/2.0"), 416),
        (invite().replace(b"SIP/2.0\r\nVia", b"SIP/3.0\r\nVia", 1), 505),
        (invite(max_forwards="abc"), 400),
    ]
    for data, code in cases:
        s = only_send(core.receive(data, TRUNK, "udp", None, T0))
        assert status_of(s.data) == code and s.dest == TRUNK
        assert hget(s.data, "Reason") == f'SIP;cause={code};text="malformed"'
        assert hget(s.data, "Call-ID") == "1-123@10.0.0.1"
    assert core.stats["malformed_answered"] == 4
    # Nothing to build a response from, a broken response, an unknown source: dropped, counted.
    assert core.receive(b"NOT SIP AT ALL", TRUNK, "udp", None, T0) == []
    assert core.receive(b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n", HOP1, "udp", None, T0) == []
    assert core.receive(cases[0][0], ("6.6.6.6", 5060), "udp", None, T0) == []
    # The unknown source's request is dropped before parsing, so it counts as that.
    assert core.stats["dropped_malformed"] == 2 and core.stats["dropped_unknown_source"] == 1
