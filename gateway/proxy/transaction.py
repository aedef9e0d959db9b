"""INVITE transactions (RFC 3261 §17, with RFC 6026's Accepted state): states and their changes.

As h11's ``_state.py``: every legal state change is in one table per side
(``SERVER_MOVES``, ``CLIENT_MOVES``) and is made by a method of the
transaction (``forward``, ``complete``, ``on_ack``, ``on_final``,
``abandon``…), which also sets the timers that state needs. Nothing else
assigns ``state``; a wrong transition raises ``TransactionError`` where it
happens. The rooms that drive transactions (``server.py``, ``client.py``)
decide *when*; these methods say *what* a change means.

Each object keeps its own deadlines as floats (``INF`` when unarmed) and
``next_due()``, the earliest of them; ``timers.TimerHeap`` files it under
that time (``due``, ``heap_due``, ``dead`` are the heap's bookkeeping).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final, final

from gateway.sip import Request
from policy.model import CallAttempt

from .actions import Addr

INF: Final = float("inf")
T1: Final = 0.5  # RTT estimate: first retransmission interval (Timers A, G)
T2: Final = 4.0  # cap of the non-INVITE / response retransmission interval (Timer G)
T4: Final = 5.0  # how long a message may live in the network (Timer I)
TIMER_H: Final = 64 * T1  # 32 s: wait for the ACK of a non-2xx final; also the 2xx linger (RFC 6026)
TIMER_D: Final = 32.0  # client: absorb retransmitted non-2xx finals (UDP)
TIMER_F: Final = 64 * T1  # a non-INVITE client transaction (our CANCEL) gives up retransmitting


class TransactionError(Exception):
    """A state change the machine does not have: a bug in the caller, raised where it happens."""


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


SERVER_MOVES: frozenset[tuple[SState, SState]] = frozenset(
    {
        (SState.PENDING, SState.FORWARDED),  # admitted
        (SState.PENDING, SState.COMPLETED),  # rejected, or CANCEL before the decision (487)
        (SState.PENDING, SState.DROPPED),  # policy: drop silently
        (SState.FORWARDED, SState.COMPLETED),  # a non-2xx final (relayed or ours)
        (SState.FORWARDED, SState.ACCEPTED),  # a 2xx relayed
        (SState.COMPLETED, SState.CONFIRMED),  # the ACK of our non-2xx final
    }
)
CLIENT_MOVES: frozenset[tuple[CState, CState]] = frozenset(
    {
        (CState.CALLING, CState.PROCEEDING),
        (CState.CALLING, CState.ACCEPTED),
        (CState.CALLING, CState.COMPLETED),
        (CState.CALLING, CState.ABANDONED),  # hop timeout
        (CState.PROCEEDING, CState.ACCEPTED),
        (CState.PROCEEDING, CState.COMPLETED),
        (CState.PROCEEDING, CState.ABANDONED),  # Timer C
    }
)

# What a hop-by-hop ACK / CANCEL / orphan BYE repeats of the forwarded INVITE:
# (Request-URI, Route values, From, To, CSeq number). Plain strings, so a client
# transaction needs neither the INVITE nor its server transaction's request.
HopFields = tuple[str, tuple[str, ...], str, str, int]


_NO_FIELDS: HopFields = ("", (), "", "", 0)


@final
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
        now: float,
    ) -> None:
        self.key = key
        # The INVITE; edited in place for forwarding (see client.Clients.forward),
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
        self.last: bytes | None = None  # last response sent upstream (replayed to retransmissions)
        self.client: ClientTxn | None = None  # the current downstream attempt
        self.tried: tuple[int, ...] = ()  # hop indices attempted; a tuple: 48 B, a set 216 B
        self.cancelled = False  # CANCEL answered with our own 487 before forwarding
        self.cancel_requested = False  # CANCEL arrived after forwarding
        self.answered_at: float | None = None
        self.g_at = INF
        self.g_iv = T1
        # A decision normally arrives within the policy budget; this only bounds memory.
        self.end_at = now + TIMER_H
        self.due = INF  # earliest deadline wanted
        self.heap_due = INF  # deadline of its live timer-heap entry (see timers.TimerHeap)
        self.dead = False

    def next_due(self) -> float:
        return min(self.g_at, self.end_at)

    def _move(self, new: SState) -> None:
        if (self.state, new) not in SERVER_MOVES:
            raise TransactionError(f"server transaction {self.key!r}: {self.state.name} -> {new.name}")
        self.state = new

    # ---- state changes

    def forward(self, trunk_id: str, trying: bytes) -> None:
        """Admitted: a client transaction takes over; ``trying`` answers retransmissions meanwhile."""
        self._move(SState.FORWARDED)
        self.trunk_id = trunk_id
        self.last = trying

    def drop(self, now: float) -> None:
        """Policy said drop silently: answer nothing, absorb retransmissions for Timer H."""
        self._move(SState.DROPPED)
        self.slim()
        self.end_at = now + TIMER_H

    def complete(self, final: bytes, now: float) -> None:
        """A non-2xx final goes upstream and stays for retransmissions until the ACK (Timers G, H)."""
        self._move(SState.COMPLETED)
        self.last = final
        self.slim()  # only ``last`` is needed from here on
        if self.transport == "udp":
            self.g_iv = T1
            self.g_at = now + T1
        self.end_at = now + TIMER_H

    def accept(self, now: float, wall: float) -> None:
        """A 2xx went upstream (RFC 6026 Accepted): absorb INVITE retransmissions for Timer H.

        Neither the request, the last provisional nor the forwarded INVITE is
        needed any more.
        """
        self._move(SState.ACCEPTED)
        self.g_at = INF
        self.end_at = now + TIMER_H
        self.answered_at = wall
        self.last = None
        self.slim()

    def on_ack(self, now: float) -> None:
        """The ACK of our non-2xx final: stop Timer G, linger Timer I (UDP) for its retransmissions."""
        if self.state == SState.COMPLETED:
            self._move(SState.CONFIRMED)
            self.g_at = INF
            self.end_at = now + (T4 if self.transport == "udp" else 0.0)

    # ---- timer changes (no state change)

    def back_off(self, now: float) -> None:
        """Timer G doubles (capped at T2): after it fired, or after a retransmission was answered."""
        self.g_iv = min(self.g_iv * 2, T2)
        self.g_at = now + self.g_iv

    def slim(self) -> None:
        """The final response has left: drop what only forwarding needed (see the class docstring)."""
        self.req = None
        self.call = None
        self.hop_fields = None
        self.tried = ()
        self.from_tag = ""

    def request(self) -> Request:
        """The INVITE, for a response we build; only asked for before the final response."""
        req = self.req
        if req is None:
            raise TransactionError("transaction already completed")
        return req


@final
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
        "cancel_until",
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
        now: float,
        hop_timeout: float,
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
        self.a_at = now + T1 if transport == "udp" else INF
        self.a_iv = T1
        self.hop_at = now + hop_timeout
        self.c_at = INF
        self.cancel_at = INF
        self.cancel_iv = T1
        self.cancel_until = INF
        self.end_at = INF
        self.due = INF  # earliest deadline wanted
        self.heap_due = INF  # deadline of its live timer-heap entry (see timers.TimerHeap)
        self.dead = False

    def next_due(self) -> float:
        return min(self.a_at, self.hop_at, self.c_at, self.cancel_at, self.end_at)

    def _move(self, new: CState) -> None:
        if (self.state, new) not in CLIENT_MOVES:
            raise TransactionError(f"client transaction {self.branch!r}: {self.state.name} -> {new.name}")
        self.state = new

    # ---- state changes

    def on_provisional(self, now: float, timer_c: float, status: int) -> None:
        """Any 1xx: the hop is alive (no Timer A, no hop timeout); Timer C (re)starts."""
        self.a_at = INF
        self.hop_at = INF
        if self.state != CState.PROCEEDING:  # Calling moves; any later state raises
            self._move(CState.PROCEEDING)
        self.got_response = True
        if status > 100:
            self.got_provisional = True
        self.c_at = now + timer_c

    def on_2xx(self, now: float) -> None:
        """Accepted: the 2xx's retransmissions are relayed for Timer H; the INVITE is not needed."""
        self._move(CState.ACCEPTED)
        self._stop()
        self.end_at = now + TIMER_H
        # Only the relaying of the 2xx's retransmissions is left: no ACK, CANCEL or orphan BYE
        # of ours will repeat the INVITE, so neither it nor what they copy is kept.
        self.data = b""
        self.via = ""
        self.fields = _NO_FIELDS

    def on_final(self, ack: bytes, now: float) -> None:
        """A non-2xx final, ACKed hop by hop with ``ack``; late copies absorbed for Timer D (UDP)."""
        self._move(CState.COMPLETED)
        self._stop()
        self.ack = ack
        self.data = b""  # no more Timer A: the forwarded INVITE is not needed
        self.end_at = now + (TIMER_D if self.transport == "udp" else 0.0)

    def abandon(self, now: float) -> None:
        """Hop timeout or Timer C: forward nothing more, but ACK / close late answers for Timer H."""
        self._move(CState.ABANDONED)
        self.a_at = INF
        self.hop_at = INF
        self.c_at = INF
        self.end_at = now + TIMER_H

    def _stop(self) -> None:
        self.a_at = INF
        self.hop_at = INF
        self.c_at = INF
        self.cancel_at = INF

    # ---- timer changes (no state change)

    def on_timer_a(self, now: float) -> None:
        """Timer A fired: the INVITE goes again, the interval doubles."""
        self.a_iv *= 2
        self.a_at = now + self.a_iv

    def cancel_sent(self, cancel: bytes, now: float) -> None:
        """Our CANCEL left; over UDP it is retransmitted (Timer E, capped at T2) until answered or Timer F."""
        self.cancel_pending = False
        self.cancel = cancel
        if self.transport == "udp":
            self.cancel_iv = T1
            self.cancel_at = now + T1
            self.cancel_until = now + TIMER_F

    def on_cancel_timer(self, now: float) -> bool:
        """True: send the CANCEL again. Gives up at Timer F (64·T1 after the first send)."""
        if now >= self.cancel_until:
            self.cancel_at = INF
            return False
        self.cancel_iv = min(self.cancel_iv * 2, T2)
        self.cancel_at = now + self.cancel_iv
        return True

    def on_cancel_answered(self) -> None:
        """Our CANCEL got its answer; the 487 comes on the INVITE."""
        self.cancel_at = INF
