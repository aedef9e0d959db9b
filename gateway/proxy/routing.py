"""In-dialog routing: requests with a To-tag, forwarded on our Record-Route token alone (SPEC §6 "Dialogs").

Nothing is kept per dialog: the HMAC'd token in the Route says which hop
the INVITE went to, for which trunk and audit record, and which tag is the
caller's (so which way the request goes), so any worker on any node can
route the request. Nothing is kept per UDP request either (as
Kamailio's ``loose_route()`` + stateless forwarding): the address its
response goes back to (RFC 3261 §18.2.2, RFC 3581) is written into the
branch we mint (``stateless_branch``), keyed with our secret together with
the upstream Via, so a response finds its way back with no look-up and
nobody can forge one that we reflect elsewhere. A small bounded map
(``ROUTE_MAP_MAX``, ``ROUTE_MAP_TTL``) remains for what the branch cannot
carry: the connection a TCP request came on, and the BYEs already seen (a
retransmitted BYE must not free the slot or file the outcome twice).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import deque
from functools import lru_cache
from typing import Final, final

from gateway.sip import QuickResponse, Request, Response, SipError, Via, header_uri, parse_uri

from .actions import Action, Addr, Outcome, Release, Send
from .shared import STATELESS_PREFIX, Arrival, Shared, reason_header, reply_addr, stamp_via

ROUTE_MAP_MAX: Final = 65536  # in-dialog request branch -> upstream (addr, transport, conn); bounded
ROUTE_MAP_TTL: Final = 64.0
# What RouteToken.mint writes (base64url and "."): such a token needs no URI parse to be cut out.
_TRANSPORTS: Final = frozenset(("udp", "tcp", "tls"))
_TOKEN_SAFE: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")

# A response relayed on a quick view (gateway/sip/quick.py) or fully parsed: the
# relay paths read and edit both the same way.
AnyResponse = Response | QuickResponse


@lru_cache(maxsize=4096)
def _ip_literal(host: str) -> bool:
    """In-dialog requests are routed to IP literals only: the core does no DNS."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


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


_BRANCH_LEN: Final = len(STATELESS_PREFIX) + 20  # prefix + the 10-byte keyed hash in hex; the return address follows


def _back(addr: Addr) -> str:
    """A UDP return address as branch token characters (RFC 3261 §25.1): ``-host-port``, IPv6 ':' as '_'."""
    return f"-{addr[0].replace(':', '_')}-{addr[1]}"


def _unback(back: str) -> Addr:
    """``_back`` read again; only ever given what our keyed hash vouched for."""
    _, host, port = back.rsplit("-", 2)
    return host.replace("_", ":"), int(port)


@final
class Dialogs:
    """See the module docstring."""

    __slots__ = ("_age", "_key", "_routes", "shared")

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self._key = hashlib.blake2b(shared.cfg.rr_secret, digest_size=32).digest()
        self._routes: dict[str, tuple[Addr, str, int | None, float]] = {}
        # The branches in ``_routes``, oldest first: its expiry and next deadline look at the
        # oldest without ``next(iter(_routes))``, which skips every slot deleted at the dict's
        # front one by one (O(deleted) per look, and the timer looks once per read pass).
        self._age: deque[str] = deque()

    def stateless_branch(self, call_id: str, upstream: Via, back: str = "") -> str:
        """Deterministic per upstream transaction (RFC 3261 §16.11), and keyed with our secret.

        Deterministic: a retransmission, the CANCEL and the non-2xx ACK of an
        in-dialog request get the same branch downstream without any state.
        Keyed: a response's second Via must hash to its first, and the
        return address ``back`` (``_back``; "" over TCP) is under the same
        key, so nobody can make us reflect a forged response to an address
        of their choice.
        """
        h = hashlib.blake2b(
            f"{call_id}\x1f{upstream.branch or ''}\x1f{upstream.host}:{upstream.port or 0}\x1f{back}".encode(),
            digest_size=10,
            key=self._key,
        ).hexdigest()
        return STATELESS_PREFIX + h + back

    def request(
        self,
        req: Request,
        arr: Arrival,
        now: float,
        from_hop: bool,
        trunk: bool = True,
    ) -> list[Action]:
        """Forward only with our verified Route: to the hop the INVITE went to, or back to the caller.

        The direction is the tag the token verifies with, not the source address
        (issue 15 #1: carrier cores send from node addresses, and a callee may
        send over another transport than the one it was reached on): the
        caller's From-tag is bound into the token, so in From it is the caller
        speaking, in To the callee. ``trunk``: the source is a trunk's address;
        one that is not also a hop's speaks only as the caller (it cannot use
        us to send the callee's requests to addresses of its choosing). A
        request from neither (a carrier node) passes on a verified token alone
        and is otherwise dropped like any unknown source, never answered 481.
        Our Route is removed (RFC 3261 §16.4), both of ours after a double
        Record-Route (RFC 5658).
        """
        sh = self.shared
        is_ack = req.method == "ACK"
        route = _first_route(req)
        verified = None
        if route:
            token = self.our_token(route)
            if token:
                verified = sh.tokens.verify(token, req.call_id, (req.from_tag, req.to_tag))
        if verified is not None and verified[1] == 1 and trunk and not from_hop:
            sh.stats["in_dialog_trunk_as_callee"] += 1
            verified = None
        if verified is None:
            if not trunk and not from_hop:
                return list(sh.unknown_source(req, arr))
            sh.stats["in_dialog_rejected"] += 1
            if is_ack:
                return []
            return [sh.reply(req, arr, 481)]
        info, which = verified
        from_callee = which == 1
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
                return [sh.reply(req, arr, 483, extra=[reason_header(483, "too_many_hops")])]
            new_mf = str(n - 1)
        req.pop_first_route()
        second = _first_route(req)
        if second is not None and self.our_token(second) is not None:
            req.pop_first_route()  # the other half of our double Record-Route
        if from_callee:
            rest = req.routes()
            try:
                target = parse_uri(header_uri(rest[0]) if rest else req.uri)
            except SipError:
                target = None
            if target is None or not _ip_literal(target.host):
                if is_ack:
                    return []
                return [sh.reply(req, arr, 404)]
            dest: Addr = (target.host.strip("[]"), target.port or 5060)
            tp = target.params.get("transport")
            out_transport = tp.lower() if tp else ("tls" if target.scheme == "sips" else "udp")
            if out_transport not in _TRANSPORTS:
                out_transport = "udp"
            elif out_transport == "tls" and sh.cfg.listen_tls is None:  # TLS not configured here
                if is_ack:
                    return []
                return [sh.reply(req, arr, 503, extra=[reason_header(503, "tls_unavailable")])]
            # Towards the trunk: from the listen address, which a trunk filtering peers by
            # IP:port knows (issue 15 #3); any worker can relay the answer (the branch says where).
            via_prefix = sh.via_listen[out_transport]
            private = False
        else:
            hops = sh.hops.hops
            if not 0 <= info.hop < len(hops):
                sh.stats["in_dialog_rejected"] += 1
                if is_ack:
                    return []
                return [sh.reply(req, arr, 481)]
            hop = hops[info.hop]
            dest = hop.addr
            out_transport = hop.transport
            via_prefix = sh.via[out_transport]
            private = True
        udp = arr.transport == "udp"
        branch = self.stateless_branch(req.call_id, arr.top, _back(reply_addr(arr.top, arr.source)) if udp else "")
        via = via_prefix + branch + (";rport" if out_transport == "udp" else "")
        if mf is None:
            req.append("Max-Forwards", new_mf)
        else:
            req.replace("Max-Forwards", new_mf)
        stamped = stamp_via(arr.top, arr.source)
        if stamped is not None:  # RFC 3261 §18.2.1, RFC 3581 §4 (issue 15 #2)
            req.drop_first_via()
            req.prepend("Via", stamped)
        req.prepend("Via", via)
        out: list[Action] = [Send(req.to_bytes(), dest, out_transport, None, private)]
        sh.stats["forwarded_requests"] += 1
        is_bye = req.method == "BYE"
        if udp and not is_bye:
            return out  # stateless: the response finds its way back by the branch
        routes = self._routes
        if branch not in routes:
            if len(routes) >= ROUTE_MAP_MAX:
                del routes[self._age.popleft()]
            routes[branch] = (arr.source, arr.transport, arr.conn_id, now + ROUTE_MAP_TTL)
            self._age.append(branch)
            if is_bye:
                sh.stats["byes"] += 1
                if info.trunk_id:
                    out.append(Release(info.trunk_id, req.call_id))
                out.append(Outcome(info.record_id, req.call_id, None, None, now + sh.wall_offset))
        return out

    def our_token(self, route: str) -> str | None:
        """The ``cag`` token of a Route value addressed to us, else None.

        A Route we wrote comes back exactly as we wrote it, so it is matched
        against our own Record-Route prefixes first (no URI parse); any other
        spelling takes the full parse.
        """
        if route[-1:] == ">":
            for prefix in self.shared.rr.values():
                if route.startswith(prefix):
                    token = route[len(prefix) : -1]
                    if _TOKEN_SAFE.issuperset(token):
                        return token or None
                    break
        try:
            uri = parse_uri(header_uri(route))
        except SipError:
            return None
        if (uri.host.lower(), uri.port or 5060) not in self.shared.listen_keys:
            return None
        return uri.params.get("cag") or None

    def response(self, resp: AnyResponse, br: str) -> list[Action]:
        """Responses to in-dialog requests: pop our Via, back to whoever sent the request."""
        nxt = resp.via_at(1)  # the requester's Via: only it is parsed
        back = br[_BRANCH_LEN:]
        if nxt is None or self.stateless_branch(resp.call_id, nxt, back) != br:
            self.shared.stats["dropped_unmatched_response"] += 1
            return []
        resp.drop_first_via()
        self.shared.stats["forwarded_responses"] += 1
        if back:  # a UDP request: its return address is in the branch
            return [Send(resp.to_bytes(), _unback(back), "udp", None)]
        entry = self._routes.get(br)
        if entry is not None:
            dest, transport, conn_id, _ = entry
        else:  # a TCP request whose connection entry was forgotten: as the Via says
            dest = nxt.response_address()
            transport = nxt.transport.lower()
            conn_id = None
        return [Send(resp.to_bytes(), dest, transport, conn_id if transport != "udp" else None)]

    def next_deadline(self) -> float:
        """When the oldest remembered route is due to be forgotten (inf: none)."""
        age = self._age
        return self._routes[age[0]][3] if age else float("inf")

    def expire(self, now: float) -> None:
        """Forget where requests came from after ``ROUTE_MAP_TTL`` (insertion order = age)."""
        routes, age = self._routes, self._age
        while age:
            if routes[age[0]][3] > now:
                break
            del routes[age.popleft()]
