"""Next-hop probing: OPTIONS to every hop; an answer marks it up, silence for a hop timeout marks it down.

A 503 is no sign of life for routing purposes: the hop says it cannot take
calls (overloaded, out of service), so it stays down, or goes down (issue 15
finding 10). Any other answer, even a 404, proves it alive. A hop that fails
an INVITE is marked down by the client transaction (``client.py``); only a
probe answer other than 503 brings it back.
"""

from __future__ import annotations

import logging
from typing import final

from gateway.sip import build_request

from .actions import Action, Send
from .shared import PROBE_PREFIX, Shared, uri_host
from .transaction import INF

log = logging.getLogger("cag.proxy")


@final
class Prober:
    __slots__ = ("_from", "_next", "_probes", "_seq", "rtt", "shared")

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self._probes: dict[str, tuple[int, float]] = {}  # branch -> (hop index, sent at); ~one per hop
        self._next = -INF
        self._seq = 0
        self.rtt: dict[int, float] = {}  # hop index -> last OPTIONS round trip (s)
        lh, lp = shared.cfg.listen
        self._from = f"<sip:ping@{uri_host(lh)}:{lp}>"

    def next_deadline(self) -> float:
        """When ``tick`` has probing work: the next round, or the oldest unanswered probe's timeout."""
        due = self._next if self.shared.cfg.probe_interval > 0 else INF
        if self._probes:
            due = min(due, min(sent for _, sent in self._probes.values()) + self.shared.cfg.hop_timeout)
        return due

    def tick(self, now: float, out: list[Action]) -> None:
        if self._probes:
            self._judge(now)
        if now >= self._next and self.shared.cfg.probe_interval > 0:
            self._probe(now, out)

    def answered(self, branch: str, now: float, status: int = 200) -> None:
        """A response on a probe branch: up, unless it is a 503 (late or unknown answers are ignored).

        Provisional responses are ignored (the probe waits for its final): a
        100 to an OPTIONS says nothing about whether the hop will take calls.
        """
        if status < 200:
            return
        probe = self._probes.pop(branch, None)
        if probe is None:
            return
        sh = self.shared
        sh.stats["probe_answered"] += 1
        self.rtt[probe[0]] = max(now - probe[1], 0.0)
        if status == 503:
            sh.stats["probe_unavailable"] += 1
            if sh.hops.mark(probe[0], False):
                log.warning("next hop %s is down (OPTIONS answered 503)", sh.hops.hops[probe[0]])
            return
        if sh.hops.mark(probe[0], True):
            log.warning("next hop %s is up", sh.hops.hops[probe[0]])

    def _judge(self, now: float) -> None:
        sh = self.shared
        limit = now - sh.cfg.hop_timeout
        for br, (idx, sent) in list(self._probes.items()):
            if sent <= limit:
                del self._probes[br]
                sh.stats["probe_timeouts"] += 1
                if sh.hops.mark(idx, False):
                    log.warning("next hop %s is down (OPTIONS unanswered)", sh.hops.hops[idx])

    def _probe(self, now: float, out: list[Action]) -> None:
        sh = self.shared
        self._next = now + sh.cfg.probe_interval
        lh = sh.cfg.listen[0]
        for idx, hop in enumerate(sh.hops.hops):
            self._seq += 1
            br = f"{PROBE_PREFIX}{sh.cfg.worker:x}x{idx:x}x{self._seq:x}"
            via = sh.via[hop.transport] + br + (";rport" if hop.transport == "udp" else "")
            target = f"{uri_host(hop.host)}:{hop.port}"
            data = build_request(
                "OPTIONS",
                f"sip:{target}",
                [
                    ("Via", via),
                    ("Max-Forwards", "70"),
                    ("From", f"{self._from};tag={br[-12:]}"),
                    ("To", f"<sip:ping@{target}>"),
                    ("Call-ID", f"{br}@{lh}"),
                    ("CSeq", f"{self._seq} OPTIONS"),
                ],
            )
            self._probes[br] = (idx, now)
            sh.stats["probes_sent"] += 1
            out.append(Send(data, hop.addr, hop.transport, None, True))
