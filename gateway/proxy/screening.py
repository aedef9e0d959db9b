"""Screening: what is dropped or refused before any transaction exists.

Floods are dropped before parsing (pike first, then unknown sources in
silent-drop mode) for a dict lookup or two per packet; requests from
unknown sources that got past that are dropped or answered 403 after the
parse; broken requests are answered from their raw lines when that is safe.

The trunk directory (``SourceKnown``) is asked at most once per message:
the answer of the early screen travels with the message as a ``Verdict``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import final

from gateway.sip import PHRASES, Request, SipError

from .actions import Action, Addr, Send
from .pike import Pike
from .shared import Arrival, Shared

log = logging.getLogger("cag.proxy")

SourceKnown = Callable[[str], bool]
"""The trunk directory: is this source address one of a trunk's? (policy's reference data)"""

# What the early screen knows of a message's source.
Verdict = int
DROP = 0  # drop it (counted)
KNOWN = 1  # a trunk's address
UNKNOWN = 2  # no trunk's address (answered 403 later when configured)
UNASKED = 3  # not looked up (a next hop, a response, or 403 mode): ask when it matters

SUPPORTED: frozenset[str] = frozenset()
"""Option tags the proxy implements for Proxy-Require (RFC 3261 §16.3 step 5): none."""

_TOKEN_MARK = b";cag="  # our Record-Route token parameter, as we write it

_COMPACT = {b"v": b"via", b"f": b"from", b"t": b"to", b"i": b"call-id"}
_CANON = {b"via": b"Via", b"from": b"From", b"to": b"To", b"call-id": b"Call-ID", b"cseq": b"CSeq"}


@final
class Screen:
    """Pike, unknown sources, malformed requests (see the module docstring)."""

    __slots__ = ("pike", "shared", "source_known")

    def __init__(self, shared: Shared, source_known: SourceKnown) -> None:
        self.shared = shared
        self.source_known = source_known
        self.pike = Pike(shared.cfg.pike)

    def early(self, data: bytes, ip: str, now: float) -> Verdict:
        """Before parsing. Next hops are never screened (their responses and in-dialog
        requests must pass); responses go on to the full path, which routes them by
        Via. With ``unknown_source_code`` set the full path runs so it can answer 403.
        A datagram from an unknown address that carries our Record-Route token
        parameter goes on too: the token, not the address, admits in-dialog requests.
        """
        sh = self.shared
        if ip in sh.hops.hosts:
            return UNASKED
        pike = self.pike
        if pike.cfg.density:
            blocks = pike.blocks
            if pike.hit(ip, now):
                sh.stats["dropped_pike"] += 1
                if pike.blocks != blocks:
                    sh.stats["pike_blocked"] += 1
                    log.warning("pike: %r sent over %d requests in %.1f s; blocked", ip, pike.cfg.density, pike.cfg.interval)
                return DROP
        if sh.cfg.unknown_source_code or data.startswith(b"SIP/2.0"):
            return UNASKED
        if self.source_known(ip):
            return KNOWN
        if _TOKEN_MARK in data:
            # Maybe an in-dialog request from a carrier node that is not a configured hop
            # address (issue 15 #1): only our Record-Route token lets it through (routing.py).
            return UNKNOWN
        sh.stats["dropped_unknown_source"] += 1
        return DROP

    def known(self, verdict: Verdict, ip: str) -> bool:
        """The directory's answer, asked now only if the early screen did not."""
        if verdict == UNASKED:
            return self.source_known(ip)
        return verdict == KNOWN

    def unknown_source(self, req: Request, arr: Arrival) -> list[Action]:
        """A request from no trunk's address that got past the early screen: 403 or drop (counted)."""
        return list(self.shared.unknown_source(req, arr))

    def proxy_require(self, req: Request, arr: Arrival) -> list[Action] | None:
        """RFC 3261 §16.3 step 5: 420 naming every Proxy-Require option tag we lack; None to go on.

        The gateway implements no proxy extension, so any tag is unsupported
        (``SUPPORTED`` is where one would be added). ACK and CANCEL are never
        refused for it (RFC 3261 §8.2.2.3: they cannot be rejected that way).
        Require is the UAS's business and is forwarded untouched.
        """
        if req.method == "ACK" or req.method == "CANCEL":
            return None
        tags: list[str] = []
        for value in req.get_all("Proxy-Require"):
            for t in value.split(","):
                t = t.strip()
                if t and t.lower() not in SUPPORTED and t not in tags:
                    tags.append(t)
        if not tags:
            return None
        sh = self.shared
        sh.stats["bad_extension"] += 1
        return [sh.reply(req, arr, 420, extra=[("Unsupported", ", ".join(tags))])]

    def malformed(
        self, data: bytes, err: SipError, source: Addr, transport: str, conn_id: int | None, verdict: Verdict
    ) -> list[Action]:
        """Answer a broken request when a response can still be built from its raw lines; else drop.

        A datagram of nothing but CRLFs is an RFC 5626 §3.5.1 keep-alive (linphone
        sends one every 30 s over UDP), not a broken message: counted as such and
        ignored. No pong over UDP: the RFC's UDP keep-alive is STUN, and a bare
        CRLF there expects no answer (TCP pongs are the transport's job).
        """
        sh = self.shared
        if data and not data.strip(b"\r\n"):
            sh.stats["keepalives"] += 1
            return []
        raw = None
        status = err.status or 400
        if data[:4] != b"SIP/" and data[:4] != b"ACK ":
            if source[0] in sh.hops.hosts or self.known(verdict, source[0]):
                raw = raw_response(data, status, sh.tag())
        if raw is None:
            sh.stats["dropped_malformed"] += 1
            return []
        sh.stats["malformed_answered"] += 1
        sh.stats[f"tx_{status}"] += 1
        return [Send(raw, source, transport, conn_id if transport != "udp" else None)]


def raw_response(data: bytes, status: int, tag: str) -> bytes | None:
    """A response built from the raw lines of a request the parser refused, if it can be routed.

    Not ``gateway.sip.build_response``: there is no parsed request to build from.
    What a response needs to reach its client transaction is the Via (RFC 3261
    §18.2.2, §17.1.3: the branch and CSeq match it), so a request line and a Via
    are enough: a request line with stray whitespace (RFC 4475 §3.1.2.8-10) or one
    missing From / To / Call-ID (§3.3.1) still gets its 400, echoing what it has,
    rather than silence and 32 s of UDP retransmissions.
    """
    head = data.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    if len(lines) < 2 or len(lines) > 200:
        return None
    first = lines[0].split()  # any run of SP / HTAB, leading or trailing too
    if len(first) < 3 or not first[-1].upper().startswith(b"SIP/") or not first[0].isalpha():
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
    vias = [v for v in found.get(b"via", ()) if v]
    if not vias:
        return None
    phrase = PHRASES.get(status, "Bad Request").encode()
    code = str(status).encode()
    out = [b"SIP/2.0 " + code + b" " + phrase]
    out.extend(b"Via: " + v for v in vias)
    for n in (b"from", b"to", b"call-id", b"cseq"):
        if n not in found:
            continue  # nothing to copy (§3.3.1): the Via alone routes the answer
        v = found[n][0]
        if n == b"to" and status > 100 and b";tag=" not in v.lower():
            v += b";tag=" + tag.encode()
        out.append(_CANON[n] + b": " + v)
    out += [
        b'Reason: SIP;cause=' + code + b';text="malformed"',
        b"Content-Length: 0",
        b"",
        b"",
    ]
    return b"\r\n".join(out)
