"""ProxyCore, the facade: a whole call through it, other methods, TCP, arbitrary bytes (SPEC §6).

Pure: bytes in, actions out, time passed explicitly.
"""

from __future__ import annotations

import random

from gateway.proxy import Admit, Outcome, Release
from policy.decision import reject
from tests.unit.proxy._support import (
    ADMIT,
    HOP1,
    LISTEN,
    PRIVATE,
    SDP,
    T0,
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
    quiet_core,
    request,
    respond,
    sends,
    start_call,
    status_of,
)


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


def test_options_and_other_methods() -> None:
    core = make_core()
    opt = request("OPTIONS", uri=f"sip:{LISTEN[0]}:{LISTEN[1]}")
    s = only_send(core.receive(opt, TRUNK, "udp", None, T0))
    assert status_of(s.data) == 200
    assert hget(s.data, "Allow") == "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, PRACK, NOTIFY, REFER"
    s = only_send(core.receive(request("MESSAGE"), TRUNK, "udp", None, T0))
    assert status_of(s.data) == 405 and hget(s.data, "Allow")
    assert core.receive(request("ACK"), TRUNK, "udp", None, T0) == []  # stray ACK


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
