"""What the rooms of the proxy core share: configuration, counters, who we are on the wire, replies.

``Shared`` is one object per core, handed to every room (screening, server
and client transactions, in-dialog routing, probing): the counters, the
next hops (replaced on reload), the random source, the Record-Route
tokens, the transaction tables and their timers. It also holds our own
addresses as they appear in Vias and URIs, and builds the responses we
originate — ``refusal`` is the one place a ``Decision`` (policy's, the
worker's overload shedding, or the core's own 400 / 482 / 483 / 503)
becomes a SIP response.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from random import Random
from typing import Final, final

from gateway.sip import Request, SipError, Via, build_response, header_uri, parse_uri
from policy.decision import Decision

from .actions import Addr, Send
from .dialog import RouteToken
from .hops import HopSet, NextHop
from .pike import PikeConfig
from .timers import TimerHeap
from .transaction import ClientTxn, ServerTxn

MAGIC: Final = "z9hG4bKcag"  # every branch we mint starts with this (loop detection, response matching)
CLIENT_PREFIX: Final = MAGIC + "t"  # INVITE client transactions
STATELESS_PREFIX: Final = MAGIC + "s"  # in-dialog requests (branch derived from the upstream branch)
PROBE_PREFIX: Final = MAGIC + "probe"  # OPTIONS probes to next hops
ALLOW: Final = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, PRACK, NOTIFY, REFER"

_PIKE_OFF = PikeConfig()


@dataclass(frozen=True)
@final
class CoreConfig:
    listen: Addr  # public address for Record-Route and "addressed to us" checks
    private: Addr  # this worker's downstream UDP socket (our Via for UDP forwarding to hops)
    next_hops: tuple[NextHop, ...]
    rr_secret: bytes  # HMAC key of the Record-Route token, shared by all workers / nodes
    hop_timeout: float = 1.0  # no response within this: mark the hop down, fail over
    probe_interval: float = 2.0  # OPTIONS to every hop; a down hop comes back when it answers (0: off)
    unknown_source_code: int = 0  # 0 drop silently (counted), or 403
    max_transactions: int = 100_000  # at or above: new INVITEs get 503 overload
    pike: PikeConfig = _PIKE_OFF  # per-source request-rate limit (gateway/proxy/pike.py); off by default
    timer_c: float = 180.0  # an INVITE client transaction gives up this long after a provisional
    node: str = "gw"
    worker: int = 0
    listen_tls: Addr | None = None  # public TLS address (Record-Route transport=tls), when TLS is served


STREAMS: Final = frozenset(("tcp", "tls"))
"""Transports whose responses leave on the request's connection (RFC 3261 §18.2.2)."""


def uri_host(host: str) -> str:
    """IPv6 literals go into Vias and URIs in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def reason_header(code: int, text: str) -> tuple[str, str]:
    """RFC 3326 Reason: the reason code of SPEC §5 travels with every refusal we originate."""
    return ("Reason", f'SIP;cause={code};text="{text}"')


def stamp_via(via: Via, source: Addr) -> str | None:
    """The top Via value with ``received`` / ``rport`` filled in, or None when nothing is owed.

    RFC 3261 §18.2.1: ``received`` when the sent-by host is not the source IP;
    RFC 3581 §4: an ``rport`` without a value is given the source port, and
    then ``received`` is added even when it equals the sent-by host. Over TCP
    and TLS the same (the next hop reads where the request really came from).
    Any ``received`` the client wrote itself is replaced.
    """
    ip, port = source
    params = via.params
    has_rport = "rport" in params
    if not has_rport and params.get("received") is None and via.host.strip("[]").lower() == ip.lower():
        return None
    head, _, ptext = via.raw.partition(";")
    kept = [p for p in _split_semis(ptext) if p.split("=", 1)[0].strip().lower() not in ("received", "rport")]
    kept.append(f"received={ip}")
    if has_rport:
        kept.append(f"rport={port}")
    return ";".join((head.rstrip(), *kept))


def _split_semis(text: str) -> list[str]:
    """Via parameters split on ';' outside quoted strings (a generic-param may quote one)."""
    if '"' not in text:
        return [p.strip() for p in text.split(";") if p.strip()]
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return [p for p in out if p]


def reply_addr(via: Via, source: Addr) -> Addr:
    """Where a UDP response goes (RFC 3261 §18.2.2 + RFC 3581): the source IP, rport honoured."""
    if "rport" in via.params:
        return source
    return (source[0], via.port or 5060)


@dataclass(slots=True)
@final
class Arrival:
    """How a request reached us: what any response to it needs (RFC 3261 §18.2.2: its top Via, source, connection)."""

    top: Via
    source: Addr
    transport: str
    conn_id: int | None

    def reply_to(self, data: bytes) -> Send:
        """``data`` back to the requester: on its TCP connection, or to its UDP reply address."""
        if self.transport != "udp":
            return Send(data, self.source, self.transport, self.conn_id)
        return Send(data, reply_addr(self.top, self.source), "udp")


def refusal(req: Request, decision: Decision, to_tag: str | None) -> bytes:
    """The response for a rejecting ``Decision`` with a status: Reason, and Retry-After when it has one."""
    code = decision.sip_code
    extra = [reason_header(code, decision.reason)]
    if decision.retry_after:
        extra.append(("Retry-After", str(max(1, int(-(-decision.retry_after // 1))))))
    return build_response(req, code, to_tag=to_tag, extra=extra)


@final
class Shared:
    """See the module docstring. Not thread-safe; one per core."""

    __slots__ = (
        "_counter",
        "cfg",
        "clients",
        "hops",
        "listen_keys",
        "ours",
        "record_run",
        "rng",
        "rr",
        "servers",
        "stats",
        "timers",
        "tokens",
        "via",
        "via_listen",
        "wall_offset",
    )

    def __init__(self, cfg: CoreConfig, rng: Random, wall_offset: float) -> None:
        self.cfg = cfg
        self.rng = rng
        self.wall_offset = wall_offset  # wall-clock time = now + wall_offset (audit times only)
        self.stats: Counter[str] = Counter()
        self.hops = HopSet(cfg.next_hops)
        self.tokens = RouteToken(cfg.rr_secret)
        self.servers: dict[str, ServerTxn] = {}
        self.clients: dict[str, ClientTxn] = {}
        self.timers = TimerHeap(self.servers, self.clients)
        self._counter = 0
        self.record_run = ""  # the record ids' random part, drawn at the first (Servers._record_id)
        lh, lp = cfg.listen
        ph, pp = cfg.private
        lhost, phost = uri_host(lh), uri_host(ph)
        th, tp = cfg.listen_tls or cfg.listen
        thost = uri_host(th)
        # Hosts as they appear in Vias / URIs (IPv6 in brackets) and bare.
        self.ours = {(lh, lp), (ph, pp), (lhost, lp), (phost, pp), (th, tp), (thost, tp)}
        self.listen_keys = {(lh.lower(), lp), (lhost.lower(), lp), (th.lower(), tp), (thost.lower(), tp)}
        # Our Via value up to the branch, per transport. Towards next hops UDP leaves from this
        # worker's private socket (its responses come back here, SPEC §6); towards the trunk
        # (``via_listen``) from the listen socket, so a trunk matching peers by IP:port knows us.
        self.via = {
            "udp": f"SIP/2.0/UDP {phost}:{pp};branch=",
            "tcp": f"SIP/2.0/TCP {lhost}:{lp};branch=",
            "tls": f"SIP/2.0/TLS {thost}:{tp};branch=",
        }
        self.via_listen = {**self.via, "udp": f"SIP/2.0/UDP {lhost}:{lp};branch="}
        # Our Record-Route up to the token, per transport of the side it faces (RFC 5658: two
        # of them when the caller's transport and the hop's differ). ``sip:`` with
        # ``transport=tls`` rather than ``sips:`` (RFC 5630 §3.2: only TLS on this hop is meant).
        self.rr = {
            "udp": f"<sip:{lhost}:{lp};transport=udp;lr;cag=",
            "tcp": f"<sip:{lhost}:{lp};transport=tcp;lr;cag=",
            "tls": f"<sip:{thost}:{tp};transport=tls;lr;cag=",
        }

    def record_route(self, token: str, caller: str, hop: str) -> tuple[str, ...]:
        """Our Record-Route values for a dialog: one, or two when the transports differ (RFC 5658).

        The first faces the callee (its route set is the Record-Route in
        order), the second the caller (who reverses it); both carry the same
        token. Each goes on a line of its own.
        """
        rr = self.rr
        if caller == hop:
            return (f"{rr[hop]}{token}>",)
        return (f"{rr[hop]}{token}>", f"{rr[caller]}{token}>")

    def is_our_rr(self, value: str) -> bool:
        """A Record-Route value we wrote (one of our prefixes)."""
        return any(value.startswith(p) for p in self.rr.values())

    def unknown_source(self, req: Request, arr: Arrival) -> list[Send]:
        """A request from no trunk's or hop's address: 403 when configured, else dropped (counted)."""
        self.stats["dropped_unknown_source"] += 1
        code = self.cfg.unknown_source_code
        if code and req.method != "ACK":
            return [self.reply(req, arr, code, extra=[reason_header(code, "unknown_source")])]
        return []

    def next_id(self) -> int:
        self._counter += 1
        return self._counter

    def tag(self) -> str:
        return f"cag{self.rng.getrandbits(48):012x}"

    def is_listen(self, uri_text: str) -> bool:
        """Does this URI (a Route value or a Request-URI) address our public listen address?"""
        try:
            uri = parse_uri(header_uri(uri_text))
        except SipError:
            return False
        return (uri.host.lower(), uri.port or 5060) in self.listen_keys

    def upstream(self, txn: ServerTxn, data: bytes) -> Send:
        """``data`` back to the caller of a server transaction (its TCP connection, or its reply address)."""
        if txn.transport != "udp":
            return Send(data, txn.source, txn.transport, txn.conn_id)
        return Send(data, txn.reply_addr, "udp")

    def reply(
        self,
        req: Request,
        arr: Arrival,
        status: int,
        *,
        to_tag: str | None = None,
        extra: list[tuple[str, str]] | None = None,
        data: bytes | None = None,
    ) -> Send:
        """A response we generate to a request we keep no state for (``data``: already built)."""
        if data is None:
            if to_tag is None and status > 100 and req.to_tag is None:
                to_tag = self.tag()
            data = build_response(req, status, to_tag=to_tag, extra=extra or [])
        self.stats[f"tx_{status}"] += 1
        return arr.reply_to(data)
