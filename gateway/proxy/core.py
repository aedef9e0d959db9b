"""The sans-IO proxy core: bytes and time in, actions out (SPEC §6).

Modelled on aioquic's ``QuicConnection``: ``ProxyCore`` never touches a socket
or the clock. The adapter hands it each datagram / framed TCP message with the
loop time (``receive``), hands back each policy decision (``decided``) and
calls ``tick`` every ~20 ms; every call returns the list of things to do
(``Send``, ``Admit``, ``Release``, ``Outcome``). Tests drive it with bytes and
invented times.

Statefulness is where RFC 3261 needs it and nowhere else: initial INVITEs get
a server transaction (one policy decision per transaction, retransmissions
answered from memory) and one client transaction per forwarding attempt
(retransmission, failover, hop-by-hop ACK, CANCEL). Everything in-dialog is
forwarded statelessly, trusting only the HMAC'd Record-Route token, so any
worker on any node can route it.
"""

from __future__ import annotations

import hashlib
import heapq
import ipaddress
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from gateway.sip import (
    QuickResponse,
    Request,
    Response,
    SipError,
    Via,
    build_response,
    header_uri,
    parse,
    parse_uri,
    quick_response,
    split_list,
    user_of,
)
from policy.decision import REASON_PHRASES, Decision
from policy.model import CallAttempt

from .actions import Action, Addr, Admit, Outcome, Release, Send
from .dialog import RouteToken
from .hops import HopSet, NextHop
from .pike import Pike, PikeConfig
from .transaction import INF, T1, T2, T4, TIMER_D, TIMER_H, ClientTxn, CState, ServerTxn, SState

log = logging.getLogger("cag.proxy")

MAGIC = "z9hG4bKcag"  # every branch we mint starts with this (loop detection, response matching)
CLIENT_PREFIX = MAGIC + "t"  # INVITE client transactions
STATELESS_PREFIX = MAGIC + "s"  # in-dialog requests (branch derived from the upstream branch)
PROBE_PREFIX = MAGIC + "probe"  # OPTIONS probes to next hops
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, PRACK, NOTIFY, REFER"
ROUTE_MAP_MAX = 65536  # in-dialog request branch -> upstream (addr, transport, conn); bounded
ROUTE_MAP_TTL = 64.0
_PRIVACY_HIDE = frozenset({"id", "user", "header"})
# What RouteToken.mint writes (base64url and "."): such a token needs no URI parse to be cut out.
_TOKEN_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
_CALL_HEADERS = frozenset(
    {"from", "p-asserted-identity", "privacy", "x-consent-token", "x-call-purpose", "identity"}
)

_PIKE_OFF = PikeConfig()

# A response relayed on a quick view (gateway/sip/quick.py) or fully parsed: the
# relay paths read and edit both the same way.
AnyResponse = Response | QuickResponse


@dataclass(frozen=True)
class CoreConfig:
    listen: Addr  # public address for Record-Route and "addressed to us" checks
    private: Addr  # this worker's downstream UDP socket (our Via for UDP forwarding)
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


@lru_cache(maxsize=4096)
def _ip_literal(host: str) -> bool:
    """In-dialog requests are routed to IP literals only: the core does no DNS."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _top_branch(first_line: str | None) -> str | None:
    """The branch of the first Via value, by a string scan (responses are matched on it alone).

    Parsing every Via of a comma-joined line costs more than the rest of
    relaying a response; None sends the caller to the full parse.
    """
    if first_line is None:
        return None
    value = first_line.split(",", 1)[0]
    i = value.find(";branch=")
    if i < 0:
        return None
    j = value.find(";", i + 8)
    br = (value[i + 8 :] if j < 0 else value[i + 8 : j]).strip()
    return br or None


def _first_route(req: Request) -> str | None:
    """The first Route value; a name-addr (what Record-Route gives) is cut at its '>' without a full list split."""
    v = req.get("Route")
    if v is None:
        return None
    if v.startswith("<"):
        end = v.find(">")
        if end > 0:
            return v[: end + 1] + v[end + 1 :].split(",", 1)[0]
    routes = req.routes()
    return routes[0] if routes else None


def _uri_host(host: str) -> str:
    """IPv6 literals go into Vias and URIs in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _reason(code: int, text: str) -> tuple[str, str]:
    return ("Reason", f'SIP;cause={code};text="{text}"')


def _reply_addr(via: Via, source: Addr) -> Addr:
    """Where a UDP response goes (RFC 3261 §18.2.2 + RFC 3581): the source IP, rport honoured."""
    if "rport" in via.params:
        return source
    return (source[0], via.port or 5060)


class ProxyCore:
    """See the module docstring. Not thread-safe; one instance per worker."""

    def __init__(
        self,
        cfg: CoreConfig,
        source_known: Callable[[str], bool],
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.source_known = source_known
        self.rng = rng or random.Random()
        self.clock = clock  # wall clock, only for CallAttempt.received_at and Outcome times
        self.stats: Counter[str] = Counter()
        self.hops = HopSet(cfg.next_hops)
        self.pike = Pike(cfg.pike)
        self.tokens = RouteToken(cfg.rr_secret)
        self._servers: dict[str, ServerTxn] = {}
        self._clients: dict[str, ClientTxn] = {}
        self._heap: list[tuple[float, int, bool, str]] = []
        self._seq = 0
        self._counter = 0
        self._routes: dict[str, tuple[Addr, str, int | None, float]] = {}
        self._probes: dict[str, tuple[int, float]] = {}
        self.hop_rtt: dict[int, float] = {}  # hop index -> last OPTIONS round trip (s)
        self._next_probe = -INF
        self._probe_seq = 0
        self._stateless_key = hashlib.blake2b(cfg.rr_secret, digest_size=32).digest()
        lh, lp = cfg.listen
        ph, pp = cfg.private
        lhost, phost = _uri_host(lh), _uri_host(ph)
        # Hosts as they appear in Vias / URIs (IPv6 in brackets) and bare.
        self._ours = {(lh, lp), (ph, pp), (lhost, lp), (phost, pp)}
        self._listen_keys = {(lh.lower(), lp), (lhost.lower(), lp)}
        self._via = {"udp": f"SIP/2.0/UDP {phost}:{pp};branch=", "tcp": f"SIP/2.0/TCP {lhost}:{lp};branch="}
        self._rr = {t: f"<sip:{lhost}:{lp};transport={t};lr;cag=" for t in ("udp", "tcp")}
        self._probe_from = f"<sip:ping@{lhost}:{lp}>"

    # ------------------------------------------------------------------ API

    def receive(
        self,
        data: bytes,
        source: Addr,
        transport: str,
        conn_id: int | None,
        now: float,
        private: bool = False,
    ) -> list[Action]:
        """One datagram or framed TCP message. Never raises: a bug drops the message, counted."""
        try:
            if not private and self._screen(data, source[0], now):
                return []
            return self._receive(data, source, transport, conn_id, now)
        except SipError:
            # A header the parser reads lazily (tags, CSeq...) turned out broken.
            self.stats["dropped_malformed"] += 1
            return []
        except Exception:
            self.stats["internal_error"] += 1
            log.exception("proxy core failed on a message from %s; dropped", source)
            return []

    def screen(self, data: bytes, ip: str, now: float) -> bool:
        """True: drop this datagram (pike or unknown source); for a worker steering it elsewhere."""
        try:
            return self._screen(data, ip, now)
        except Exception:
            self.stats["internal_error"] += 1
            log.exception("proxy core screening failed; dropped")
            return True

    def _screen(self, data: bytes, ip: str, now: float) -> bool:
        """Drop floods before parsing: pike first, then unknown sources (silent-drop mode).

        Costs a dict lookup or two per packet. Next hops are never screened (their
        responses and in-dialog requests must pass); responses go on to the full
        path, which routes them by Via. With ``unknown_source_code`` set the full
        path runs so it can answer 403.
        """
        if ip in self.hops.hosts:
            return False
        pike = self.pike
        if pike.cfg.density:
            blocks = pike.blocks
            if pike.hit(ip, now):
                self.stats["dropped_pike"] += 1
                if pike.blocks != blocks:
                    self.stats["pike_blocked"] += 1
                    log.warning("pike: %r sent over %d requests in %.1f s; blocked", ip, pike.cfg.density, pike.cfg.interval)
                return True
        if not self.cfg.unknown_source_code and not data.startswith(b"SIP/2.0") and not self.source_known(ip):
            self.stats["dropped_unknown_source"] += 1
            return True
        return False

    def decided(self, key: str, decision: Decision, now: float) -> list[Action]:
        """The policy answer for an ``Admit``: reject, drop or forward. Never raises."""
        try:
            return self._decided(key, decision, now)
        except Exception:
            self.stats["internal_error"] += 1
            log.exception("proxy core failed on a decision; dropped")
            return []

    def _decided(self, key: str, decision: Decision, now: float) -> list[Action]:
        txn = self._servers.get(key)
        if txn is None or txn.state != SState.PENDING:
            # Expired or cancelled meanwhile: an admission took a concurrency slot.
            if decision.admit and decision.trunk_id:
                call_id = txn.call_id if txn is not None else key.split("|", 1)[0]
                return [Release(decision.trunk_id, call_id)]
            return []
        out: list[Action] = []
        if not decision.admit:
            code = decision.sip_code
            if code == 0:
                self.stats["dropped_policy"] += 1
                txn.state = SState.DROPPED
                txn.slim()
                txn.end_at = now + TIMER_H
                self._arm(txn)
                return out
            extra = [_reason(code, decision.reason)]
            if decision.retry_after:
                extra.append(("Retry-After", str(max(1, int(-(-decision.retry_after // 1))))))
            data = build_response(
                txn.request(), code, REASON_PHRASES.get(code), to_tag=txn.to_tag, extra=extra
            )
            self.stats[f"tx_{code}"] += 1
            self._complete(txn, data, now, out)
            return out
        txn.trunk_id = decision.trunk_id or ""
        txn.state = SState.FORWARDED
        trying = build_response(txn.request(), 100, "Trying")
        self.stats["tx_100"] += 1
        txn.last = trying
        out.append(self._upstream(txn, trying))
        if not self._forward_invite(txn, now, out):
            self._fail(txn, 500, "no next hop", now, out)
        return out

    def tick(self, now: float) -> list[Action]:
        """Due timers (a heap, not a scan), OPTIONS probes and expiry of the in-dialog route map."""
        out: list[Action] = []
        heap = self._heap
        try:
            servers, clients = self._servers, self._clients
            while heap and heap[0][0] <= now:
                due, _, is_client, key = heapq.heappop(heap)
                obj = clients.get(key) if is_client else servers.get(key)
                if obj is None or obj.heap_due != due:
                    continue  # stale entry: finished, or superseded by an earlier one
                obj.heap_due = INF
                if obj.due > now:  # re-armed later since this entry was pushed: move it
                    self._push(obj)
                    continue
                obj.due = INF
                if isinstance(obj, ServerTxn):
                    self._fire_server(obj, now, out)
                else:
                    self._fire_client(obj, now, out)
            if self._probes:
                self._judge_probes(now)
            if now >= self._next_probe and self.cfg.probe_interval > 0:
                self._probe(now, out)
            routes = self._routes
            while routes:
                k = next(iter(routes))
                if routes[k][3] > now:
                    break
                del routes[k]
        except Exception:
            self.stats["internal_error"] += 1
            log.exception("proxy core tick failed")
        return out

    def hop_status(self) -> list[tuple[NextHop, bool]]:
        return self.hops.status()

    def set_next_hops(self, hops: tuple[NextHop, ...]) -> None:
        """Reload (SIGHUP): new calls go to ``hops``; established dialogs keep their hop."""
        self.hops = self.hops.replaced(hops)

    def undecided(self) -> int:
        """Transactions still owed a final answer (pending decision or forwarded, no final yet).

        What a draining worker waits for: the ones lingering only to absorb
        retransmissions need no more work from us.
        """
        return sum(1 for t in self._servers.values() if t.state in (SState.PENDING, SState.FORWARDED))

    def in_flight(self) -> int:
        """Server transactions alive (pending, forwarded or lingering for retransmissions)."""
        return len(self._servers)

    # ------------------------------------------------------------- internals

    def _arm(self, obj: ServerTxn | ClientTxn) -> None:
        """(Re)schedule ``obj`` at its earliest deadline.

        The heap holds keys, not objects, and at most one live entry per
        object (``heap_due``). A deadline moved *earlier* gets a new entry (the
        old one goes stale and is skipped when it pops); one moved *later*
        keeps the entry it has, which is moved when it pops (``tick``). So an
        answered call leaves no stale entry behind: before, re-arming on every
        change left its Timer C entry (180 s out) and two more per call in the
        heap until their time came, ~500,000 tuples at 2,000 calls/s.
        """
        if obj.dead:
            return
        due = obj.next_due()
        obj.due = due
        if due < obj.heap_due:
            self._push(obj)

    def _push(self, obj: ServerTxn | ClientTxn) -> None:
        due = obj.due
        if due == INF:
            return
        obj.heap_due = due
        self._seq += 1
        if isinstance(obj, ServerTxn):
            heapq.heappush(self._heap, (due, self._seq, False, obj.key))
        else:
            heapq.heappush(self._heap, (due, self._seq, True, obj.branch))

    def _remove_server(self, txn: ServerTxn) -> None:
        txn.dead = True
        if self._servers.get(txn.key) is txn:
            del self._servers[txn.key]
        txn.client = None

    def _remove_client(self, ct: ClientTxn) -> None:
        ct.dead = True
        if self._clients.get(ct.branch) is ct:
            del self._clients[ct.branch]

    def _next_id(self) -> int:
        self._counter += 1
        return self._counter

    def _tag(self) -> str:
        return f"cag{self.rng.getrandbits(48):012x}"

    def _upstream(self, txn: ServerTxn, data: bytes) -> Send:
        if txn.transport == "tcp":
            return Send(data, txn.source, "tcp", txn.conn_id)
        return Send(data, txn.reply_addr, "udp")

    def _reply(
        self,
        req: Request,
        via: Via | None,
        source: Addr,
        transport: str,
        conn_id: int | None,
        status: int,
        *,
        phrase: str | None = None,
        to_tag: str | None = None,
        extra: list[tuple[str, str]] | None = None,
    ) -> Send:
        """A response we generate to a request we keep no state for."""
        if to_tag is None and status > 100 and req.to_tag is None:
            to_tag = self._tag()
        data = build_response(
            req, status, phrase or REASON_PHRASES.get(status), to_tag=to_tag, extra=extra or []
        )
        self.stats[f"tx_{status}"] += 1
        if transport == "tcp":
            return Send(data, source, "tcp", conn_id)
        return Send(data, _reply_addr(via, source) if via is not None else source, "udp")

    # ---------------------------------------------------------------- receive

    def _receive(
        self, data: bytes, source: Addr, transport: str, conn_id: int | None, now: float
    ) -> list[Action]:
        # A response is relayed on a quick view when that can prove the full parse
        # would read it the same way (gateway/sip/quick.py); anything else is parsed.
        msg: Request | AnyResponse | None = quick_response(data) if data[:4] == b"SIP/" else None
        if msg is None:
            try:
                msg = parse(data)
            except SipError as e:
                return self._malformed(data, e, source, transport, conn_id)
        if isinstance(msg, (Response, QuickResponse)):
            self.stats["rx_responses"] += 1
            return self._on_response(msg, now)
        self.stats["rx_requests"] += 1
        ip = source[0]
        known = self.source_known(ip)
        from_hop = ip in self.hops.hosts
        # Only the top Via matters to a proxy (RFC 3261 §16.6); the rest are parsed
        # only when one of them could be ours (loop detection).
        top = msg.top_via()
        if top is None:
            self.stats["dropped_malformed"] += 1
            return []
        if not known and not from_hop:
            return self._unknown_source(msg, top, source, transport, conn_id)
        method = msg.method
        if method == "ACK":
            txn = self._servers.get(self._key(msg.call_id, top))
            if txn is not None and txn.state in (SState.COMPLETED, SState.CONFIRMED, SState.DROPPED):
                return self._ack_final(txn, now)
            if msg.to_tag is None:
                self.stats["dropped_stray_ack"] += 1
                return []
        if msg.to_tag is not None:
            return self._in_dialog(msg, top, source, transport, conn_id, now, from_hop)
        if method == "INVITE":
            if not known:
                return self._unknown_source(msg, top, source, transport, conn_id)
            return self._initial_invite(msg, top, source, transport, conn_id, now)
        if method == "CANCEL":
            return self._cancel(msg, top, source, transport, conn_id, now)
        extra = [("Allow", ALLOW)]
        if method == "OPTIONS" and self._to_us(msg):
            return [self._reply(msg, top, source, transport, conn_id, 200, extra=extra)]
        return [self._reply(msg, top, source, transport, conn_id, 405, phrase="Method Not Allowed", extra=extra)]

    def _key(self, call_id: str, top: Via) -> str:
        """RFC 3261 §17.2.3: Call-ID + top Via branch + sent-by (the branch alone is the trunk's)."""
        return f"{call_id}|{top.branch or ''}|{top.host}:{top.port or 5060}"

    def _to_us(self, req: Request) -> bool:
        mf = req.get("Max-Forwards")
        if mf is not None and mf.strip() == "0":
            return True
        try:
            uri = parse_uri(req.uri)
        except SipError:
            return False
        if not uri.user:
            return True
        return (uri.host.lower(), uri.port or 5060) in self._listen_keys

    def _unknown_source(
        self, req: Request, top: Via, source: Addr, transport: str, conn_id: int | None
    ) -> list[Action]:
        self.stats["dropped_unknown_source"] += 1
        if self.cfg.unknown_source_code and req.method != "ACK":
            code = self.cfg.unknown_source_code
            return [self._reply(req, top, source, transport, conn_id, code, extra=[_reason(code, "unknown_source")])]
        return []

    def _malformed(
        self, data: bytes, err: SipError, source: Addr, transport: str, conn_id: int | None
    ) -> list[Action]:
        """Answer a broken request when a response can still be built from its raw lines; else drop."""
        raw = None
        if data[:4] != b"SIP/" and data[:4] != b"ACK ":
            if self.source_known(source[0]) or source[0] in self.hops.hosts:
                status = getattr(err, "status", 400) or 400
                raw = _raw_response(data, status, self._tag())
        if raw is None:
            self.stats["dropped_malformed"] += 1
            return []
        self.stats["malformed_answered"] += 1
        self.stats[f"tx_{status}"] += 1
        return [Send(raw, source, transport, conn_id if transport == "tcp" else None)]

    # ----------------------------------------------------------- initial INVITE

    def _initial_invite(
        self,
        req: Request,
        top: Via,
        source: Addr,
        transport: str,
        conn_id: int | None,
        now: float,
    ) -> list[Action]:
        key = self._key(req.call_id, top)
        txn = self._servers.get(key)
        if txn is not None:
            return self._invite_retransmission(txn, now)
        mf = req.get("Max-Forwards")
        mf_n = -1
        if mf is not None:
            try:
                mf_n = int(mf)
            except ValueError:  # the parser checks Max-Forwards; this is belt and braces
                return [self._reply(req, top, source, transport, conn_id, 400, extra=[_reason(400, "malformed")])]
            if mf_n <= 0:
                return [self._reply(req, top, source, transport, conn_id, 483, extra=[_reason(483, "too_many_hops")])]
        ours = self._ours
        looped = any(h[1] == "via" and MAGIC in h[2] for h in req.headers)  # else no Via of ours
        for v in req.vias() if looped else ():
            b = v.branch
            if b is not None and b.startswith(MAGIC) and (v.host, v.port or 5060) in ours:
                return [self._reply(req, top, source, transport, conn_id, 482, extra=[_reason(482, "loop_detected")])]
        if len(self._servers) >= self.cfg.max_transactions:
            self.stats["overload"] += 1
            return [
                self._reply(
                    req, top, source, transport, conn_id, 503,
                    extra=[_reason(503, "overload"), ("Retry-After", "1")],
                )
            ]
        from_tag = req.from_tag or ""  # read now: a broken From fails here, not after the decision
        self.stats["invites"] += 1
        call = self._call_attempt(req, top, source)
        n = self._next_id()
        record_id = f"{self.cfg.node}-{self.cfg.worker}-{n:x}-{self.rng.getrandbits(32):08x}"
        txn = ServerTxn(
            key, req, call, record_id, _reply_addr(top, source), source, transport, conn_id, self._tag()
        )
        txn.from_tag = from_tag
        txn.mf = mf_n
        # A decision normally arrives within the policy budget; this only bounds memory.
        txn.end_at = now + TIMER_H
        self._servers[key] = txn
        self._arm(txn)
        return [Admit(key, call, record_id)]

    def _call_attempt(self, req: Request, top: Via, source: Addr) -> CallAttempt:
        """SPEC §3: raw user parts (the policy engine normalises numbers); one pass over the headers."""
        found: dict[str, str] = {}
        privacy_id = False
        for h in req.headers:
            k = h[1]
            if k in _CALL_HEADERS:
                if k == "privacy":
                    for part in h[2].replace(";", " ").replace(",", " ").split():
                        if part.lower() in _PRIVACY_HIDE:
                            privacy_id = True
                elif k not in found:
                    found[k] = h[2]
        anonymous = False
        users: list[str | None] = [None, None]
        for i, k in enumerate(("from", "p-asserted-identity")):
            v = found.get(k)
            if v is None:
                continue
            if i and "," in v:
                v = split_list(v)[0]  # the first P-Asserted-Identity value
            try:
                u = parse_uri(header_uri(v))
            except SipError:
                continue
            users[i] = u.user
            if u.host.lower() == "anonymous.invalid" or (u.user or "").lower() == "anonymous":
                anonymous = True
        return CallAttempt(
            call_id=req.call_id,
            branch=top.branch or "",
            source_ip=source[0],
            source_port=source[1],
            callee=user_of(req.uri),
            from_user=users[0],
            pai_user=users[1],
            anonymous=anonymous,
            privacy_id=privacy_id,
            consent_token=found.get("x-consent-token"),
            purpose=found.get("x-call-purpose"),
            identity=found.get("identity"),
            received_at=self.clock(),
        )

    def _invite_retransmission(self, txn: ServerTxn, now: float) -> list[Action]:
        """Never a second decision: replay the last response sent, or nothing while pending."""
        if txn.state in (SState.PENDING, SState.ACCEPTED, SState.DROPPED) or txn.last is None:
            self.stats["retransmission_absorbed"] += 1
            return []
        self.stats["retransmission_answered"] += 1
        if txn.state == SState.COMPLETED and txn.g_at != INF:
            # The client is alive and retransmitting, and has just had the final:
            # back Timer G off rather than send it twice per retransmission.
            txn.g_iv = min(txn.g_iv * 2, T2)
            txn.g_at = now + txn.g_iv
            self._arm(txn)
        return [self._upstream(txn, txn.last)]

    def _complete(self, txn: ServerTxn, final: bytes, now: float, out: list[Action]) -> None:
        """A non-2xx final goes upstream and stays for retransmissions until the ACK (Timers G, H)."""
        txn.state = SState.COMPLETED
        txn.last = final
        txn.slim()  # only ``last`` is needed from here on
        if txn.transport == "udp":
            txn.g_iv = T1
            txn.g_at = now + T1
        txn.end_at = now + TIMER_H
        self._arm(txn)
        out.append(self._upstream(txn, final))

    def _fail(self, txn: ServerTxn, code: int, text: str, now: float, out: list[Action]) -> None:
        """Our own final for an admitted call (no hop / timeout / cancelled): release and record it."""
        data = build_response(txn.request(), code, REASON_PHRASES.get(code), to_tag=txn.to_tag, extra=[_reason(code, text)])
        self.stats[f"tx_{code}"] += 1
        self._complete(txn, data, now, out)
        self._ended(txn, code, out)

    def _ended(self, txn: ServerTxn, code: int, out: list[Action]) -> None:
        if txn.trunk_id:
            out.append(Release(txn.trunk_id, txn.call_id))
        out.append(Outcome(txn.record_id, txn.call_id, code, None, self.clock()))

    def _ack_final(self, txn: ServerTxn, now: float) -> list[Action]:
        self.stats["ack_absorbed"] += 1
        if txn.state == SState.COMPLETED:
            txn.state = SState.CONFIRMED
            txn.g_at = INF
            txn.end_at = now + (T4 if txn.transport == "udp" else 0.0)
            self._arm(txn)
        return []

    # --------------------------------------------------------------- forwarding

    def _forward_invite(self, txn: ServerTxn, now: float, out: list[Action]) -> bool:
        """One attempt to one hop: the INVITE with our Via, Record-Route and Max-Forwards.

        The stored request is edited in place (no copy, no re-parse): the
        header edits are made once, the Record-Route is swapped per attempt,
        and our Via is popped again after serialising, so the Vias that
        responses we build later must carry stay those the trunk sent.
        """
        idx = self.hops.pick(self.rng, txn.tried)
        if idx is None:
            return False
        txn.tried.add(idx)
        hop = self.hops.hops[idx]
        req = txn.request()
        branch = f"{CLIENT_PREFIX}{self.cfg.worker:x}x{self._next_id():x}{self.rng.getrandbits(32):08x}"
        via = self._via[hop.transport] + branch + (";rport" if hop.transport == "udp" else "")
        token = self.tokens.mint(txn.call_id, txn.from_tag, txn.record_id, idx, txn.trunk_id)
        rr = f"{self._rr[txn.transport]}{token}>"
        if not txn.prepared:
            txn.prepared = True
            if txn.mf < 0:
                req.append("Max-Forwards", "69")
            else:
                req.replace("Max-Forwards", str(txn.mf - 1))
            req.remove("X-Consent-Token")
            req.remove("X-Call-Purpose")
            req.append("X-Admission-Id", txn.record_id)
            self._pop_preloaded_route(req)
            req.prepend("Record-Route", rr)
            # What hop-by-hop ACK / CANCEL repeat, kept apart: the request goes at the final.
            txn.hop_fields = (req.uri, tuple(req.get_all("Route")), req.get("From") or "", req.get("To") or "", req.cseq[0])
        else:
            req.replace("Record-Route", rr)  # ours is the first Record-Route line
        req.prepend("Via", via)
        data = req.to_bytes()
        req.drop_first_via()
        assert txn.hop_fields is not None
        ct = ClientTxn(branch, txn, idx, hop.addr, hop.transport, data, via, txn.hop_fields)
        if hop.transport == "udp":
            ct.a_at = now + T1
        ct.hop_at = now + self.cfg.hop_timeout
        self._clients[branch] = ct
        txn.client = ct
        self._arm(ct)
        self.stats["forwarded_requests"] += 1
        out.append(Send(data, hop.addr, hop.transport, None, True))
        return True

    def _pop_preloaded_route(self, req: Request) -> None:
        """RFC 3261 §16.4: a trunk using us as outbound proxy puts our URI first in Route; remove it."""
        routes = req.routes()
        if not routes:
            return
        try:
            uri = parse_uri(header_uri(routes[0]))
        except SipError:
            return
        if (uri.host.lower(), uri.port or 5060) in self._listen_keys:
            req.pop_first_route()

    def _hop_request(self, ct: ClientTxn, method: str, to: str | None = None) -> bytes:
        """Hop-by-hop ACK / CANCEL for our forwarded INVITE (RFC 3261 §17.1.1.3, §9.1)."""
        uri, routes, from_v, to_v, cseq = ct.fields
        lines = [f"{method} {uri} SIP/2.0", f"Via: {ct.via}"]
        lines.extend(f"Route: {r}" for r in routes)
        lines += [
            "Max-Forwards: 70",
            f"From: {from_v}",
            f"To: {to or to_v}",
            f"Call-ID: {ct.server.call_id}",
            f"CSeq: {cseq} {method}",
            "Content-Length: 0",
            "",
            "",
        ]
        return "\r\n".join(lines).encode()

    def _send_cancel(self, ct: ClientTxn, now: float, out: list[Action]) -> None:
        ct.cancel_pending = False
        ct.cancel = self._hop_request(ct, "CANCEL")
        if ct.transport == "udp":
            ct.cancel_iv = T1
            ct.cancel_at = now + T1
            self._arm(ct)
        self.stats["cancels_forwarded"] += 1
        out.append(Send(ct.cancel, ct.dest, ct.transport, None, True))

    def _cancel(
        self, req: Request, top: Via, source: Addr, transport: str, conn_id: int | None, now: float
    ) -> list[Action]:
        self.stats["cancels"] += 1
        txn = self._servers.get(self._key(req.call_id, top))
        if txn is None:
            return [self._reply(req, top, source, transport, conn_id, 481, phrase="Call/Transaction Does Not Exist")]
        out: list[Action] = [self._reply(req, top, source, transport, conn_id, 200, phrase="OK", to_tag=txn.to_tag)]
        if txn.state == SState.PENDING:
            txn.cancelled = True
            data = build_response(txn.request(), 487, "Request Terminated", to_tag=txn.to_tag)
            self.stats["tx_487"] += 1
            self._complete(txn, data, now, out)
        elif txn.state == SState.FORWARDED and not txn.cancel_requested:
            txn.cancel_requested = True
            ct = txn.client
            if ct is not None and ct.state in (CState.CALLING, CState.PROCEEDING):
                if ct.got_response:
                    self._send_cancel(ct, now, out)
                else:
                    ct.cancel_pending = True  # RFC 3261 §9.1: only after a provisional
        return out

    # ---------------------------------------------------------------- responses

    def _on_response(self, resp: AnyResponse, now: float) -> list[Action]:
        br = _top_branch(resp.get("Via"))
        if br is None:
            vias = resp.vias()  # the quick scan gave up: do it properly
            br = (vias[0].branch or "") if vias else ""
        if not br.startswith(MAGIC):
            self.stats["dropped_unmatched_response"] += 1
            return []
        ct = self._clients.get(br)
        if ct is not None:
            return self._client_response(ct, resp, now)
        if br.startswith(STATELESS_PREFIX):
            return self._stateless_response(resp, br)
        if br.startswith(PROBE_PREFIX):
            probe = self._probes.pop(br, None)
            if probe is not None:
                self.stats["probe_answered"] += 1
                self.hop_rtt[probe[0]] = max(now - probe[1], 0.0)
                if self.hops.mark(probe[0], True):
                    log.warning("next hop %s is up", self.hops.hops[probe[0]])
            return []
        self.stats["dropped_unmatched_response"] += 1
        return []

    def _relay_up(self, txn: ServerTxn, resp: AnyResponse) -> Send:
        resp.drop_first_via()
        self.stats["forwarded_responses"] += 1
        return self._upstream(txn, resp.to_bytes())

    def _client_response(self, ct: ClientTxn, resp: AnyResponse, now: float) -> list[Action]:
        method = resp.cseq[1]
        out: list[Action] = []
        if method == "CANCEL":
            ct.cancel_at = INF  # our CANCEL got its answer; the 487 comes on the INVITE
            self._arm(ct)
            return out
        if method != "INVITE":
            self.stats["dropped_unmatched_response"] += 1
            return out
        status = resp.status
        txn = ct.server
        state = ct.state
        if state == CState.CALLING or state == CState.PROCEEDING:
            ct.a_at = INF
            ct.hop_at = INF
            if status < 200:
                ct.state = CState.PROCEEDING
                ct.got_response = True
                ct.c_at = now + self.cfg.timer_c
                self._arm(ct)
                if ct.cancel_pending:
                    self._send_cancel(ct, now, out)
                if status == 100:
                    self.stats["absorbed_100"] += 1
                    return out
                ct.got_provisional = True
                if txn.state == SState.FORWARDED:
                    send = self._relay_up(txn, resp)
                    txn.last = send.data
                    out.append(send)
                return out
            ct.c_at = INF
            ct.cancel_at = INF
            if status < 300:
                ct.state = CState.ACCEPTED
                ct.end_at = now + TIMER_H
                self._arm(ct)
                txn.state = SState.ACCEPTED
                txn.g_at = INF
                txn.end_at = now + TIMER_H
                txn.answered_at = self.clock()
                self._arm(txn)
                out.append(self._relay_up(txn, resp))
                out.append(Outcome(txn.record_id, txn.call_id, status, txn.answered_at, None))
                # INVITE retransmissions are absorbed from here on: neither the request,
                # the last provisional nor the forwarded INVITE is needed any more.
                txn.last = None
                txn.slim()
                ct.data = b""
                return out
            # Non-2xx final: ACK it hop by hop ourselves (RFC 3261 §17.1.1.3).
            ct.ack = self._hop_request(ct, "ACK", resp.get("To"))
            out.append(Send(ct.ack, ct.dest, ct.transport, None, True))
            ct.state = CState.COMPLETED
            ct.data = b""  # no more Timer A: the forwarded INVITE is not needed
            ct.end_at = now + (TIMER_D if ct.transport == "udp" else 0.0)
            self._arm(ct)
            if txn.state != SState.FORWARDED or txn.client is not ct:
                return out
            if status == 503 and not ct.got_provisional and not txn.cancel_requested:
                self.stats["failovers"] += 1
                if not self._forward_invite(txn, now, out):
                    self._fail(txn, 500, "next hop unavailable", now, out)
                return out
            if status == 503:
                # RFC 3261 §16.7: a downstream 503 is never relayed as is.
                data = build_response(txn.request(), 500, "Server Internal Error", to_tag=resp.to_tag or txn.to_tag)
                self.stats["tx_500"] += 1
                status = 500
            else:
                resp.drop_first_via()
                data = resp.to_bytes()
                self.stats["forwarded_responses"] += 1
            self._complete(txn, data, now, out)
            self._ended(txn, status, out)
            return out
        # Retransmissions and late responses.
        if state == CState.ACCEPTED:
            if 200 <= status < 300 and txn.state == SState.ACCEPTED and not txn.dead:
                out.append(self._relay_up(txn, resp))
            else:
                self.stats["retransmission_absorbed"] += 1
            return out
        if status >= 300:
            ack = ct.ack or self._hop_request(ct, "ACK", resp.get("To"))
            ct.ack = ack
            out.append(Send(ack, ct.dest, ct.transport, None, True))
            self.stats["reacked"] += 1
        elif state == CState.ABANDONED:
            # A hop we gave up on (too slow, Timer C) woke up: the caller is being
            # served elsewhere or has been answered, so end this branch too.
            if status >= 200:
                if not ct.orphan_closed:
                    ct.orphan_closed = True
                    self.stats["late_2xx_abandoned"] += 1
                    out.extend(self._close_orphan(ct, resp))
            elif ct.cancel is None:
                self.stats["late_provisional_cancelled"] += 1
                self._send_cancel(ct, now, out)
        else:
            self.stats["retransmission_absorbed"] += 1
        return out

    def _close_orphan(self, ct: ClientTxn, resp: AnyResponse) -> list[Action]:
        """ACK and BYE for a 2xx from an abandoned attempt (nobody upstream will ever send them)."""
        uri, _, from_v, _, cseq = ct.fields
        contacts = resp.get_all("Contact")
        target = header_uri(contacts[0]) if contacts else uri
        # The UAC route set: the 2xx's Record-Route reversed, without our own entry.
        rrs = [r for r in resp.get_all("Record-Route") if ";cag=" not in r]
        rrs.reverse()
        to = resp.get("To") or ""
        out: list[Action] = []
        for method, n in (("ACK", cseq), ("BYE", cseq + 1)):
            branch = f"{MAGIC}o{self._next_id():x}{self.rng.getrandbits(32):08x}"
            lines = [f"{method} {target} SIP/2.0", f"Via: {self._via[ct.transport]}{branch}"]
            lines.extend(f"Route: {r}" for r in rrs)
            lines += [
                "Max-Forwards: 70",
                f"From: {from_v}",
                f"To: {to}",
                f"Call-ID: {ct.server.call_id}",
                f"CSeq: {n} {method}",
                "Content-Length: 0",
                "",
                "",
            ]
            out.append(Send("\r\n".join(lines).encode(), ct.dest, ct.transport, None, True))
        return out

    # ------------------------------------------------------------------- timers

    def _fire_server(self, txn: ServerTxn, now: float, out: list[Action]) -> None:
        if now >= txn.end_at:
            if txn.state == SState.PENDING:
                self.stats["pending_expired"] += 1
            self._remove_server(txn)
            return
        if now >= txn.g_at and txn.state == SState.COMPLETED and txn.last is not None:
            self.stats["retransmitted_final"] += 1
            out.append(self._upstream(txn, txn.last))
            txn.g_iv = min(txn.g_iv * 2, T2)
            txn.g_at = now + txn.g_iv
        self._arm(txn)

    def _fire_client(self, ct: ClientTxn, now: float, out: list[Action]) -> None:
        if now >= ct.end_at:
            self._remove_client(ct)
            return
        txn = ct.server
        if now >= ct.hop_at:
            self._hop_timeout(ct, now, out)
        elif now >= ct.a_at:
            ct.a_iv *= 2
            ct.a_at = now + ct.a_iv
            self.stats["retransmitted_invite"] += 1
            out.append(Send(ct.data, ct.dest, ct.transport, None, True))
        if now >= ct.cancel_at and ct.cancel is not None:
            if ct.cancel_iv >= TIMER_H / 2:
                ct.cancel_at = INF
            else:
                ct.cancel_iv = min(ct.cancel_iv * 2, T2)
                ct.cancel_at = now + ct.cancel_iv
                out.append(Send(ct.cancel, ct.dest, ct.transport, None, True))
        if now >= ct.c_at:
            # Timer C: the callee rang too long. Cancel downstream, 408 upstream.
            ct.c_at = INF
            if ct.cancel is None and ct.got_response:
                self._send_cancel(ct, now, out)
            ct.state = CState.ABANDONED
            ct.end_at = now + TIMER_H
            if txn.client is ct and txn.state == SState.FORWARDED:
                self._fail(txn, 408, "timer C", now, out)
        self._arm(ct)

    def _hop_timeout(self, ct: ClientTxn, now: float, out: list[Action]) -> None:
        """No response at all from the hop: mark it down and fail over (or give up upstream)."""
        ct.hop_at = INF
        ct.a_at = INF
        ct.state = CState.ABANDONED
        ct.end_at = now + TIMER_H  # late responses are still ACKed / absorbed
        self.stats["hop_timeouts"] += 1
        if self.hops.mark(ct.hop, False):
            log.warning("next hop %s is down (INVITE timeout)", self.hops.hops[ct.hop])
        txn = ct.server
        if txn.client is not ct or txn.state != SState.FORWARDED:
            return
        if txn.cancel_requested:
            self._fail(txn, 487, "cancelled", now, out)
            return
        self.stats["failovers"] += 1
        if not self._forward_invite(txn, now, out):
            self._fail(txn, 408, "next hop timeout", now, out)

    def _judge_probes(self, now: float) -> None:
        """A probe unanswered for a hop timeout marks its hop down (the dict holds ~one per hop)."""
        limit = now - self.cfg.hop_timeout
        for br, (idx, sent) in list(self._probes.items()):
            if sent <= limit:
                del self._probes[br]
                self.stats["probe_timeouts"] += 1
                if self.hops.mark(idx, False):
                    log.warning("next hop %s is down (OPTIONS unanswered)", self.hops.hops[idx])

    def _probe(self, now: float, out: list[Action]) -> None:
        """OPTIONS to every hop (answers mark hops up, silence marks them down: ``_judge_probes``)."""
        self._next_probe = now + self.cfg.probe_interval
        lh = self.cfg.listen[0]
        for idx, hop in enumerate(self.hops.hops):
            self._probe_seq += 1
            br = f"{PROBE_PREFIX}{self.cfg.worker:x}x{idx:x}x{self._probe_seq:x}"
            via = self._via[hop.transport] + br + (";rport" if hop.transport == "udp" else "")
            data = (
                f"OPTIONS sip:{_uri_host(hop.host)}:{hop.port} SIP/2.0\r\n"
                f"Via: {via}\r\n"
                "Max-Forwards: 70\r\n"
                f"From: {self._probe_from};tag={br[-12:]}\r\n"
                f"To: <sip:ping@{_uri_host(hop.host)}:{hop.port}>\r\n"
                f"Call-ID: {br}@{lh}\r\n"
                f"CSeq: {self._probe_seq} OPTIONS\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
            self._probes[br] = (idx, now)
            self.stats["probes_sent"] += 1
            out.append(Send(data, hop.addr, hop.transport, None, True))

    # ---------------------------------------------------------------- in-dialog

    def _stateless_branch(self, call_id: str, upstream: Via) -> str:
        """Deterministic per upstream transaction (RFC 3261 §16.11), and keyed with our secret.

        Deterministic: a retransmission, the CANCEL and the non-2xx ACK of an
        in-dialog request get the same branch downstream without any state.
        Keyed: a response's second Via must hash to its first, so nobody can
        make us reflect a forged response to an address of their choice.
        """
        h = hashlib.blake2b(
            f"{call_id}\x1f{upstream.branch or ''}\x1f{upstream.host}:{upstream.port or 0}".encode(),
            digest_size=10,
            key=self._stateless_key,
        ).hexdigest()
        return STATELESS_PREFIX + h

    def _in_dialog(
        self,
        req: Request,
        top: Via,
        source: Addr,
        transport: str,
        conn_id: int | None,
        now: float,
        from_hop: bool,
    ) -> list[Action]:
        """Forward only with our verified Route, to the hop the INVITE went to (SPEC §6 "Dialogs")."""
        is_ack = req.method == "ACK"
        route = _first_route(req)
        verified = None
        if route:
            token = self._our_token(route)
            if token:
                tags = (req.to_tag, req.from_tag) if from_hop else (req.from_tag,)
                verified = self.tokens.verify(token, req.call_id, tags)
        if verified is None:
            self.stats["in_dialog_rejected"] += 1
            if is_ack:
                return []
            return [self._reply(req, top, source, transport, conn_id, 481, phrase="Call/Transaction Does Not Exist")]
        info, which = verified
        from_callee = from_hop and which == 0
        mf = req.get("Max-Forwards")
        new_mf = "69"
        if mf is not None:
            try:
                n = int(mf)
            except ValueError:
                n = 70
            if n <= 0:
                if is_ack:
                    return []
                return [self._reply(req, top, source, transport, conn_id, 483, extra=[_reason(483, "too_many_hops")])]
            new_mf = str(n - 1)
        req.pop_first_route()
        if from_callee:
            rest = req.routes()
            try:
                target = parse_uri(header_uri(rest[0]) if rest else req.uri)
            except SipError:
                target = None
            if target is None or not _ip_literal(target.host):
                if is_ack:
                    return []
                return [self._reply(req, top, source, transport, conn_id, 404, phrase="Not Found")]
            dest: Addr = (target.host.strip("[]"), target.port or 5060)
            out_transport = (target.params.get("transport") or "udp").lower()
            if out_transport not in ("udp", "tcp"):
                out_transport = "udp"
        else:
            if not 0 <= info.hop < len(self.hops.hops):
                self.stats["in_dialog_rejected"] += 1
                if is_ack:
                    return []
                return [self._reply(req, top, source, transport, conn_id, 481, phrase="Call/Transaction Does Not Exist")]
            hop = self.hops.hops[info.hop]
            dest = hop.addr
            out_transport = hop.transport
        branch = self._stateless_branch(req.call_id, top)
        via = self._via[out_transport] + branch + (";rport" if out_transport == "udp" else "")
        if mf is None:
            req.append("Max-Forwards", new_mf)
        else:
            req.replace("Max-Forwards", new_mf)
        req.prepend("Via", via)
        out: list[Action] = [Send(req.to_bytes(), dest, out_transport, None, True)]
        self.stats["forwarded_requests"] += 1
        if is_ack:
            return out
        seen = branch in self._routes
        if not seen:
            routes_map = self._routes
            if len(routes_map) >= ROUTE_MAP_MAX:
                del routes_map[next(iter(routes_map))]
            reply_to = source if transport == "tcp" else _reply_addr(top, source)
            routes_map[branch] = (reply_to, transport, conn_id, now + ROUTE_MAP_TTL)
            if req.method == "BYE":
                self.stats["byes"] += 1
                if info.trunk_id:
                    out.append(Release(info.trunk_id, req.call_id))
                out.append(Outcome(info.record_id, req.call_id, None, None, self.clock()))
        return out

    def _our_token(self, route: str) -> str | None:
        """The ``cag`` token of a Route value addressed to us, else None.

        A Route we wrote comes back exactly as we wrote it, so it is matched
        against our own Record-Route prefixes first (no URI parse); any other
        spelling takes the full parse.
        """
        if route[-1:] == ">":
            for prefix in self._rr.values():
                if route.startswith(prefix):
                    token = route[len(prefix) : -1]
                    if _TOKEN_SAFE.issuperset(token):
                        return token or None
                    break
        try:
            uri = parse_uri(header_uri(route))
        except SipError:
            return None
        if (uri.host.lower(), uri.port or 5060) not in self._listen_keys:
            return None
        return uri.params.get("cag") or None

    def _stateless_response(self, resp: AnyResponse, br: str) -> list[Action]:
        """Responses to in-dialog requests: pop our Via, back to whoever sent the request."""
        nxt = resp.via_at(1)  # the requester's Via: only it is parsed
        if nxt is None or self._stateless_branch(resp.call_id, nxt) != br:
            self.stats["dropped_unmatched_response"] += 1
            return []
        resp.drop_first_via()
        entry = self._routes.get(br)
        if entry is not None:
            dest, transport, conn_id, _ = entry
        else:
            dest = nxt.response_address()
            transport = nxt.transport.lower()
            conn_id = None
        self.stats["forwarded_responses"] += 1
        return [Send(resp.to_bytes(), dest, transport, conn_id if transport == "tcp" else None)]


_COMPACT = {b"v": b"via", b"f": b"from", b"t": b"to", b"i": b"call-id"}
_CANON = {b"via": b"Via", b"from": b"From", b"to": b"To", b"call-id": b"Call-ID", b"cseq": b"CSeq"}
_PHRASES = {
    400: b"Bad Request",
    413: b"Request Entity Too Large",
    414: b"Request-URI Too Long",
    416: b"Unsupported URI Scheme",
    483: b"Too Many Hops",
    505: b"Version Not Supported",
    513: b"Message Too Large",
}


def _raw_response(data: bytes, status: int, tag: str) -> bytes | None:
    """A response built from the raw lines of a request the parser refused, if it has all it needs."""
    head = data.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    if len(lines) < 6 or len(lines) > 200:
        return None
    first = lines[0].split(b" ")
    if len(first) != 3 or not first[2].startswith(b"SIP/") or not first[0].isalpha():
        return None
    found: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        n = name.strip().lower()
        n = _COMPACT.get(n, n)
        if n in _CANON:
            v = value.strip()
            if b"\r" in v or b"\n" in v or b"\0" in v:
                return None  # never echo a bare CR/LF/NUL: it could split our response (injection)
            found.setdefault(n, []).append(v)
    if len(found) != 5:
        return None
    to = found[b"to"][0]
    if status > 100 and b";tag=" not in to.lower():
        to += b";tag=" + tag.encode()
    phrase = _PHRASES.get(status, b"Bad Request")
    code = str(status).encode()
    out = [b"SIP/2.0 " + code + b" " + phrase]
    out.extend(b"Via: " + v for v in found[b"via"])
    out += [
        b"From: " + found[b"from"][0],
        b"To: " + to,
        b"Call-ID: " + found[b"call-id"][0],
        b"CSeq: " + found[b"cseq"][0],
        b'Reason: SIP;cause=' + code + b';text="malformed"',
        b"Content-Length: 0",
        b"",
        b"",
    ]
    return b"\r\n".join(out)
