"""The sans-IO proxy core: bytes and time in, actions out (SPEC §6).

Modelled on aioquic's ``QuicConnection``: ``ProxyCore`` never touches a socket
or a clock. The adapter hands it each datagram / framed TCP message with the
loop time (``receive``), hands back each policy decision (``decided``), and
calls ``tick`` when ``next_deadline()`` has come; every call returns the
list of things to do (``Send``, ``Admit``, ``Refused``, ``Release``,
``Outcome``). Tests drive it with bytes and invented times.

This class is the facade; each job is a room of its own:

- ``screening``  drops floods and unknown sources, answers broken requests;
- ``server``     INVITE server transactions: checks, the decision, CANCEL, ACK;
- ``client``     INVITE client transactions: forwarding, failover, responses;
- ``transaction`` the two state machines (every transition a method);
- ``routing``    in-dialog requests on the Record-Route token (``dialog``);
- ``probing``    OPTIONS to the next hops;
- ``timers``     the deadline heap; ``attempt`` the SIP → policy CallAttempt;
- ``shared``     configuration, counters, our addresses, the replies we build.

Statefulness is where RFC 3261 needs it and nowhere else: initial INVITEs get
a server transaction (one policy decision per transaction, retransmissions
answered from memory) and one client transaction per forwarding attempt.
Everything in-dialog is forwarded statelessly, trusting only the HMAC'd
Record-Route token, so any worker on any node can route it.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from typing import final

from gateway.sip import QuickResponse, Request, Response, SipError, parse, parse_uri, quick_response
from policy.decision import Decision

from .actions import Action, Addr
from .client import Clients
from .hops import HopSet, NextHop
from .linger import Tomb
from .pike import Pike
from .probing import Prober
from .routing import AnyResponse, Dialogs
from .screening import DROP, KNOWN, UNASKED, Screen, SourceKnown, Verdict
from .server import ACKABLE, Servers, txn_key
from .shared import ALLOW, MAGIC, PROBE_PREFIX, STATELESS_PREFIX, Arrival, CoreConfig, Shared
from .transaction import ClientTxn, CState, ServerTxn, SState

log = logging.getLogger("cag.proxy")

__all__ = ["ALLOW", "MAGIC", "CoreConfig", "ProxyCore"]


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


@final
class ProxyCore:
    """See the module docstring. Not thread-safe; one instance per worker.

    ``source_known`` is the trunk directory (asked at most once per message);
    ``wall_offset`` turns the loop time into wall-clock time for the audit
    (CallAttempt.received_at, Outcome times): the adapter passes
    ``time.time() - loop.time()`` and may update it.
    """

    def __init__(
        self,
        cfg: CoreConfig,
        source_known: SourceKnown,
        *,
        rng: random.Random | None = None,
        wall_offset: float = 0.0,
    ) -> None:
        self.shared = sh = Shared(cfg, rng or random.Random(), wall_offset)
        self.screening = Screen(sh, source_known)
        self.servers = Servers(sh)
        self.clients = Clients(sh)
        self.servers.clients = self.clients
        self.clients.servers = self.servers
        self.dialogs = Dialogs(sh)
        self.prober = Prober(sh)

    # ------------------------------------------------------------------ views

    @property
    def cfg(self) -> CoreConfig:
        return self.shared.cfg

    @cfg.setter
    def cfg(self, cfg: CoreConfig) -> None:
        """Reload: timeouts, probing, the unknown-source answer and the cap apply from the next message."""
        self.shared.cfg = cfg

    @property
    def stats(self) -> Counter[str]:
        return self.shared.stats

    @property
    def hops(self) -> HopSet:
        return self.shared.hops

    @property
    def pike(self) -> Pike:
        return self.screening.pike

    @property
    def hop_rtt(self) -> dict[int, float]:
        """Hop index -> last OPTIONS round trip (s)."""
        return self.prober.rtt

    @property
    def wall_offset(self) -> float:
        return self.shared.wall_offset

    @wall_offset.setter
    def wall_offset(self, offset: float) -> None:
        self.shared.wall_offset = offset

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
            verdict = UNASKED if private else self.screening.early(data, source[0], now)
            if verdict == DROP:
                return []
            return self._receive(data, source, transport, conn_id, now, verdict)
        except SipError:
            # A header the parser reads lazily (tags, CSeq...) turned out broken.
            self.shared.stats["dropped_malformed"] += 1
            return []
        except Exception:
            self.shared.stats["internal_error"] += 1
            log.exception("proxy core failed on a message from %s; dropped", source)
            return []

    def screen(self, data: bytes, ip: str, now: float) -> bool:
        """True: drop this datagram (pike or unknown source); for a worker steering it elsewhere."""
        try:
            return self.screening.early(data, ip, now) == DROP
        except Exception:
            self.shared.stats["internal_error"] += 1
            log.exception("proxy core screening failed; dropped")
            return True

    def decided(self, key: str, decision: Decision, now: float) -> list[Action]:
        """The policy answer for an ``Admit``: reject, drop or forward. Never raises."""
        try:
            return self.servers.decided(key, decision, now)
        except Exception:
            self.shared.stats["internal_error"] += 1
            log.exception("proxy core failed on a decision; dropped")
            return []

    def next_deadline(self) -> float:
        """When ``tick`` next has work (``inf``: none): a transaction timer, a probe, a route to forget."""
        return min(
            self.shared.timers.next_deadline(),
            self.servers.graves.next_deadline(),
            self.prober.next_deadline(),
            self.dialogs.next_deadline(),
        )

    def tick(self, now: float) -> list[Action]:
        """Due transaction timers, OPTIONS probes and expiry of the in-dialog route map."""
        out: list[Action] = []
        try:
            servers, clients = self.servers, self.clients
            for obj in self.shared.timers.due(now):
                if isinstance(obj, ServerTxn):
                    servers.fire(obj, now, out)
                else:
                    clients.fire(obj, now, out)
            self.servers.graves.expire(now)
            self.prober.tick(now, out)
            self.dialogs.expire(now)
        except Exception:
            self.shared.stats["internal_error"] += 1
            log.exception("proxy core tick failed")
        return out

    def hop_status(self) -> list[tuple[NextHop, bool]]:
        return self.shared.hops.status()

    def set_next_hops(self, hops: tuple[NextHop, ...]) -> None:
        """Reload (SIGHUP): new calls go to ``hops``; established dialogs keep their hop."""
        self.shared.hops = self.shared.hops.replaced(hops)

    def undecided(self) -> int:
        """Transactions still owed a final answer (pending decision or forwarded, no final yet).

        What a draining worker waits for: the ones lingering only to absorb
        retransmissions need no more work from us.
        """
        live = (SState.PENDING, SState.FORWARDED)
        return sum(1 for t in self.shared.servers.values() if t.state in live)

    def in_flight(self) -> int:
        """INVITE transactions held: alive (pending, forwarded, completed) or lingering as a tomb."""
        return len(self.shared.servers) + len(self.servers.graves)

    # ------------------------------------------------------------- dispatch

    def _receive(
        self, data: bytes, source: Addr, transport: str, conn_id: int | None, now: float, verdict: Verdict
    ) -> list[Action]:
        sh = self.shared
        # A response is relayed on a quick view when that can prove the full parse
        # would read it the same way (gateway/sip/quick.py); anything else is parsed.
        msg: Request | AnyResponse | None = quick_response(data) if data[:4] == b"SIP/" else None
        if msg is None:
            try:
                msg = parse(data)
            except SipError as e:
                return self.screening.malformed(data, e, source, transport, conn_id, verdict)
        if isinstance(msg, (Response, QuickResponse)):
            sh.stats["rx_responses"] += 1
            return self._response(msg, now)
        sh.stats["rx_requests"] += 1
        ip = source[0]
        from_hop = ip in sh.hops.hosts
        # Only the top Via matters to a proxy (RFC 3261 §16.6); the rest are parsed
        # only when one of them could be ours (loop detection).
        top = msg.top_via()
        if top is None:
            sh.stats["dropped_malformed"] += 1
            return []
        arr = Arrival(top, source, transport, conn_id)
        # The one directory look-up for this message (the early screen may have made it).
        known = verdict == KNOWN if verdict != UNASKED else self.screening.source_known(ip)
        if not known and not from_hop:
            if msg.to_tag is not None:  # a carrier node's in-dialog request: our token decides (routing.py)
                return self.dialogs.request(msg, arr, now, False, False)
            return self.screening.unknown_source(msg, arr)
        method = msg.method
        if msg.get("Proxy-Require") is not None:  # RFC 3261 §16.3 step 5: 420 (screening.py)
            refused = self.screening.proxy_require(msg, arr)
            if refused is not None:
                return refused
        if method == "ACK":
            key = txn_key(msg.call_id, top)
            txn = sh.servers.get(key)
            if txn is not None and txn.state in ACKABLE:
                return self.servers.ack(txn, now)
            if txn is None:
                tomb = self.servers.graves.by_key.get(key)
                if tomb is not None and not tomb.branch:  # the ACK of an INVITE we dropped
                    sh.stats["ack_absorbed"] += 1
                    return []
            if msg.to_tag is None:
                sh.stats["dropped_stray_ack"] += 1
                return []
        if msg.to_tag is not None:
            return self.dialogs.request(msg, arr, now, from_hop, known)
        if method == "INVITE":
            if not known:
                return self.screening.unknown_source(msg, arr)
            return self.servers.invite(msg, arr, now)
        if method == "CANCEL":
            return self.servers.cancel(msg, arr, now)
        extra = [("Allow", ALLOW)]
        if method == "OPTIONS" and self._to_us(msg):
            return [sh.reply(msg, arr, 200, extra=extra)]
        return [sh.reply(msg, arr, 405, extra=extra)]

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
        return (uri.host.lower(), uri.port or 5060) in self.shared.listen_keys

    def _response(self, resp: AnyResponse, now: float) -> list[Action]:
        """Responses are matched on our branch alone: a client transaction, a stateless relay, a probe."""
        br = _top_branch(resp.get("Via"))
        if br is None:
            vias = resp.vias()  # the quick scan gave up: do it properly
            br = (vias[0].branch or "") if vias else ""
        if not br.startswith(MAGIC):
            self.shared.stats["dropped_unmatched_response"] += 1
            return []
        ct: ClientTxn | None = self.shared.clients.get(br)
        if ct is not None:
            out = self.clients.response(ct, resp, now)
            if ct.state == CState.ACCEPTED and not ct.dead:
                txn = ct.server
                if txn.state == SState.ACCEPTED and txn.client is ct and not txn.dead:
                    self.servers.bury(txn, ct)  # only 2xx retransmissions are left: see linger.py
            return out
        tomb = self.servers.graves.by_branch.get(br)
        if tomb is not None:
            return self._late_2xx(tomb, resp)
        if br.startswith(STATELESS_PREFIX):
            return self.dialogs.response(resp, br)
        if br.startswith(PROBE_PREFIX):
            self.prober.answered(br, now, resp.status)
            return []
        self.shared.stats["dropped_unmatched_response"] += 1
        return []

    def _late_2xx(self, tomb: Tomb, resp: AnyResponse) -> list[Action]:
        """A response on the branch of a buried call: a 2xx retransmission goes upstream (RFC 6026 §7.1).

        What ``Clients._late`` does for an Accepted client transaction.
        """
        sh = self.shared
        method = resp.cseq[1]
        if method == "CANCEL":  # the answer to our CANCEL, after the 2xx: nothing to do
            return []
        if method != "INVITE":
            sh.stats["dropped_unmatched_response"] += 1
            return []
        if not 200 <= resp.status < 300:
            sh.stats["retransmission_absorbed"] += 1
            return []
        resp.drop_first_via()
        sh.stats["forwarded_responses"] += 1
        return [tomb.upstream(resp.to_bytes())]
