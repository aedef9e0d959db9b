"""The decision budget: the store part of a decision has ``budget_ms`` to answer.

One timer guards a waiter future; the store's own futures are never failed
by it, so answers that arrive after the budget still land and can be refunded
(``AdmissionEngine._refund_late``). A timer that fires late means the event
loop was busy (a GC pause, a burst), not that Redis was slow: it gets one
short grace for an answer already in the socket buffer, and the timeout it
then raises says ``stalled`` so it does not count towards the breaker.

The timer guards a waiter future, not the futures it watches, so that one
timer can guard a whole batch of decisions (one per event-loop turn, issue
13): ``_expire`` takes any waiter.

A grace timer that fires late again means the loop is *still* behind (a
saturated worker, or one the kernel does not schedule): the answer is most
likely read, or waiting to be read, in this very iteration. Failing then
would turn our CPU shortage into a wrong ``store_unavailable`` while Redis
answered on time, so the grace is renewed, up to ``STALL_GRACES`` times in
a row; shedding new INVITEs (503 overload, the worker's queue-wait signal)
is what answers a loop that cannot keep up. A grace that fires on time
with no answer still fails, ``stalled``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from policy.ports import Handle, StoreError, Timers

# Graces in a row while the loop stays late (each ``grace`` long: 8 x 25 ms = 200 ms at most).
STALL_GRACES = 8


class BudgetExceeded(TimeoutError):
    """The store part missed its budget; ``stalled``: the event loop, not Redis, was late."""

    def __init__(self, stalled: bool) -> None:
        super().__init__("decision budget exceeded" + (" (event loop stalled)" if stalled else ""))
        self.stalled = stalled


@dataclass(slots=True)
class Pending:
    """One store call of a decision: which check it answers, and its future."""

    kind: Literal["callee", "token", "caller", "trunk"]
    fut: asyncio.Future[Any]


def _expire(
    timers: Timers,
    waiter: asyncio.Future[None],
    deadline: float,
    late_s: float,
    grace: float,
    stalled: bool,
    graces: int = 0,
) -> None:
    """The budget timer. Fired late by more than ``late_s``: the loop was stalled.

    After a stall the timer runs in the same loop iteration that first sees
    the Redis reply's socket as readable, before the reader task can parse it
    (one or two iterations later): one grace of ``grace`` s lets an answer
    that Redis gave on time arrive instead of a spurious fail-mode decision.
    """
    if waiter.done():
        return
    now = timers.time()
    if now - deadline > late_s and graces < STALL_GRACES:  # the loop is (still) behind
        timers.call_at(
            now + grace, _expire, timers, waiter, now + grace, late_s, grace, True, graces + 1
        )
        return
    waiter.set_exception(BudgetExceeded(stalled))


async def wait_all(
    pending: Sequence[Pending],
    timeout: float,
    late_s: float = 0.02,
    grace: float = 0.01,
    timers: Timers | None = None,
) -> dict[str, Any]:
    """Every call's answer by kind; raises the first ``StoreError``, or ``BudgetExceeded``."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    remaining = len(pending)

    def done(f: asyncio.Future[Any]) -> None:
        nonlocal remaining
        remaining -= 1
        exc = f.exception() if not f.cancelled() else StoreError("cancelled")  # always retrieved
        if waiter.done():
            return
        if exc is not None:
            waiter.set_exception(exc)
        elif remaining == 0:
            waiter.set_result(None)

    for p in pending:
        p.fut.add_done_callback(done)
    # A bare ``call_at`` costs a fraction of ``asyncio.timeout`` (no task cancellation
    # to undo); cancelling it leaves a re-armed grace timer to find the waiter done.
    t = timers or loop
    deadline = t.time() + timeout
    handle = t.call_at(deadline, _expire, t, waiter, deadline, late_s, grace, False)
    try:
        await waiter
    finally:
        handle.cancel()
    return {p.kind: p.fut.result() for p in pending}


def _spent(stalled: bool) -> None:
    """``on_expire`` once a batch's timer is spent: nothing is held any more."""


class BatchBudget:
    """ONE budget timer for every decision submitted in one event-loop turn (issue 13).

    ``wait_all`` costs a waiter future, a timer and a task wake-up per
    decision; a turn that reads 30 INVITEs pays that 30 times. Here the
    decisions of a turn share a deadline, so they share the timer: when it
    fires, ``on_expire(stalled)`` fails whatever is still open (the caller
    knows which), with the same stall rule as ``_expire`` — a timer more than
    ``late_s`` late gets a ``grace`` for answers already in the socket
    buffer, renewed while the grace timers fire late too (``STALL_GRACES``),
    and the failure it then reports says ``stalled``.

    ``settled()`` is called once per decision that finished before the
    deadline; the last one cancels the timer.

    Once spent (the last decision settled, or ``on_expire`` called) the
    budget lets go of ``on_expire``: the caller's closure holds the batch's
    decisions, which hold this budget, and a cycle left for the garbage
    collector per batch can reach its oldest generation on a saturated
    worker (decisions pending across young collections), which the worker's
    thresholds collect only a few times in 5 minutes (docs/performance.md,
    session 6).
    """

    __slots__ = ("_grace", "_handle", "_late_s", "_left", "_on_expire", "_timers")

    def __init__(
        self,
        timers: Timers,
        timeout: float,
        late_s: float,
        grace: float,
        count: int,
        on_expire: Callable[[bool], None],
    ) -> None:
        self._timers = timers
        self._late_s = late_s
        self._grace = grace
        self._left = count
        self._on_expire = on_expire
        deadline = timers.time() + timeout
        self._handle: Handle | None = timers.call_at(deadline, self._fire, deadline, False, 0)

    def settled(self) -> None:
        """One decision of the batch has its answer (or its failure) before the deadline."""
        self._left -= 1
        if self._left <= 0 and self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._on_expire = _spent

    def _fire(self, deadline: float, stalled: bool, graces: int) -> None:
        if self._handle is None:
            return
        now = self._timers.time()
        if now - deadline > self._late_s and graces < STALL_GRACES:  # the loop is (still) behind
            self._handle = self._timers.call_at(
                now + self._grace, self._fire, now + self._grace, True, graces + 1
            )
            return
        self._handle = None
        on_expire, self._on_expire = self._on_expire, _spent
        on_expire(stalled)
