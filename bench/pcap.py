"""SIP over UDP in pcap / pcapng files: read INVITEs and answer times, write synthetic captures.

Parsing of the capture formats and of Ethernet / IP / UDP is dpkt's (a
well-kept library), not ours; only the SIP start line and the handful of
headers a benchmark needs are read here. Used three ways:

- ``latencies``: INVITE → first final response per Call-ID, from a loopback
  capture taken during a sweep step (µs timestamps, unlike SIPp's own
  response times, which come in 4 ms steps on the reference machine);
- ``read_invites``: the initial INVITEs of a capture, with their timing, for
  ``python -m bench replay``;
- ``write_synthetic``: a realistic capture (trunk side of the gateway:
  INVITE / 100 / 180 / 200 / ACK / BYE / 200, or INVITE / 100 / reject /
  ACK) of calls drawn from the benchmark data set, so the replay path is
  tested without private data.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import dpkt

from bench.dataset import Call

# Compact header forms (RFC 3261 §7.3.3) a real trunk may send.
_COMPACT = {"i": "call-id", "f": "from", "t": "to", "v": "via", "m": "contact", "l": "content-length"}


@dataclass(frozen=True)
class SipPacket:
    ts: float
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


@dataclass(frozen=True)
class SipHead:
    """The start line and the few headers read here (first value of each, lower-case names)."""

    method: str | None  # requests
    status: int | None  # responses
    uri: str
    headers: dict[str, str]

    @property
    def call_id(self) -> str:
        return self.headers.get("call-id", "")

    @property
    def cseq_method(self) -> str:
        return self.headers.get("cseq", " ").split()[-1].upper() if self.headers.get("cseq") else ""


def parse_head(payload: bytes) -> SipHead | None:
    """Start line + headers of one SIP message, or None for anything that is not SIP."""
    head = payload.split(b"\r\n\r\n", 1)[0]
    try:
        lines = head.decode("utf-8", "replace").split("\r\n")
    except Exception:  # pragma: no cover - decode with "replace" does not raise
        return None
    first = lines[0].split(" ", 2)
    if len(first) < 2:
        return None
    method: str | None = None
    status: int | None = None
    uri = ""
    if first[0].startswith("SIP/2.0"):
        if not first[1].isdigit():
            return None
        status = int(first[1])
    elif len(first) == 3 and first[2].startswith("SIP/2.0"):
        method, uri = first[0], first[1]
    else:
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        key = _COMPACT.get(key, key)
        headers.setdefault(key, value.strip())
    return SipHead(method, status, uri, headers)


def _reader(f: BinaryIO) -> dpkt.pcap.Reader | dpkt.pcapng.Reader:
    """A dpkt reader for pcap or pcapng, chosen by magic number (not by file extension)."""
    magic = f.read(4)
    f.seek(0)
    if magic == b"\x0a\x0d\x0d\x0a":
        return dpkt.pcapng.Reader(f)
    return dpkt.pcap.Reader(f)


def _ip_of(buf: bytes, link: int) -> dpkt.ip.IP | dpkt.ip6.IP6 | None:
    if link == dpkt.pcap.DLT_EN10MB:
        frame: dpkt.Packet = dpkt.ethernet.Ethernet(buf)
        data = frame.data
    elif link == dpkt.pcap.DLT_LINUX_SLL:
        data = dpkt.sll.SLL(buf).data
    elif link == getattr(dpkt.pcap, "DLT_LINUX_SLL2", 276):
        data = dpkt.sll2.SLL2(buf).data
    elif link in (dpkt.pcap.DLT_NULL, dpkt.pcap.DLT_LOOP):
        data = dpkt.loopback.Loopback(buf).data
    elif link in (dpkt.pcap.DLT_RAW, 101):
        data = dpkt.ip.IP(buf) if buf and buf[0] >> 4 == 4 else dpkt.ip6.IP6(buf)
    else:
        raise ValueError(f"unsupported link type {link}")
    return data if isinstance(data, (dpkt.ip.IP, dpkt.ip6.IP6)) else None


def iter_sip(path: Path) -> Iterator[SipPacket]:
    """Every UDP datagram of the capture that carries a SIP message (IPv4 and IPv6)."""
    with open(path, "rb") as f:
        reader = _reader(f)
        link = int(reader.datalink())
        for ts, buf in reader:
            try:
                ip = _ip_of(buf, link)
            except (dpkt.UnpackError, IndexError):
                continue
            if ip is None or not isinstance(ip.data, dpkt.udp.UDP):
                continue
            udp = ip.data
            payload = bytes(udp.data)
            if not (payload.startswith(b"SIP/2.0") or b" SIP/2.0\r\n" in payload[:512]):
                continue
            fam = socket.AF_INET6 if isinstance(ip, dpkt.ip6.IP6) else socket.AF_INET
            yield SipPacket(
                float(ts),
                (socket.inet_ntop(fam, ip.src), int(udp.sport)),
                (socket.inet_ntop(fam, ip.dst), int(udp.dport)),
                payload,
            )


# ------------------------------------------------------------------ latency
@dataclass(frozen=True)
class Answered:
    call_id: str
    invite_ts: float
    final_ts: float
    status: int
    reason: str  # the Reason header's text (the gateway's reason code) or "admitted" / ""

    @property
    def latency_ms(self) -> float:
        return (self.final_ts - self.invite_ts) * 1000.0


def reason_text(head: SipHead) -> str:
    """The gateway's reason code from ``Reason: SIP;cause=608;text="consent_unknown"``."""
    value = head.headers.get("reason", "")
    _, sep, rest = value.partition('text="')
    return rest.split('"', 1)[0] if sep else ""


def latencies(path: Path) -> tuple[list[Answered], int]:
    """INVITE → first final response per Call-ID; also the number of INVITEs never answered.

    Retransmitted INVITEs keep the first send time (the caller's experience).
    """
    sent: dict[str, float] = {}
    out: dict[str, Answered] = {}
    for pkt in iter_sip(path):
        head = parse_head(pkt.payload)
        if head is None:
            continue
        cid = head.call_id
        if head.method == "INVITE":
            sent.setdefault(cid, pkt.ts)
        elif head.status is not None and head.status >= 200 and head.cseq_method == "INVITE":
            if cid in sent and cid not in out:
                reason = reason_text(head) or ("admitted" if head.status < 300 else "")
                out[cid] = Answered(cid, sent[cid], pkt.ts, head.status, reason)
    return list(out.values()), len(sent) - len(out)


# ------------------------------------------------------------------ replay input
@dataclass(frozen=True)
class Invite:
    """An initial INVITE as captured: what a replay needs to place the same call again."""

    ts: float
    call_id: str
    caller: str
    callee: str
    token: str
    purpose: str
    pai: str = ""


def _user(value: str) -> str:
    """The user part of a name-addr / addr-spec (``<sip:4001@h;user=phone>;tag=x`` → ``4001``)."""
    v = value
    if "<" in v:
        v = v.split("<", 1)[1].split(">", 1)[0]
    for scheme in ("sips:", "sip:", "tel:"):
        if v.lower().startswith(scheme):
            v = v[len(scheme) :]
            break
    return v.split("@", 1)[0].split(";", 1)[0]


def read_invites(path: Path) -> list[Invite]:
    """Initial INVITEs (no To tag), first copy per Call-ID, in time order."""
    seen: set[str] = set()
    out: list[Invite] = []
    for pkt in iter_sip(path):
        head = parse_head(pkt.payload)
        if head is None or head.method != "INVITE":
            continue
        if ";tag=" in head.headers.get("to", "") or head.call_id in seen:
            continue
        seen.add(head.call_id)
        out.append(
            Invite(
                ts=pkt.ts,
                call_id=head.call_id,
                caller=_user(head.headers.get("from", "")),
                callee=_user(head.uri),
                token=head.headers.get("x-consent-token", ""),
                purpose=head.headers.get("x-call-purpose", ""),
                pai=_user(head.headers.get("p-asserted-identity", "")),
            )
        )
    out.sort(key=lambda i: i.ts)
    return out


def read_inf(path: Path, rate: float) -> list[Invite]:
    """A SIPp injection file (``caller;callee;token;purpose``…) as INVITEs ``1/rate`` s apart.

    Such files carry no timing, so the pace is the caller's choice.
    """
    out: list[Invite] = []
    lines = Path(path).read_text().splitlines()
    if lines and lines[0].strip().upper() in ("SEQUENTIAL", "RANDOM", "USER", "SEQUENTIAL,PRINTF=NO"):
        lines = lines[1:]
    for n, line in enumerate(x for x in lines if x.strip() and not x.startswith("#")):
        f = [*line.split(";"), "", "", "", ""]
        out.append(Invite(ts=n / rate, call_id=f"inf-{n}", caller=f[0], callee=f[1], token=f[2], purpose=f[3]))
    return out


# ------------------------------------------------------------------ synthetic capture
TRUNK = ("192.0.2.10", 5060)  # TEST-NET-1: the call centre's trunk (documentation range)
GATEWAY = ("198.51.100.1", 5060)  # TEST-NET-2: the gateway's public side

_REJECT = {
    "consent_unknown": 608, "callee_dnc": 608, "caller_not_filed": 403, "purpose_marketing": 608,
    "consent_expired": 608, "consent_missing": 608, "caller_outbound_disabled": 403,
}


def _frame(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    udp = dpkt.udp.UDP(sport=src[1], dport=dst[1], data=payload)
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(src=socket.inet_aton(src[0]), dst=socket.inet_aton(dst[0]), p=dpkt.ip.IP_PROTO_UDP,
                    ttl=64, data=udp)
    ip.len = len(ip)
    eth = dpkt.ethernet.Ethernet(src=b"\x02\x00\x00\x00\x00\x01", dst=b"\x02\x00\x00\x00\x00\x02",
                                 type=dpkt.ethernet.ETH_TYPE_IP, data=ip)
    return bytes(eth)


def _invite(call: Call, cid: str, n: int) -> bytes:
    sdp = (
        "v=0\r\no=cc 5365 2353 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
        "m=audio 16384 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    )
    extra = ""
    if call.token:
        extra += f"X-Consent-Token: {call.token}\r\n"
    if call.purpose:
        extra += f"X-Call-Purpose: {call.purpose}\r\n"
    return (
        f"INVITE sip:{call.callee}@198.51.100.1:5060;user=phone SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-cc-{n}-1;rport\r\n"
        f"From: <sip:{call.caller}@192.0.2.10;user=phone>;tag=cc-{n}\r\n"
        f"To: <sip:{call.callee}@198.51.100.1;user=phone>\r\n"
        f"Call-ID: {cid}\r\nCSeq: 1 INVITE\r\nContact: <sip:cc@192.0.2.10:5060>\r\nMax-Forwards: 70\r\n"
        f"{extra}User-Agent: CallCentre-PBX/2.1\r\nContent-Type: application/sdp\r\n"
        f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
    ).encode()


def _response(call: Call, cid: str, n: int, status: int, text: str, extra: str = "", tag: bool = True) -> bytes:
    to_tag = f";tag=gw-{n}" if tag else ""
    return (
        f"SIP/2.0 {status} {text}\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-cc-{n}-1;rport=5060\r\n"
        f"From: <sip:{call.caller}@192.0.2.10;user=phone>;tag=cc-{n}\r\n"
        f"To: <sip:{call.callee}@198.51.100.1;user=phone>{to_tag}\r\n"
        f"Call-ID: {cid}\r\nCSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n"
    ).encode()


def _request(method: str, call: Call, cid: str, n: int, cseq: int, branch: str) -> bytes:
    return (
        f"{method} sip:{call.callee}@198.51.100.1:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch={branch}\r\n"
        f"From: <sip:{call.caller}@192.0.2.10;user=phone>;tag=cc-{n}\r\n"
        f"To: <sip:{call.callee}@198.51.100.1;user=phone>;tag=gw-{n}\r\n"
        f"Call-ID: {cid}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


def write_synthetic(path: Path, calls: Sequence[Call], cps: float, seed: int = 1,
                    start: float = 1_795_000_000.0) -> list[tuple[float, str, Call]]:
    """Write a pcap of ``calls`` arriving as a Poisson process of rate ``cps``.

    Returns ``(INVITE time, Call-ID, call)`` in order, so a test can check
    that reading the file back gives the same INVITEs. Admitted calls ring
    for 0.5 to 3 s and last 1 to 10 s; rejected ones are answered within a few ms,
    with the status and ``Reason`` the gateway gives for their family.
    """
    rng = random.Random(seed)  # not crypto: a reproducible synthetic capture
    pkts: list[tuple[float, bytes]] = []
    truth: list[tuple[float, str, Call]] = []
    t = start
    for n, call in enumerate(calls):
        t += rng.expovariate(cps)
        cid = f"{rng.getrandbits(64):016x}-{n}@192.0.2.10"
        truth.append((t, cid, call))
        pkts.append((t, _frame(TRUNK, GATEWAY, _invite(call, cid, n))))
        pkts.append((t + 0.0002, _frame(GATEWAY, TRUNK, _response(call, cid, n, 100, "Trying", tag=False))))
        decided = t + rng.uniform(0.0005, 0.003)
        if call.family == "admit":
            ring = decided + rng.uniform(0.5, 3.0)
            answer = ring + rng.uniform(1.0, 10.0)
            rr = f"Record-Route: <sip:198.51.100.1:5060;lr;cag=tok{n}>\r\n"
            pkts.append((decided + 0.05, _frame(GATEWAY, TRUNK, _response(call, cid, n, 180, "Ringing", rr))))
            pkts.append((ring, _frame(GATEWAY, TRUNK, _response(call, cid, n, 200, "OK", rr))))
            pkts.append((ring + 0.001, _frame(TRUNK, GATEWAY, _request("ACK", call, cid, n, 1, f"z9hG4bK-cc-{n}-2"))))
            pkts.append((answer, _frame(TRUNK, GATEWAY, _request("BYE", call, cid, n, 2, f"z9hG4bK-cc-{n}-3"))))
            bye_ok = _request("BYE", call, cid, n, 2, f"z9hG4bK-cc-{n}-3").replace(
                f"BYE sip:{call.callee}@198.51.100.1:5060 SIP/2.0".encode(), b"SIP/2.0 200 OK", 1)
            pkts.append((answer + 0.002, _frame(GATEWAY, TRUNK, bye_ok)))
        else:
            code = _REJECT.get(call.family, 403)
            reason = f'Reason: SIP;cause={code};text="{call.family}"\r\n'
            text = "Forbidden" if code == 403 else "Rejected"
            pkts.append((decided, _frame(GATEWAY, TRUNK, _response(call, cid, n, code, text, reason))))
            pkts.append((decided + 0.0005, _frame(TRUNK, GATEWAY, _request("ACK", call, cid, n, 1, f"z9hG4bK-cc-{n}-1"))))
    pkts.sort(key=lambda p: p[0])
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_EN10MB, nano=False)
        for ts, frame in pkts:
            w.writepkt(frame, ts=ts)
    return truth
