"""Tombstones: what an INVITE transaction leaves behind for its 32 s linger once it has nothing more to say.

RFC 6026 keeps an INVITE transaction 64·T1 (32 s) after a 2xx passed
(server side "Accepted", Timer L; client side Timer M), and RFC 3261
§17.2.1 keeps one after a final for Timer H. While a transaction still
owes work (Timer G retransmissions of a non-2xx final, the ACK it waits
for) it stays whole. But once a 2xx has gone upstream, or policy said
drop silently, only three jobs remain, and none needs the transaction:

- absorb a retransmitted INVITE (same Call-ID, top Via branch and sent-by:
  the server key), so it never gets a second decision or forward;
- relay a retransmitted 2xx of the callee upstream, matched on the branch
  of our client transaction (RFC 6026 §7.1: the proxy forwards it);
- absorb an ACK that matches a dropped INVITE's key.

A ``Tomb`` holds exactly that: the two keys and where upstream is. The
full pair (``ServerTxn`` + ``ClientTxn``, their deadlines, the transaction
tables' entries) is freed at once. Every tomb lingers the same 32 s from
when it is made, so the tombs expire in the order they were made: a FIFO,
not a heap entry each.

Kamailio frees its transaction 5 s after the final (its wait timer) and
forwards late 2xx retransmissions statelessly by their Via. We keep
RFC 6026's 32 s because a tomb is small (see docs/perf-core-2026-12-07.md),
and because our own branch is not self-verifying, so a 2xx retransmission
with no state left could not be checked before being reflected upstream.
"""

from __future__ import annotations

from collections import deque
from typing import Final, final

from .actions import Addr, Send

INF: Final = float("inf")


@final
class Tomb:
    """One lingering call: its server key, our client branch ("" after a silent drop), where upstream is."""

    __slots__ = ("branch", "conn_id", "dest", "end_at", "key", "transport")

    def __init__(
        self, key: str, branch: str, dest: Addr, transport: str, conn_id: int | None, end_at: float
    ) -> None:
        self.key = key
        self.branch = branch
        self.dest = dest  # UDP: the reply address (received / rport honoured); TCP: the source
        self.transport = transport
        self.conn_id = conn_id
        self.end_at = end_at

    def upstream(self, data: bytes) -> Send:
        """As ``Shared.upstream`` for the transaction this tomb replaced."""
        if self.transport == "tcp":
            return Send(data, self.dest, "tcp", self.conn_id)
        return Send(data, self.dest, "udp")


@final
class Graveyard:
    """The tombs by server key and by client branch, and their expiry in order of making."""

    __slots__ = ("_fifo", "by_branch", "by_key")

    def __init__(self) -> None:
        self.by_key: dict[str, Tomb] = {}
        self.by_branch: dict[str, Tomb] = {}
        self._fifo: deque[Tomb] = deque()

    def __len__(self) -> int:
        return len(self.by_key)

    def bury(self, tomb: Tomb) -> None:
        old = self.by_key.get(tomb.key)
        if old is not None and old.branch and self.by_branch.get(old.branch) is old:
            del self.by_branch[old.branch]
        self.by_key[tomb.key] = tomb
        if tomb.branch:
            self.by_branch[tomb.branch] = tomb
        self._fifo.append(tomb)

    def next_deadline(self) -> float:
        """The oldest tomb's end (a tomb made with an earlier end behind it only ends late, never early)."""
        fifo = self._fifo
        return fifo[0].end_at if fifo else INF

    def expire(self, now: float) -> int:
        """Forget the tombs whose linger has ended; how many went."""
        fifo = self._fifo
        gone = 0
        by_key, by_branch = self.by_key, self.by_branch
        while fifo and fifo[0].end_at <= now:
            t = fifo.popleft()
            if by_key.get(t.key) is t:
                del by_key[t.key]
                gone += 1
            if t.branch and by_branch.get(t.branch) is t:
                del by_branch[t.branch]
        return gone
