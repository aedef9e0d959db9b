"""Issue 15 findings reproduced at the proxy core (the lowest level that shows each).

Each reproducing test was a strict xfail until its finding was fixed (all
ten are now); the rules behind each fix have tests of their own below the
reproducers. Findings about sockets (3: which socket a
request leaves from; 9: the worker's metric) have integration twins in
tests/integration/test_interop_findings.py. Only the public facade is used
(``receive`` / ``decided`` / ``tick`` / ``hop_status``): the core is being
split into modules.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from gateway.proxy import Admit, NextHop, ProxyCore, Send
from policy.decision import Decision
from tests.unit.proxy._support import (
    HOP1,
    HOP2,
    LISTEN,
    PRIVATE,
    TRUNK,
    first_line,
    hall,
    make_core,
    param,
    request,
    respond,
    status_of,
)
from tests.unit.proxy._support import invite as make_invite

T0 = 1000.0
ADMITTED = Decision(admit=True, reason="admitted", sip_code=0, trunk_id="T1", enterprise_id="E1")
CONN = 7  # the caller's TCP connection id
CALLER_TCP = (TRUNK[0], 54634)  # the TCP peer: an ephemeral port, not the Via's sent-by
NODE = ("10.0.0.11", 5070)  # another node of the carrier core: not the configured next-hop address


def _sends(actions: Sequence[object]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def _call(
    core: ProxyCore, *, transport: str = "udp", via_host: str = "10.0.0.1:5060", source: tuple[str, int] = TRUNK
) -> tuple[bytes, bytes]:
    """An INVITE admitted and forwarded to HOP1, answered 200 by the callee; returns (forwarded, 200)."""
    inv = make_invite(via_host=via_host, transport=transport.upper(), branch="z9hG4bK-i15-1;rport")
    conn = CONN if transport == "tcp" else None
    acts = core.receive(inv, source, transport, conn, T0)
    (admit,) = [a for a in acts if isinstance(a, Admit)]
    fwd = [s for s in _sends(core.decided(admit.key, ADMITTED, T0)) if s.dest == HOP1]
    assert len(fwd) == 1
    ok = respond(fwd[0].data, 200)
    core.receive(ok, HOP1, "udp", None, T0 + 0.1, True)
    return fwd[0].data, ok


def _callee_bye(fwd: bytes, ok: bytes) -> bytes:
    """The callee's BYE: From is the callee (its To tag), To the caller, Route = the Record-Route set."""
    rr = hall(ok, "Record-Route")
    caller_tag = param(hall(fwd, "From")[0], "tag")
    return request(
        "BYE",
        call_id=hall(fwd, "Call-ID")[0],
        branch="z9hG4bK-callee-bye-1",
        via_host=f"{HOP1[0]}:{HOP1[1]}",
        cseq=1,
        from_tag="uas-tag-1",
        to_tag=caller_tag,
        uri="sip:sipp@10.0.0.1:5060",
        routes=tuple(rr),
        max_forwards="70",
    )


# ------------------------------------------------------------------ finding 1


def test_record_route_facing_the_hop_matches_the_hop_transport() -> None:
    core = make_core()
    fwd, _ = _call(core, transport="tcp", via_host="10.0.0.7:25064", source=CALLER_TCP)
    rrs = hall(fwd, "Record-Route")
    assert rrs, "no Record-Route"
    # The callee routes its requests to the first Record-Route value: it must be reachable over UDP.
    assert "transport=tcp" not in rrs[0].lower()
    # And the caller (TCP) gets one that says tcp: two values when the transports differ.
    assert any("transport=tcp" in v.lower() for v in rrs[1:])


def test_callee_bye_from_the_hop_address_reaches_the_caller_udp() -> None:
    """Baseline that works today: caller over UDP, the callee's BYE from the configured hop address."""
    core = make_core()
    fwd, ok = _call(core)
    out = _sends(core.receive(_callee_bye(fwd, ok), HOP1, "udp", None, T0 + 1, True))
    assert [first_line(s.data).split()[0] for s in out] == ["BYE"]
    assert out[0].dest == TRUNK


def test_callee_bye_from_another_core_node_reaches_the_caller() -> None:
    core = make_core()
    fwd, ok = _call(core)
    acts = core.receive(_callee_bye(fwd, ok), NODE, "udp", None, T0 + 1)
    out = _sends(acts)
    assert [first_line(s.data).split()[0] for s in out] == ["BYE"], [first_line(s.data) for s in out]
    assert out[0].dest == TRUNK


# ------------------------------------------------------------------ finding 2


def test_received_added_to_a_tcp_callers_via() -> None:
    core = make_core()
    fwd, _ = _call(core, transport="tcp", via_host="10.0.0.7:25064", source=CALLER_TCP)
    caller_via = hall(fwd, "Via")[1]
    assert param(caller_via, "received") == CALLER_TCP[0]


def test_rport_filled_on_the_callers_via() -> None:
    core = make_core()
    fwd, _ = _call(core, transport="tcp", via_host="10.0.0.7:25064", source=CALLER_TCP)
    caller_via = hall(fwd, "Via")[1]
    assert param(caller_via, "rport") == str(CALLER_TCP[1])


def test_rport_filled_on_a_udp_callers_via() -> None:
    core = make_core()
    fwd, _ = _call(core, via_host="10.0.0.1:5062", source=(TRUNK[0], 40123))
    caller_via = hall(fwd, "Via")[1]
    assert param(caller_via, "rport") == "40123"
    assert param(caller_via, "received") == TRUNK[0]


# ------------------------------------------------------------------ finding 3


def test_callee_bye_towards_the_trunk_leaves_from_the_listen_address() -> None:
    core = make_core()
    fwd, ok = _call(core)
    out = _sends(core.receive(_callee_bye(fwd, ok), HOP1, "udp", None, T0 + 1, True))
    assert len(out) == 1 and out[0].dest == TRUNK
    assert not out[0].private
    top = hall(out[0].data, "Via")[0]
    assert f"{LISTEN[0]}:{LISTEN[1]};" in top, top


# ------------------------------------------------------------------ finding 9


def test_udp_crlf_keepalive_is_not_malformed() -> None:
    core = make_core()
    for ka in (b"\r\n\r\n", b"\r\n"):
        assert [a for a in core.receive(ka, TRUNK, "udp", None, T0) if isinstance(a, Send) and a.dest != TRUNK] == []
    assert core.stats["dropped_malformed"] == 0
    assert core.stats["malformed_answered"] == 0


# ------------------------------------------------------------------ finding 10


def _probe_to(core: ProxyCore, now: float) -> Send:
    (p,) = [s for s in _sends(core.tick(now)) if s.dest == HOP1 and first_line(s.data).startswith("OPTIONS ")]
    return p


def test_probe_silence_marks_a_hop_down() -> None:
    """Baseline (works today): no answer within the hop timeout puts the hop down."""
    core = make_core(probe_interval=2.0, hop_timeout=1.0)
    _probe_to(core, T0)
    core.tick(T0 + 1.5)
    assert [up for _, up in core.hop_status()] == [False]


def test_probe_503_keeps_a_hop_down() -> None:
    core = make_core(probe_interval=2.0, hop_timeout=1.0)
    _probe_to(core, T0)
    core.tick(T0 + 1.5)  # silence: down
    p = _probe_to(core, T0 + 2.0)
    core.receive(respond(p.data, 503, "Service Unavailable"), HOP1, "udp", None, T0 + 2.1, True)
    core.tick(T0 + 2.2)
    assert [up for _, up in core.hop_status()] == [False]


def test_probe_503_puts_an_up_hop_down() -> None:
    core = make_core(probe_interval=2.0, hop_timeout=1.0)
    p = _probe_to(core, T0)
    core.receive(respond(p.data, 503, "Service Unavailable"), HOP1, "udp", None, T0 + 0.1, True)
    core.tick(T0 + 1.5)
    assert [up for _, up in core.hop_status()] == [False]


def test_probe_404_still_means_up() -> None:
    """Any other answer (even 404) proves the hop alive: unchanged by finding 10."""
    core = make_core(probe_interval=2.0, hop_timeout=1.0)
    _probe_to(core, T0)
    core.tick(T0 + 1.5)
    p = _probe_to(core, T0 + 2.0)
    core.receive(respond(p.data, 404, "Not Found"), HOP1, "udp", None, T0 + 2.1, True)
    assert [up for _, up in core.hop_status()] == [True]


# ------------------------------------------------------------------ finding 7


def test_invite_with_unsupported_proxy_require_gets_420() -> None:
    core = make_core()
    inv = make_invite(extra=("X-Consent-Token: tok-1", "Proxy-Require: com.example.nothing"))
    acts = core.receive(inv, TRUNK, "udp", None, T0)
    assert not any(isinstance(a, Admit) for a in acts)
    out = _sends(acts)
    assert len(out) == 1 and out[0].dest == TRUNK
    assert first_line(out[0].data).startswith("SIP/2.0 420 ")
    assert hall(out[0].data, "Unsupported") == ["com.example.nothing"]


def test_invite_with_require_only_is_not_a_proxy_matter() -> None:
    """Require is for the UAS (RFC 3261 §16.3 step 5 names Proxy-Require only): it goes to policy."""
    core = make_core()
    inv = make_invite(extra=("X-Consent-Token: tok-1", "Require: com.example.nothing"))
    assert any(isinstance(a, Admit) for a in core.receive(inv, TRUNK, "udp", None, T0))


def test_crlf_keepalives_are_counted_as_such() -> None:
    """Finding 9: an event of their own; nothing answered over UDP (RFC 5626 §3.5.1: no pong there)."""
    core = make_core()
    assert core.receive(b"\r\n\r\n", TRUNK, "udp", None, T0) == []
    assert core.receive(b"\r\n", TRUNK, "udp", None, T0) == []
    assert core.stats["keepalives"] == 2


def test_probe_provisional_is_not_an_answer() -> None:
    """Finding 10: a 100 to the probe says nothing; the final (here silence) decides."""
    core = make_core(probe_interval=2.0, hop_timeout=1.0)
    p = _probe_to(core, T0)
    core.receive(respond(p.data, 100, "Trying"), HOP1, "udp", None, T0 + 0.1, True)
    core.tick(T0 + 1.5)
    assert [up for _, up in core.hop_status()] == [False]


def test_proxy_require_lists_every_tag_once_and_spares_ack_and_cancel() -> None:
    """Finding 7: Unsupported names each Proxy-Require tag (several lines, repeats once); ACK/CANCEL never 420."""
    core = make_core()
    inv = make_invite(extra=("X-Consent-Token: tok-1", "Proxy-Require: a, b", "Proxy-Require: a,c"))
    (out,) = _sends(core.receive(inv, TRUNK, "udp", None, T0))
    assert first_line(out.data).startswith("SIP/2.0 420 ")
    assert hall(out.data, "Unsupported") == ["a, b, c"]
    assert core.stats["bad_extension"] == 1
    for method in ("ACK", "CANCEL"):
        req = request(method, extra=("Proxy-Require: a",), branch=f"z9hG4bK-pr-{method}")
        assert not any(status_of(s.data) == 420 for s in _sends(core.receive(req, TRUNK, "udp", None, T0)))


@pytest.mark.parametrize(
    "line",
    [
        b"INVITE  sip:13800138000@10.0.0.2:5060 SIP/2.0",
        b"INVITE sip:13800138000@10.0.0.2:5060 SIP/2.0 ",
    ],
)
def test_raw_400_for_a_broken_request_line(line: bytes) -> None:
    """Finding 6: the 400 built from raw lines copies Via, From, To (+ our tag), Call-ID, CSeq."""
    core = make_core()
    inv = make_invite()
    data = line + inv[inv.index(b"\r\n") :]
    (out,) = _sends(core.receive(data, TRUNK, "udp", None, T0))
    assert out.dest == TRUNK and status_of(out.data) == 400
    assert hall(out.data, "Via") == hall(inv, "Via")
    assert hall(out.data, "Call-ID") == hall(inv, "Call-ID")
    assert param(hall(out.data, "To")[0], "tag")


def test_raw_400_needs_a_via() -> None:
    """No Via, no way to route an answer: dropped (counted)."""
    core = make_core()
    inv = make_invite()
    lines = [ln for ln in inv.split(b"\r\n") if not ln.startswith(b"Via:")]
    data = b"\r\n".join(lines).replace(b"INVITE sip:", b"INVITE  sip:", 1)
    assert _sends(core.receive(data, TRUNK, "udp", None, T0)) == []
    assert core.stats["dropped_malformed"] == 1


# ------------------------------------------------------------------ finding 1: the rules behind the fix


def _tcp_call(core: ProxyCore) -> tuple[bytes, bytes]:
    return _call(core, transport="tcp", via_host="10.0.0.7:25064", source=CALLER_TCP)


def test_double_record_route_both_popped_for_the_callee_and_the_caller() -> None:
    """RFC 5658: the callee's Route is [hop-facing, caller-facing], the caller's the reverse; both ours go."""
    core = make_core()
    fwd, ok = _tcp_call(core)
    rrs = hall(ok, "Record-Route")
    assert len(rrs) == 2 and "transport=udp" in rrs[0] and "transport=tcp" in rrs[1]
    out = _sends(core.receive(_callee_bye(fwd, ok), NODE, "udp", None, T0 + 1))
    assert len(out) == 1 and out[0].dest == TRUNK and out[0].transport == "udp"
    assert hall(out[0].data, "Route") == []
    # The caller's re-INVITE over its TCP connection: its route set is the Record-Route reversed.
    reinv = request(
        "INVITE", call_id=hall(fwd, "Call-ID")[0], branch="z9hG4bK-caller-re-1", via_host="10.0.0.7:25064",
        transport="TCP", cseq=2, to_tag="uas-tag-1", routes=tuple(reversed(rrs)),
    )
    out = _sends(core.receive(reinv, CALLER_TCP, "tcp", CONN, T0 + 2))
    assert len(out) == 1 and out[0].dest == HOP1 and out[0].transport == "udp" and out[0].private
    assert hall(out[0].data, "Route") == []


def test_callee_request_to_a_tcp_contact_goes_over_tcp_from_the_listen_address() -> None:
    core = make_core()
    fwd, ok = _tcp_call(core)
    bye = _callee_bye(fwd, ok).replace(b"BYE sip:sipp@10.0.0.1:5060 ", b"BYE sip:sipp@10.0.0.7:25064;transport=tcp ")
    (out,) = _sends(core.receive(bye, HOP1, "udp", None, T0 + 1, True))
    assert (out.dest, out.transport, out.conn_id, out.private) == (("10.0.0.7", 25064), "tcp", None, False)
    assert hall(out.data, "Via")[0].startswith(f"SIP/2.0/TCP {LISTEN[0]}:{LISTEN[1]};")


def test_a_trunk_cannot_speak_as_the_callee() -> None:
    """Tags swapped by the trunk (its own tag in To) would make us send to a target of its choosing: 481."""
    core = make_core()
    fwd, ok = _call(core)
    out = _sends(core.receive(_callee_bye(fwd, ok), TRUNK, "udp", None, T0 + 1))
    assert [status_of(s.data) for s in out] == [481]
    assert core.stats["in_dialog_trunk_as_callee"] == 1


def test_unknown_source_without_a_valid_token_is_dropped_not_answered() -> None:
    core = make_core()
    fwd, ok = _call(core)
    bye = _callee_bye(fwd, ok).replace(b";cag=", b";cag=AAAA", 1)
    assert core.receive(bye, NODE, "udp", None, T0 + 1) == []
    assert core.stats["dropped_unknown_source"] == 1
    # Nor does a To-tagged request with no token at all get past the early screen.
    bare = request("BYE", to_tag="x", branch="z9hG4bK-bare")
    assert core.receive(bare, NODE, "udp", None, T0 + 1) == []
    assert core.stats["dropped_unknown_source"] == 2


def test_failover_to_a_hop_of_another_transport_rewrites_our_record_routes() -> None:
    core = make_core()
    core.set_next_hops((NextHop(HOP1[0], HOP1[1], "udp"), NextHop(HOP2[0], HOP2[1], "tcp")))
    inv = make_invite(via_host="10.0.0.7:25064", transport="TCP", branch="z9hG4bK-fo-1")
    inv = inv.replace(b"Max-Forwards: 70", b"Max-Forwards: 70\r\nRecord-Route: <sip:up.example;lr>")
    acts = core.receive(inv, CALLER_TCP, "tcp", CONN, T0)
    (admit,) = [a for a in acts if isinstance(a, Admit)]
    (first,) = [s for s in _sends(core.decided(admit.key, ADMITTED, T0)) if s.dest in (HOP1, HOP2)]
    second_hop = HOP2 if first.dest == HOP1 else HOP1
    # The first hop answers 503 before ringing: failover to the other.
    sent = _sends(core.receive(respond(first.data, 503, "Busy"), first.dest, first.transport, None, T0 + 0.1, True))
    (again,) = [s for s in sent if first_line(s.data).startswith("INVITE ")]
    assert again.dest == second_hop
    for s in (first, again):
        rrs = hall(s.data, "Record-Route")
        assert rrs[-1] == "<sip:up.example;lr>"
        ours = rrs[:-1]
        want = ["tcp"] if s.transport == "tcp" else ["udp", "tcp"]
        assert [param(v, "transport") for v in ours] == want, rrs


# ------------------------------------------------------------------ finding 2: Via stamping rules


@pytest.mark.parametrize(
    ("via", "source", "want"),
    [
        ("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1", ("10.0.0.1", 5060), None),
        ("SIP/2.0/UDP host.example:5060;branch=z9hG4bK1", ("10.0.0.1", 5060),
         "SIP/2.0/UDP host.example:5060;branch=z9hG4bK1;received=10.0.0.1"),
        ("SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bK1", ("10.0.0.1", 4000),
         "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;received=10.0.0.1;rport=4000"),
        ("SIP/2.0/UDP 10.0.0.1;received=6.6.6.6;branch=z9hG4bK1", ("10.0.0.1", 5060),
         "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1;received=10.0.0.1"),
        ('SIP/2.0/TCP [2001:db8::1]:5060;x="a;b";branch=z9hG4bK1', ("2001:db8::2", 3000),
         'SIP/2.0/TCP [2001:db8::1]:5060;x="a;b";branch=z9hG4bK1;received=2001:db8::2'),
        ("SIP/2.0/TCP [2001:DB8::1]:5060;branch=z9hG4bK1", ("2001:db8::1", 3000), None),
    ],
)
def test_stamp_via(via: str, source: tuple[str, int], want: str | None) -> None:
    from gateway.proxy.shared import stamp_via
    from gateway.sip.via import parse_via

    assert stamp_via(parse_via(via), source) == want


def test_in_dialog_request_gets_received_and_rport() -> None:
    core = make_core()
    fwd, ok = _call(core)
    bye = _callee_bye(fwd, ok).replace(b";branch=z9hG4bK-callee-bye-1", b";branch=z9hG4bK-callee-bye-1;rport")
    (out,) = _sends(core.receive(bye, (HOP1[0], 41000), "udp", None, T0 + 1, True))
    assert param(hall(out.data, "Via")[1], "rport") == "41000"
    assert param(hall(out.data, "Via")[1], "received") == HOP1[0]


def test_callee_request_to_a_tls_target_without_tls_configured_gets_503() -> None:
    core = make_core()
    fwd, ok = _call(core)
    bye = _callee_bye(fwd, ok).replace(b"BYE sip:sipp@10.0.0.1:5060 ", b"BYE sips:sipp@10.0.0.1:5061 ")
    (out,) = _sends(core.receive(bye, HOP1, "udp", None, T0 + 1, True))
    assert out.dest == HOP1 and status_of(out.data) == 503


def test_tls_caller_and_hop_record_route_and_via() -> None:
    """With TLS served: a TLS caller to a UDP hop gets [udp, tls] Record-Route; a callee BYE to a sips: target goes over TLS."""
    from gateway.proxy import CoreConfig

    cfg = CoreConfig(listen=LISTEN, private=PRIVATE, next_hops=(NextHop(*HOP1),), rr_secret=b"s",
                     probe_interval=0.0, listen_tls=(LISTEN[0], 5061))
    core = ProxyCore(cfg, lambda ip: ip == TRUNK[0])
    fwd, ok = _call(core, transport="tls", via_host="10.0.0.7:5061", source=CALLER_TCP)
    rrs = hall(fwd, "Record-Route")
    assert rrs[0].startswith(f"<sip:{LISTEN[0]}:{LISTEN[1]};transport=udp;")
    assert rrs[1].startswith(f"<sip:{LISTEN[0]}:5061;transport=tls;")
    bye = _callee_bye(fwd, ok).replace(b"BYE sip:sipp@10.0.0.1:5060 ", b"BYE sips:sipp@10.0.0.7:5061 ")
    (out,) = _sends(core.receive(bye, HOP1, "udp", None, T0 + 1, True))
    assert (out.dest, out.transport, out.private) == (("10.0.0.7", 5061), "tls", False)
    assert hall(out.data, "Via")[0].startswith(f"SIP/2.0/TLS {LISTEN[0]}:5061;")
