"""Builders for the proxy core tests: SIPp-shaped messages as bytes, and a few wire readers.

Deliberately independent of gateway.sip (plain string work), so the tests
check the bytes the core emits, not the parser's view of them.
"""

from __future__ import annotations

import random

from gateway.proxy import Admit, CoreConfig, NextHop, ProxyCore, Send
from policy.decision import admitted

TRUNK = ("10.0.0.1", 5060)
TRUNK_IP = TRUNK[0]
HOP1 = ("10.0.0.9", 5070)
HOP2 = ("10.0.0.10", 5070)
LISTEN = ("10.0.0.2", 5060)
PRIVATE = ("10.0.0.2", 40000)
SECRET = b"test-secret"
WALL = 1_800_000_000.0  # the wall offset the tests' cores get: wall time = now + WALL
T0 = 1000.0
ADMIT = admitted(trunk_id="t-a")
SDP = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n"


def make_core(hops: tuple[tuple[str, int], ...] = (HOP1,), **kw: object) -> ProxyCore:
    transport = kw.pop("hop_transport", "udp")
    kw.setdefault("probe_interval", 0.0)  # no probes unless a test is about them
    cfg = CoreConfig(
        listen=LISTEN,
        private=PRIVATE,
        next_hops=tuple(NextHop(h, p, str(transport)) for h, p in hops),
        rr_secret=SECRET,
        **kw,  # type: ignore[arg-type]
    )
    return ProxyCore(cfg, lambda ip: ip == TRUNK_IP, rng=random.Random(7), wall_offset=WALL)


def invite(
    call_id: str = "1-123@10.0.0.1",
    branch: str = "z9hG4bK-123-1-0",
    *,
    via_host: str = "10.0.0.1:5060",
    transport: str = "UDP",
    cseq: int = 1,
    method: str = "INVITE",
    to_tag: str | None = None,
    from_tag: str = "123SIPpTag001",
    uri: str = "sip:13800138000@10.0.0.2:5060",
    extra: tuple[str, ...] = ("X-Consent-Token: tok-1", "X-Call-Purpose: callback"),
    max_forwards: str | None = "70",
    routes: tuple[str, ...] = (),
    body: bytes = SDP,
    caller: str = "1058001234",
) -> bytes:
    """What SIPp's uac.xml sends (header order and shapes included)."""
    to = "<sip:13800138000@10.0.0.2:5060>" + (f";tag={to_tag}" if to_tag else "")
    lines = [f"{method} {uri} SIP/2.0", f"Via: SIP/2.0/{transport} {via_host};branch={branch}"]
    lines += [f"Route: {r}" for r in routes]
    lines += [
        f"From: sipp <sip:{caller}@10.0.0.1:5060>;tag={from_tag}",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        "Contact: sip:sipp@10.0.0.1:5060",
    ]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    lines += ["Subject: Performance Test", *extra]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def request(method: str, **kw: object) -> bytes:
    kw.setdefault("extra", ())
    kw.setdefault("body", b"")
    return invite(method=method, **kw)  # type: ignore[arg-type]


def headers(data: bytes) -> list[tuple[str, str]]:
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    out = []
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        out.append((name.strip(), value.strip()))
    return out


def first_line(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0].decode()


def status_of(data: bytes) -> int:
    return int(first_line(data).split()[1])


def hget(data: bytes, name: str) -> str | None:
    for n, v in headers(data):
        if n.lower() == name.lower():
            return v
    return None


def hall(data: bytes, name: str) -> list[str]:
    return [v for n, v in headers(data) if n.lower() == name.lower()]


def body_of(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[1]


def param(value: str, name: str) -> str | None:
    for p in value.split(";")[1:]:
        k, _, v = p.partition("=")
        if k.strip().lower() == name:
            return v.strip().rstrip(">")
    return None


def respond(
    req: bytes,
    status: int,
    phrase: str = "OK",
    *,
    to_tag: str | None = "uas-tag-1",
    comma_vias: bool = True,
    contact: str = "<sip:uas@10.0.0.9:5070>",
) -> bytes:
    """A UAS response the way SIPp writes it: all Via values on one comma-joined line."""
    vias = hall(req, "Via")
    lines = [f"SIP/2.0 {status} {phrase}"]
    if comma_vias:
        lines.append("Via: " + ", ".join(vias))
    else:
        lines += [f"Via: {v}" for v in vias]
    lines += [f"Record-Route: {rr}" for rr in hall(req, "Record-Route")]
    to = hget(req, "To") or ""
    if to_tag and status > 100 and ";tag=" not in to:
        to += f";tag={to_tag}"
    lines += [
        f"From: {hget(req, 'From')}",
        f"To: {to}",
        f"Call-ID: {hget(req, 'Call-ID')}",
        f"CSeq: {hget(req, 'CSeq')}",
        f"Contact: {contact}",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def sends(actions: list[object]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def only_send(actions: list[object]) -> Send:
    s = sends(actions)
    assert len(s) == 1, actions
    return s[0]


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


def forwarded(core: ProxyCore, now: float = T0) -> Send:
    """INVITE in and admitted at ``now``: the INVITE sent to the (first picked) hop."""
    (a,) = core.receive(invite(), TRUNK, "udp", None, now)
    assert isinstance(a, Admit)
    s = sends(core.decided(a.key, ADMIT, now))
    return s[1]


def quiet_core(**kw: object) -> ProxyCore:
    return make_core(**kw)  # type: ignore[arg-type]
