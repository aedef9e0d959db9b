"""The transactions' timers: one heap of deadlines, and the core's next deadline (aioquic's ``get_timer``).

The heap holds keys, not objects, and at most one live entry per
transaction (``heap_due``). A deadline moved *earlier* gets a new entry (the
old one goes stale and is skipped when it pops); one moved *later* keeps the
entry it has, which is moved when it pops. So an answered call leaves no
stale entry behind: re-arming on every change once left its Timer C entry
(180 s out) and two more per call in the heap until their time came,
~500,000 tuples at 2,000 calls/s.

Entries still go stale: a deadline moved earlier leaves the old entry
(a call answered after ringing leaves its Timer C entry, 180 s out), and a
transaction buried (``linger.py``) leaves its own. The heap counts them
(``_stale``, an estimate) and, once they are the majority, rebuilds
itself from the live entries: O(n) once per n stale entries, so the heap
stays within twice the live transactions instead of holding up to 180 s
of calls.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import final

from .transaction import INF, ClientTxn, ServerTxn

Txn = ServerTxn | ClientTxn


@final
class TimerHeap:
    """Deadlines of the live transactions (``servers`` by key, ``clients`` by branch)."""

    __slots__ = ("_heap", "_seq", "_stale", "clients", "servers")

    def __init__(self, servers: dict[str, ServerTxn], clients: dict[str, ClientTxn]) -> None:
        self.servers = servers
        self.clients = clients
        self._heap: list[tuple[float, int, bool, str]] = []
        self._seq = 0
        self._stale = 0  # stale entries (an estimate); see the module docstring

    def __len__(self) -> int:
        return len(self._heap)

    def entries(self) -> list[tuple[float, int, bool, str]]:
        """The raw entries (tests bound the heap's size and horizon)."""
        return self._heap

    def arm(self, obj: Txn) -> None:
        """(Re)schedule ``obj`` at its earliest deadline; call after any change to its timers."""
        if obj.dead:
            return
        due = obj.next_due()
        obj.due = due
        if due < obj.heap_due:
            self._push(obj)

    def forget(self, n: int = 1) -> None:
        """``n`` transactions left their tables with a live entry each: those entries are stale now."""
        self._stale += n
        self._compact()

    def _compact(self) -> None:
        heap = self._heap
        if self._stale <= 1024 or 2 * self._stale < len(heap):
            return
        servers, clients = self.servers, self.clients
        live: list[tuple[float, int, bool, str]] = []
        for e in heap:
            obj: Txn | None = clients.get(e[3]) if e[2] else servers.get(e[3])
            if obj is not None and obj.heap_due == e[0]:
                live.append(e)
        heap[:] = live  # in place: ``due`` may be iterating over it
        heapq.heapify(heap)
        self._stale = 0

    def _push(self, obj: Txn) -> None:
        due = obj.due
        if due == INF:
            return
        if obj.heap_due != INF:  # the entry it had goes stale
            self._stale += 1
            self._compact()
        obj.heap_due = due
        self._seq += 1
        if isinstance(obj, ServerTxn):
            heapq.heappush(self._heap, (due, self._seq, False, obj.key))
        else:
            heapq.heappush(self._heap, (due, self._seq, True, obj.branch))

    def due(self, now: float) -> Iterator[Txn]:
        """The transactions whose earliest deadline has come, each once; their ``due`` is reset.

        The caller fires them and re-arms them (``arm``) if they live on.
        """
        heap = self._heap
        servers, clients = self.servers, self.clients
        while heap and heap[0][0] <= now:
            due, _, is_client, key = heapq.heappop(heap)
            obj: Txn | None = clients.get(key) if is_client else servers.get(key)
            if obj is None or obj.heap_due != due:
                if self._stale:
                    self._stale -= 1
                continue  # stale entry: finished, or superseded by an earlier one
            obj.heap_due = INF
            if obj.due > now:  # re-armed later since this entry was pushed: move it
                self._push(obj)
                continue
            obj.due = INF
            yield obj

    def next_deadline(self) -> float:
        """The earliest entry's time (INF when empty); may be a stale entry's, which only wakes early."""
        return self._heap[0][0] if self._heap else INF
