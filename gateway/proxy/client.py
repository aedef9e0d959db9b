"""INVITE client transactions: one forwarding attempt of an admitted INVITE to one hop (RFC 3261 §17.1.1).

Forwarding edits the stored INVITE in place (our Via, Record-Route token,
Max-Forwards, ``received`` / ``rport`` on the caller's Via); responses are matched on our branch and relayed upstream
through the server transaction (``server.py``). This side owns failover (a
hop that times out or answers 503 before ringing is marked down and the
next is tried), the hop-by-hop ACK of non-2xx finals, CANCEL, Timer C, and
closing the orphan dialog of a 2xx that arrives after we gave up on a hop.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, final

from gateway.sip import Request, build_request, build_response, header_uri

from .actions import Action, Outcome, Send
from .routing import AnyResponse
from .shared import CLIENT_PREFIX, MAGIC, Shared, stamp_via
from .transaction import ClientTxn, CState, ServerTxn, SState

if TYPE_CHECKING:
    from .server import Servers

log = logging.getLogger("cag.proxy")


@final
class Clients:
    """See the module docstring. ``servers`` is set by the core (the two sides call each other)."""

    __slots__ = ("servers", "shared")

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.servers: Servers

    def forward(self, txn: ServerTxn, now: float, out: list[Action]) -> bool:
        """One attempt to one hop: the INVITE with our Via, Record-Route and Max-Forwards.

        The stored request is edited in place (no copy, no re-parse): the
        header edits are made once, the Record-Route is swapped per attempt,
        and our Via is popped again after serialising, so the Vias that
        responses we build later must carry stay those the trunk sent.
        """
        sh = self.shared
        idx = sh.hops.pick(sh.rng, txn.tried)
        if idx is None:
            return False
        txn.tried += (idx,)
        hop = sh.hops.hops[idx]
        req = txn.request()
        branch = f"{CLIENT_PREFIX}{sh.cfg.worker:x}x{sh.next_id():x}{sh.rng.getrandbits(32):08x}"
        via = sh.via[hop.transport] + branch + (";rport" if hop.transport == "udp" else "")
        token = sh.tokens.mint(txn.call_id, txn.from_tag, txn.record_id, idx, txn.trunk_id, now)
        rr = sh.record_route(token, txn.transport, hop.transport)
        fields = txn.hop_fields
        if fields is None:  # the first attempt: the header edits, once
            if txn.mf < 0:
                req.append("Max-Forwards", "69")
            else:
                req.replace("Max-Forwards", str(txn.mf - 1))
            req.remove("X-Consent-Token")
            req.remove("X-Call-Purpose")
            req.append("X-Admission-Id", txn.record_id)
            self._pop_preloaded_route(req)
            top = req.top_via()
            stamped = stamp_via(top, txn.source) if top is not None else None
            if stamped is not None:  # RFC 3261 §18.2.1, RFC 3581 §4 (issue 15 #2)
                req.drop_first_via()
                req.prepend("Via", stamped)
            for value in reversed(rr):
                req.prepend("Record-Route", value)
            # What hop-by-hop ACK / CANCEL repeat, kept apart: the request goes at the final.
            fields = txn.hop_fields = (
                req.uri, tuple(req.get_all("Route")), req.get("From") or "", req.get("To") or "", req.cseq[0]
            )
        else:  # a failover: ours are the first Record-Route lines, one or two (another hop transport)
            rest = [v for v in req.get_all("Record-Route") if not sh.is_our_rr(v)]
            req.remove("Record-Route")
            for value in reversed((*rr, *rest)):
                req.prepend("Record-Route", value)
        req.prepend("Via", via)
        data = req.to_bytes()
        req.drop_first_via()
        ct = ClientTxn(branch, txn, idx, hop.addr, hop.transport, data, via, fields, now, sh.cfg.hop_timeout)
        sh.clients[branch] = ct
        txn.client = ct
        sh.timers.arm(ct)
        sh.stats["forwarded_requests"] += 1
        out.append(Send(data, hop.addr, hop.transport, None, True))
        return True

    def _pop_preloaded_route(self, req: Request) -> None:
        """RFC 3261 §16.4: a trunk using us as outbound proxy puts our URI first in Route; remove it."""
        routes = req.routes()
        if routes and self.shared.is_listen(routes[0]):
            req.pop_first_route()

    def _hop_request(self, ct: ClientTxn, method: str, to: str | None = None) -> bytes:
        """Hop-by-hop ACK / CANCEL for our forwarded INVITE (RFC 3261 §17.1.1.3, §9.1)."""
        uri, routes, from_v, to_v, cseq = ct.fields
        headers = [("Via", ct.via), *(("Route", r) for r in routes)]
        headers += [
            ("Max-Forwards", "70"),
            ("From", from_v),
            ("To", to or to_v),
            ("Call-ID", ct.server.call_id),
            ("CSeq", f"{cseq} {method}"),
        ]
        return build_request(method, uri, headers)

    def send_cancel(self, ct: ClientTxn, now: float, out: list[Action]) -> None:
        sh = self.shared
        cancel = self._hop_request(ct, "CANCEL")
        ct.cancel_sent(cancel, now)
        sh.timers.arm(ct)
        sh.stats["cancels_forwarded"] += 1
        out.append(Send(cancel, ct.dest, ct.transport, None, True))

    # ---- responses from the hop

    def _relay_up(self, txn: ServerTxn, resp: AnyResponse) -> Send:
        resp.drop_first_via()
        self.shared.stats["forwarded_responses"] += 1
        return self.shared.upstream(txn, resp.to_bytes())

    def response(self, ct: ClientTxn, resp: AnyResponse, now: float) -> list[Action]:
        sh = self.shared
        method = resp.cseq[1]
        out: list[Action] = []
        if method == "CANCEL":
            ct.on_cancel_answered()
            sh.timers.arm(ct)
            return out
        if method != "INVITE":
            sh.stats["dropped_unmatched_response"] += 1
            return out
        status = resp.status
        txn = ct.server
        state = ct.state
        if state == CState.CALLING or state == CState.PROCEEDING:
            if status < 200:
                ct.on_provisional(now, sh.cfg.timer_c, status)
                sh.timers.arm(ct)
                if ct.cancel_pending:
                    self.send_cancel(ct, now, out)
                if status == 100:
                    sh.stats["absorbed_100"] += 1
                    return out
                if txn.state == SState.FORWARDED:
                    send = self._relay_up(txn, resp)
                    txn.last = send.data
                    out.append(send)
                return out
            if status < 300:
                ct.on_2xx(now)
                sh.timers.arm(ct)
                out.append(self._relay_up(txn, resp))
                txn.accept(now, now + sh.wall_offset)
                sh.timers.arm(txn)
                out.append(Outcome(txn.record_id, txn.call_id, status, txn.answered_at, None))
                return out
            # Non-2xx final: ACK it hop by hop ourselves (RFC 3261 §17.1.1.3).
            ct.on_final(self._hop_request(ct, "ACK", resp.get("To")), now)
            sh.timers.arm(ct)
            assert ct.ack is not None
            out.append(Send(ct.ack, ct.dest, ct.transport, None, True))
            if txn.state != SState.FORWARDED or txn.client is not ct:
                return out
            if status == 503 and not ct.got_provisional and not txn.cancel_requested:
                sh.stats["failovers"] += 1
                if not self.forward(txn, now, out):
                    self.servers.fail(txn, 500, "next hop unavailable", now, out)
                return out
            if status == 503:
                # RFC 3261 §16.7: a downstream 503 is never relayed as is.
                data = build_response(txn.request(), 500, to_tag=resp.to_tag or txn.to_tag)
                sh.stats["tx_500"] += 1
                status = 500
            else:
                resp.drop_first_via()
                data = resp.to_bytes()
                sh.stats["forwarded_responses"] += 1
            self.servers.complete(txn, data, now, out)
            self.servers.ended(txn, status, now, out)
            return out
        return self._late(ct, resp, status, now, out)

    def _late(self, ct: ClientTxn, resp: AnyResponse, status: int, now: float, out: list[Action]) -> list[Action]:
        """Retransmissions and late responses, after this attempt's final or after we gave up on it."""
        sh = self.shared
        state = ct.state
        txn = ct.server
        if state == CState.ACCEPTED:
            if 200 <= status < 300 and txn.state == SState.ACCEPTED and not txn.dead:
                out.append(self._relay_up(txn, resp))
            else:
                sh.stats["retransmission_absorbed"] += 1
            return out
        if status >= 300:
            ack = ct.ack or self._hop_request(ct, "ACK", resp.get("To"))
            ct.ack = ack
            out.append(Send(ack, ct.dest, ct.transport, None, True))
            sh.stats["reacked"] += 1
        elif state == CState.ABANDONED:
            # A hop we gave up on (too slow, Timer C) woke up: the caller is being
            # served elsewhere or has been answered, so end this branch too.
            if status >= 200:
                if not ct.orphan_closed:
                    ct.orphan_closed = True
                    sh.stats["late_2xx_abandoned"] += 1
                    out.extend(self._close_orphan(ct, resp))
            elif ct.cancel is None:
                sh.stats["late_provisional_cancelled"] += 1
                self.send_cancel(ct, now, out)
        else:
            sh.stats["retransmission_absorbed"] += 1
        return out

    def _close_orphan(self, ct: ClientTxn, resp: AnyResponse) -> list[Action]:
        """ACK and BYE for a 2xx from an abandoned attempt (nobody upstream will ever send them)."""
        sh = self.shared
        uri, _, from_v, _, cseq = ct.fields
        contacts = resp.get_all("Contact")
        target = header_uri(contacts[0]) if contacts else uri
        # The UAC route set: the 2xx's Record-Route reversed, without our own entry.
        rrs = [r for r in resp.get_all("Record-Route") if ";cag=" not in r]
        rrs.reverse()
        to = resp.get("To") or ""
        out: list[Action] = []
        for method, n in (("ACK", cseq), ("BYE", cseq + 1)):
            branch = f"{MAGIC}o{sh.next_id():x}{sh.rng.getrandbits(32):08x}"
            headers = [("Via", f"{sh.via[ct.transport]}{branch}"), *(("Route", r) for r in rrs)]
            headers += [
                ("Max-Forwards", "70"),
                ("From", from_v),
                ("To", to),
                ("Call-ID", ct.server.call_id),
                ("CSeq", f"{n} {method}"),
            ]
            out.append(Send(build_request(method, target, headers), ct.dest, ct.transport, None, True))
        return out

    # ---- timers

    def fire(self, ct: ClientTxn, now: float, out: list[Action]) -> None:
        """Timers A, C, the hop timeout, CANCEL retransmission, end of life (D / H)."""
        sh = self.shared
        if now >= ct.end_at:
            self.remove(ct)
            return
        txn = ct.server
        if now >= ct.hop_at:
            self._hop_timeout(ct, now, out)
        elif now >= ct.a_at:
            ct.on_timer_a(now)
            sh.stats["retransmitted_invite"] += 1
            out.append(Send(ct.data, ct.dest, ct.transport, None, True))
        if now >= ct.cancel_at and ct.cancel is not None and ct.on_cancel_timer(now):
            out.append(Send(ct.cancel, ct.dest, ct.transport, None, True))
        if now >= ct.c_at:
            # Timer C: the callee rang too long. Cancel downstream, 408 upstream.
            ct.abandon(now)
            if ct.cancel is None and ct.got_response:
                self.send_cancel(ct, now, out)
            if txn.client is ct and txn.state == SState.FORWARDED:
                self.servers.fail(txn, 408, "timer C", now, out)
        sh.timers.arm(ct)

    def _hop_timeout(self, ct: ClientTxn, now: float, out: list[Action]) -> None:
        """No response at all from the hop: mark it down and fail over (or give up upstream)."""
        sh = self.shared
        ct.abandon(now)  # late responses are still ACKed / absorbed
        sh.stats["hop_timeouts"] += 1
        if sh.hops.mark(ct.hop, False):
            log.warning("next hop %s is down (INVITE timeout)", sh.hops.hops[ct.hop])
        txn = ct.server
        if txn.client is not ct or txn.state != SState.FORWARDED:
            return
        if txn.cancel_requested:
            self.servers.fail(txn, 487, "cancelled", now, out)
            return
        sh.stats["failovers"] += 1
        if not self.forward(txn, now, out):
            self.servers.fail(txn, 408, "next hop timeout", now, out)

    def remove(self, ct: ClientTxn) -> None:
        ct.dead = True
        clients = self.shared.clients
        if clients.get(ct.branch) is ct:
            del clients[ct.branch]
