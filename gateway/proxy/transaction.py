"""INVITE transaction state (RFC 3261 §17, with RFC 6026's Accepted state).

The objects are plain slotted records; ``core.ProxyCore`` owns the logic and
one timer heap. Each object keeps its own deadlines as floats (``INF`` when
unarmed), ``due``, the earliest of them, and ``heap_due``, the time of its one
live heap entry: an entry whose time no longer matches is stale and skipped,
and an entry that pops before ``due`` is pushed again at ``due``, so
re-arming is at most one push and cancelling is free.
"""

from __future__ import annotations

from enum import IntEnum

from gateway.sip import Request
from policy.model import CallAttempt

from .actions import Addr

INF = float("inf")
T1 = 0.5  # RTT estimate: first retransmission interval (Timers A, G)
T2 = 4.0  # cap of the non-INVITE / response retransmission interval (Timer G)
T4 = 5.0  # how long a message may live in the network (Timer I)
TIMER_H = 64 * T1  # 32 s: wait for the ACK of a non-2xx final; also the 2xx linger (RFC 6026)
TIMER_D = 32.0  # client: absorb retransmitted non-2xx finals (UDP)


class SState(IntEnum):
    """Server (upstream) INVITE transaction states."""

    PENDING = 0  # waiting for the policy decision
    FORWARDED = 1  # admitted, a client transaction is working on it (RFC "Proceeding")
    COMPLETED = 2  # non-2xx final sent, waiting for the ACK (Timers G, H)
    CONFIRMED = 3  # ACK received (Timer I)
    ACCEPTED = 4  # 2xx passed upstream; absorb INVITE retransmissions for 32 s
    DROPPED = 5  # policy said drop silently; absorb retransmissions for 32 s


class CState(IntEnum):
    """Client (downstream) INVITE transaction states."""

    CALLING = 0  # sent, no response yet (Timer A, hop timeout)
    PROCEEDING = 1  # a provisional arrived (Timer C)
    COMPLETED = 2  # non-2xx final received and ACKed (Timer D)
    ACCEPTED = 3  # 2xx received: forward its retransmissions for 32 s
    ABANDONED = 4  # failed over / timed out: ACK late finals, forward nothing


# What a hop-by-hop ACK / CANCEL / orphan BYE repeats of the forwarded INVITE:
# (Request-URI, Route values, From, To, CSeq number). Plain strings, so a client
# transaction needs neither the INVITE nor its server transaction's request.
HopFields = tuple[str, tuple[str, ...], str, str, int]


class ServerTxn:
    """One INVITE from a trunk, from arrival to the end of its 32 s linger.

    Once its final response has left (``slim``) it keeps only what answering
    retransmissions needs: the lingering 32 s would otherwise hold the whole
    parsed INVITE and its CallAttempt — about 10 KiB and a few dozen objects
    for the garbage collector to walk, times calls/s times 32.
    """

    __slots__ = (
        "answered_at",
        "call",
        "call_id",
        "cancel_requested",
        "cancelled",
        "client",
        "conn_id",
        "dead",
        "due",
        "end_at",
        "from_tag",
        "g_at",
        "g_iv",
        "heap_due",
        "hop_fields",
        "key",
        "last",
        "mf",
        "prepared",
        "record_id",
        "reply_addr",
        "req",
        "source",
        "state",
        "to_tag",
        "transport",
        "tried",
        "trunk_id",
    )

    def __init__(
        self,
        key: str,
        req: Request,
        call: CallAttempt,
        record_id: str,
        reply_addr: Addr,
        source: Addr,
        transport: str,
        conn_id: int | None,
        to_tag: str,
    ) -> None:
        self.key = key
        # The INVITE; edited in place for forwarding (see ProxyCore._forward_invite),
        # its Vias, From, To, Call-ID and CSeq stay as received for the responses we build.
        # None after ``slim``.
        self.req: Request | None = req
        self.call: CallAttempt | None = call
        self.call_id = call.call_id
        self.hop_fields: HopFields | None = None
        self.record_id = record_id
        self.reply_addr = reply_addr  # UDP: where responses go (received/rport honoured)
        self.source = source
        self.transport = transport
        self.conn_id = conn_id
        self.to_tag = to_tag  # our tag for responses we generate
        self.state = SState.PENDING
        self.trunk_id = ""
        self.from_tag = ""  # the caller's tag: the Record-Route token is bound to it
        self.mf = -1  # Max-Forwards as received (-1: absent)
        self.prepared = False  # header edits for forwarding done
        self.last: bytes | None = None  # last response sent upstream (replayed to retransmissions)
        self.client: ClientTxn | None = None  # the current downstream attempt
        self.tried: set[int] = set()
        self.cancelled = False  # CANCEL answered with our own 487 before forwarding
        self.cancel_requested = False  # CANCEL arrived after forwarding
        self.answered_at: float | None = None
        self.g_at = INF
        self.g_iv = T1
        self.end_at = INF
        self.due = INF  # earliest deadline wanted
        self.heap_due = INF  # deadline of its live timer-heap entry (see ProxyCore._arm)
        self.dead = False

    def next_due(self) -> float:
        return min(self.g_at, self.end_at)

    def slim(self) -> None:
        """The final response has left: drop the request and the call (see the class docstring)."""
        self.req = None
        self.call = None

    def request(self) -> Request:
        """The INVITE, for a response we build; only asked for before the final response."""
        req = self.req
        if req is None:
            raise RuntimeError("transaction already completed")
        return req


class ClientTxn:
    """One forwarding attempt of an admitted INVITE to one hop, keyed by our branch."""

    __slots__ = (
        "a_at",
        "a_iv",
        "ack",
        "branch",
        "c_at",
        "cancel",
        "cancel_at",
        "cancel_iv",
        "cancel_pending",
        "data",
        "dead",
        "dest",
        "due",
        "end_at",
        "fields",
        "got_provisional",
        "got_response",
        "heap_due",
        "hop",
        "hop_at",
        "orphan_closed",
        "server",
        "state",
        "transport",
        "via",
    )

    def __init__(
        self,
        branch: str,
        server: ServerTxn,
        hop: int,
        dest: Addr,
        transport: str,
        data: bytes,
        via: str,
        fields: HopFields,
    ) -> None:
        self.branch = branch
        self.server = server
        self.hop = hop
        self.dest = dest
        self.transport = transport
        self.data = data  # the forwarded INVITE (Timer A retransmissions)
        self.via = via  # our Via value (the ACK / CANCEL repeat it)
        self.fields = fields  # what the ACK / CANCEL / orphan BYE repeat of the INVITE
        self.state = CState.CALLING
        self.got_response = False  # any response, 100 included: CANCEL may now be sent
        self.got_provisional = False  # a provisional above 100: no more failover
        self.cancel_pending = False
        self.cancel: bytes | None = None  # the CANCEL we sent (retransmitted over UDP)
        self.ack: bytes | None = None  # the ACK we sent for a non-2xx final
        self.orphan_closed = False  # a late 2xx after abandonment was ACKed and BYEd
        self.a_at = INF
        self.a_iv = T1
        self.hop_at = INF
        self.c_at = INF
        self.cancel_at = INF
        self.cancel_iv = T1
        self.end_at = INF
        self.due = INF  # earliest deadline wanted
        self.heap_due = INF  # deadline of its live timer-heap entry (see ProxyCore._arm)
        self.dead = False

    def next_due(self) -> float:
        return min(self.a_at, self.hop_at, self.c_at, self.cancel_at, self.end_at)
