"""The circuit breaker: stop asking Redis after consecutive failures, probe until it answers.

After ``failures`` store failures in a row the breaker opens: the engine
applies its fail mode at once and spends no budget. Every ``probe_s`` it
PINGs; the first answer closes it, so decisions resume well within SPEC's
5 s of Redis answering again.

A slow event loop is not a failing Redis. A budget timeout counts only if
the calls have still not been answered ``late_answer_s`` later (see
``judge_late``), and a timeout the budget marked as a loop stall does not
count at all (the engine does not report it). Before this, three timeouts
caused by a 100 ms stall opened the breaker and turned a healthy Redis into
0.5 s of 503s.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from policy.ports import Handle, StoreError, Timers
from policy.ratelog import LimitedLog

log = logging.getLogger(__name__)

SECOND_LOOK_S = 0.02  # an answer read from the socket reaches its future a few loop turns later


class Breaker:
    """Counts store failures, opens, probes with ``ping`` on the timers, closes."""

    def __init__(
        self,
        ping: Callable[[], Awaitable[object]],
        *,
        failures: int = 3,
        probe_s: float = 0.25,
        late_answer_s: float = 0.2,
        timers: Timers | None = None,
        on_close: Callable[[], None] = lambda: None,
        stats: collections.Counter[str] | None = None,
        limited: LimitedLog | None = None,
    ) -> None:
        self.failures = failures  # consecutive failures that open it
        self.probe_s = probe_s
        self.late_answer_s = late_answer_s
        self.is_open = False
        self.stats = stats if stats is not None else collections.Counter()
        self._ping = ping
        self._timers = timers
        self._on_close = on_close
        self._limited = limited or LimitedLog(log)
        self.in_a_row = 0  # consecutive failures so far
        self._probe_timer: Handle | None = None
        self._probe_task: asyncio.Task[Any] | None = None
        self._stopped = False

    def _clock(self) -> Timers:
        return self._timers or asyncio.get_running_loop()

    def success(self) -> None:
        """Redis answered a decision: failures must be consecutive to open the breaker."""
        self.in_a_row = 0

    def failure(self) -> None:
        """One store failure; the ``failures``-th in a row opens the breaker and starts probing."""
        self.in_a_row += 1
        if self.in_a_row >= self.failures and not self.is_open:
            self.is_open = True
            self.stats["breaker_opened"] += 1
            log.warning(
                "redis failing (%d in a row): circuit breaker open, probing every %.2fs",
                self.in_a_row,
                self.probe_s,
            )
            if not self._stopped:
                self._schedule_probe()

    def judge_late(self, futures: Sequence[asyncio.Future[Any]]) -> None:
        """A budget timeout is a step towards opening only if Redis has still not answered
        ``late_answer_s`` later.

        A CPU-saturated worker reads Redis's replies late although Redis
        answered at once: its decisions miss the budget (fail mode), but
        opening the breaker on that would turn every call for the next probe
        interval into a 503 while Redis is fine. A stopped or sleeping Redis
        does not answer within ``late_answer_s``, so it still opens the
        breaker, ``late_answer_s`` later than on the first errors.

        Not answered yet is judged twice, ``SECOND_LOOK_S`` apart: the event
        loop runs due timers *before* it reads sockets, and a reply read from
        the socket reaches its future only a few loop turns later (the
        connection's task wakes, the batcher hands the reply out). After a
        stall of the worker (a long garbage collection, CPU taken away) the
        first look would fire while the answer sits unread or unhanded, and
        a stall is exactly what must not count as Redis failing.
        """
        try:
            timers = self._clock()
            timers.call_at(timers.time() + self.late_answer_s, self._judge, futures, False)
        except RuntimeError:  # loop closing
            pass

    def _judge(self, futures: Sequence[asyncio.Future[Any]], second_look: bool) -> None:
        if all(f.done() and not f.cancelled() and f.exception() is None for f in futures):
            self.stats["late_answers"] += 1
        elif not second_look:
            timers = self._clock()
            timers.call_at(timers.time() + SECOND_LOOK_S, self._judge, futures, True)
        else:
            self.failure()

    # ------------------------------------------------------------- probing
    def _schedule_probe(self) -> None:
        timers = self._clock()
        self._probe_timer = timers.call_at(timers.time() + self.probe_s, self._start_probe)

    def _start_probe(self) -> None:
        self._probe_timer = None
        if not self.is_open or self._stopped:
            return
        self._probe_task = asyncio.ensure_future(
            asyncio.wait_for(self._ping(), max(self.probe_s, 0.5))
        )
        self._probe_task.add_done_callback(self._probed)

    def _probed(self, task: asyncio.Task[Any]) -> None:
        self._probe_task = None
        if task.cancelled() or self._stopped:
            return
        e = task.exception()
        if e is None:
            self.in_a_row = 0
            self.is_open = False
            log.warning("redis answers again: circuit breaker closed")
            self._on_close()
            return
        if not isinstance(e, StoreError | TimeoutError | OSError):
            log.error("redis probe raised %r", e)
        else:
            self._limited.warning("probe", "redis probe failed: %r", e)
        self._schedule_probe()

    def start(self) -> None:
        """Probe again after ``stop`` (an engine restarted while Redis was failing)."""
        self._stopped = False
        if self.is_open and self._probe_timer is None and self._probe_task is None:
            self._schedule_probe()

    async def stop(self) -> None:
        """No more probes; a probe in flight is cancelled and awaited."""
        self._stopped = True
        if self._probe_timer is not None:
            self._probe_timer.cancel()
            self._probe_timer = None
        task, self._probe_task = self._probe_task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except BaseException:  # shutting down
                pass
