"""``AdmissionEngine.admit(call) -> Decision``: the rules, the store, the budget and the fail mode.

One decision is: the in-memory checks (``evaluate_local`` on the worker's
reference snapshot, ``policy.refcache``), then ONE concurrent batch to the
store — at most one call per hash slot (callee script, token index,
caller-number rate, trunk rate / concurrency) — then ``finish``. The store's
auto-batcher puts every call made during one event-loop turn into one
pipeline, so concurrent INVITEs share round trips.

Failure handling, in the order it is applied:

* budget (``policy.budget``): the store part has ``budget_ms`` to answer; a
  timer that fires late marks the timeout a loop stall, not a Redis failure;
* fail mode: on timeout or a store error, ``closed`` rejects with
  ``store_unavailable`` (503, Retry-After = ``ResponseMap.default_retry_after``),
  ``open`` decides with the in-memory checks only (quiet hours included);
* circuit breaker (``policy.breaker``): after ``breaker_failures``
  consecutive failures the engine stops calling the store (the fail mode
  applies at once, no budget is spent) and PINGs every ``breaker_probe_s``;
  stalls and answers that arrive within ``late_answer_s`` do not count;
* quota: a rejected call consumes none. A slot script that counted for a
  call the overall decision rejected is refunded (``cag_refund``, once per
  transaction), including a script that answered after the budget ran out.

The store is an ``AdmissionStore`` (``policy.ports``); ``PolicyStore`` is the
Redis one. A decision is three steps — ``evaluate_local`` (in memory),
``store_part.submit`` (queue the store calls), ``_settle`` / ``_store_failed``
(answers or failure → ``Decision``) — so a batch of decisions can share one
budget timer (issue 13).

One module on purpose: ``AdmissionEngine`` is one state machine — the waiting
batch, the budget timer, the breaker's state and the refunds of late answers
change together on every answer — and its parts that stand alone (breaker,
budget, store part, reference cache) already have modules of their own.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

from policy.breaker import Breaker
from policy.budget import BatchBudget, BudgetExceeded, Pending
from policy.decision import UNCONSENTED, Decision, reject
from policy.explain import explain_call
from policy.model import CallAttempt
from policy.ports import AdmissionStore, CalleeResult, RateResult, StoreError, Timers
from policy.ratelog import LimitedLog
from policy.refcache import RELOAD_TIMEOUT_S, RefCache
from policy.rules import (
    LocalVerdict,
    RefData,
    RuleConfig,
    evaluate_local,
    finish,
)
from policy.store_part import submit, verdict

__all__ = ["AdmissionEngine", "BudgetExceeded", "EngineConfig", "StoreError"]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class EngineConfig:
    """Engine knobs; ``rules`` are the policy knobs of ``policy.rules``."""

    rules: RuleConfig = RuleConfig()  # noqa: RUF009 - frozen, shared safely
    fail_mode: Literal["closed", "open"] = (
        "closed"  # what to decide when Redis does not answer in time
    )
    budget_ms: float = 50  # time allowed for the store part of one decision
    shadow: bool = False  # decide and count, but admit everything (rollout)
    unconsented_threshold: int = 100  # unconsented attempts that suspend an enterprise (R6)
    unconsented_window_s: int = 3600  # ... within this window
    refresh_interval_s: float = 0.5  # reference-version poll (back-stop for pub/sub)
    breaker_failures: int = 3  # consecutive store failures that open the circuit breaker
    breaker_probe_s: float = 0.25  # PING interval while the breaker is open
    stall_late_s: float = 0.02  # a budget timer this late means the loop stalled, not Redis
    late_answer_s: float = (
        0.2  # a timed-out call answered within this after its budget: not a failure
    )
    concurrency_timeout_s: int = 14400  # a concurrent-call entry without BYE expires after this


def _consume(fut: asyncio.Future[Any]) -> None:
    """Done-callback for fire-and-forget futures: mark their exception retrieved."""
    if not fut.cancelled():
        fut.exception()


def _resolve(fut: asyncio.Future[Decision], d: Decision) -> None:
    """``admit``'s ``on_decided``: the awaiting caller may have been cancelled meanwhile."""
    if not fut.done():
        fut.set_result(d)


class _Waiting(Generic[T]):
    """One decision waiting for its store answers; the done-callback of each of its futures.

    A plain object with ``__call__`` instead of a task and a waiter future:
    the answers are decoded and the decision handed over in the callback of
    the future that completes the set (issue 13).
    """

    __slots__ = (
        "batch",
        "call",
        "cfg",
        "decided",
        "engine",
        "left",
        "local",
        "now",
        "on_decided",
        "pending",
        "t0",
        "t_store",
        "token",
    )

    def __init__(
        self,
        engine: AdmissionEngine,
        token: T,
        call: CallAttempt,
        local: LocalVerdict,
        pending: list[Pending],
        on_decided: Callable[[T, Decision], None],
        now: float,
        t0: float,
        cfg: EngineConfig,
    ) -> None:
        self.engine = engine
        self.token = token
        self.call = call
        self.local = local
        self.pending = pending
        self.left = len(pending)
        self.on_decided = on_decided
        self.now = now
        self.t0 = t0
        self.t_store = time.perf_counter()
        self.cfg = cfg
        self.decided = False
        self.batch: BatchBudget | None = None

    def __call__(self, fut: asyncio.Future[Any]) -> None:
        """One store answer landed: fail at the first error, decide on the last answer."""
        self.left -= 1
        exc = fut.exception() if not fut.cancelled() else StoreError("cancelled")  # retrieved
        if self.decided:
            return
        if exc is not None:
            self.fail(exc if isinstance(exc, Exception) else StoreError(repr(exc)), on_time=True)
        elif self.left == 0:
            self._decide()

    def answered(self) -> bool:
        """Every answer is in, even if its done-callback has not run yet."""
        return all(p.fut.done() for p in self.pending)

    def decide_answered(self) -> None:
        """The budget ran out between the answers landing and their callbacks running.

        The futures' done-callbacks run one loop iteration after the reply is
        read, and a loop iteration runs its timers first: a budget timer due in
        that iteration would otherwise fail a decision whose answers are in
        hand. Decided from them instead; the callbacks, when they run, find it
        decided.
        """
        for p in self.pending:
            f = p.fut
            exc = f.exception() if not f.cancelled() else StoreError("cancelled")
            if exc is not None:
                self.fail(
                    exc if isinstance(exc, Exception) else StoreError(repr(exc)), on_time=True
                )
                return
        self._decide()

    def _decide(self) -> None:
        e = self.engine
        self.decided = True
        if self.batch is not None:
            self.batch.settled()
            self.batch = None  # no cycle through the batch's budget (see BatchBudget)
        if e.latency_observer is not None:
            e.latency_observer("redis", time.perf_counter() - self.t_store)
        try:
            results: dict[str, Any] = {p.kind: p.fut.result() for p in self.pending}
            d = e._settle(self.call, self.local, results, self.cfg)
        except Exception:
            e._internal_error(self.call, self.on_decided, self.token, self.now, self.t0, self.cfg)
            return
        e._deliver(self.on_decided, self.token, d, self.now, self.t0, self.cfg)

    def fail(self, exc: Exception, *, on_time: bool) -> None:
        """A store error (``on_time``: before the deadline) or the batch's budget ran out."""
        e = self.engine
        self.decided = True
        if on_time and self.batch is not None:
            self.batch.settled()
        self.batch = None  # no cycle through the batch's budget (see BatchBudget)
        try:
            d = e._store_failed(self.call, self.local, self.pending, exc, self.cfg)
        except Exception:
            e._internal_error(self.call, self.on_decided, self.token, self.now, self.t0, self.cfg)
            return
        e._deliver(self.on_decided, self.token, d, self.now, self.t0, self.cfg)


class AdmissionEngine:
    """Admission decisions for one worker (implements ``Admission`` of docs/interfaces.md)."""

    def __init__(
        self,
        store: AdmissionStore,
        cfg: EngineConfig,
        *,
        clock: Callable[[], float] = time.time,
        timers: Timers | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` dates decisions; ``timers`` (default: the running loop) arms budgets and
        probes; ``wall`` dates the reference snapshot's confirmations."""
        self.store = store
        self.cfg = cfg
        self.clock = clock
        self.stats: collections.Counter[str] = collections.Counter()
        self.latency_observer: Callable[[str, float], None] | None = None
        self._timers = timers
        self._limited = LimitedLog(log)
        self.refcache = RefCache(store, wall=wall, limited=self._limited)
        self.breaker = Breaker(
            store.ping,
            failures=cfg.breaker_failures,
            probe_s=cfg.breaker_probe_s,
            late_answer_s=cfg.late_answer_s,
            timers=timers,
            on_close=self.refcache.wake,  # re-check the reference version at once
            stats=self.stats,
            limited=self._limited,
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop = asyncio.Event()

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load reference data and keep it fresh (pub/sub + version poll, within 1 s).

        Does not fail when Redis is away: ``ready`` stays False until a first
        snapshot loads; later outages keep the last snapshot in service.
        """
        self._stop.clear()
        self.breaker.start()
        try:
            await asyncio.wait_for(self.refcache.reload(), RELOAD_TIMEOUT_S)
        except (StoreError, TimeoutError, OSError) as e:
            log.warning("reference data not loaded yet: %s", e)
        self._spawn(self.refcache.run(self.cfg.refresh_interval_s, self._stop))
        self._spawn(self.store.subscribe_changes(self.refcache.on_change, self._stop))

    async def stop(self) -> None:
        self._stop.set()
        self.refcache.wake()
        await self.breaker.stop()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except BaseException:  # shutting down
                pass
        self._tasks.clear()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def ref(self) -> RefData:
        """The reference snapshot the in-memory checks use."""
        return self.refcache.ref

    @property
    def ref_confirmed_at(self) -> float:
        """When the snapshot was last known current (wall clock, 0 before the first load)."""
        return self.refcache.confirmed_at

    @property
    def ready(self) -> bool:
        """A reference snapshot is loaded (the gateway adds "a next hop is up")."""
        return self.refcache.loaded

    @property
    def redis_ok(self) -> bool:
        return self.refcache.refresh_ok and not self.breaker.is_open

    def reconfigure(self, cfg: EngineConfig) -> None:
        """SIGHUP: new knobs from the next decision on (fail mode, budget, shadow, rules...).

        Every decision reads ``self.cfg`` once at its start, so a decision in
        flight finishes under the settings it began with.
        """
        if cfg != self.cfg:
            log.info(
                "engine reconfigured: fail_mode=%s budget_ms=%s shadow=%s",
                cfg.fail_mode,
                cfg.budget_ms,
                cfg.shadow,
            )
        self.cfg = cfg
        self.breaker.failures = cfg.breaker_failures
        self.breaker.probe_s = cfg.breaker_probe_s
        self.breaker.late_answer_s = cfg.late_answer_s

    def source_known(self, ip: str) -> bool:
        return bool(self.refcache.ref.source_known(ip))

    # -------------------------------------------------------------- admit
    async def admit(self, call: CallAttempt) -> Decision:
        """Decide one initial INVITE; never raises (a batch of one: ``admit_many``)."""
        fut: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self.admit_many(((fut, call),), _resolve)
        return await fut

    def admit_many(
        self,
        items: Iterable[tuple[T, CallAttempt]],
        on_decided: Callable[[T, Decision], None],
    ) -> None:
        """Decide every INVITE read in one loop turn, without a task or a waiter per decision.

        ``on_decided(token, decision)`` is called once per item and never
        raises into the engine: synchronously, before this returns, for the
        decisions the in-memory checks or an open breaker settle; later, from
        the store futures' callbacks or the batch's one budget timer, for the
        rest. The store calls of all items leave in the turn's one pipeline.
        """
        cfg = self.cfg  # a decision in flight finishes under the settings it began with
        t0 = time.perf_counter()
        now = self.clock()
        at = datetime.fromtimestamp(now, UTC)
        ref = self.refcache.ref
        waiting: list[_Waiting[T]] = []
        for token, call in items:
            try:
                local = evaluate_local(call, ref, at, cfg.rules)
                if local.failed is not None:
                    self._deliver(on_decided, token, local.failed, now, t0, cfg)
                    continue
                if self.breaker.is_open:
                    d = self._fail(call, local, "breaker open", cfg)
                    self._deliver(on_decided, token, d, now, t0, cfg)
                    continue
                pending = submit(
                    self.store,
                    call,
                    local,
                    now,
                    dry_run=False,
                    all_checks=False,
                    concurrency_timeout_s=cfg.concurrency_timeout_s,
                )
            except Exception:
                self._internal_error(call, on_decided, token, now, t0, cfg)
                continue
            waiting.append(_Waiting(self, token, call, local, pending, on_decided, now, t0, cfg))
        if not waiting:
            return
        budget = cfg.budget_ms / 1000
        batch = BatchBudget(
            self._timers or asyncio.get_running_loop(),
            budget,
            cfg.stall_late_s,
            min(budget / 2, 0.025),
            len(waiting),
            lambda stalled: self._expire_batch(waiting, stalled),
        )
        for w in waiting:
            w.batch = batch
            for p in w.pending:
                p.fut.add_done_callback(w)

    def _expire_batch(self, waiting: list[_Waiting[Any]], stalled: bool) -> None:
        """The batch's budget ran out: every decision still waiting gets the fail mode.

        Except one whose answers are all in and only their callbacks have not
        run yet (``_Waiting.decide_answered``): it is decided from them.
        """
        for w in waiting:
            if w.decided:
                continue
            if w.answered():
                self.stats["answered_at_budget"] += 1
                w.decide_answered()
            else:
                w.fail(BudgetExceeded(stalled), on_time=False)

    def _deliver(
        self,
        on_decided: Callable[[T, Decision], None],
        token: T,
        d: Decision,
        now: float,
        t0: float,
        cfg: EngineConfig,
    ) -> None:
        """Shadow, the unconsented count, stats and latency; then hand the decision over."""
        try:
            d = self._conclude(d, now, cfg)
        except Exception:
            log.exception("admission side effects failed")
            self.stats["internal_errors"] += 1
        self.stats["decisions_" + d.reason] += 1
        if self.latency_observer is not None:
            self.latency_observer("decision", time.perf_counter() - t0)
        try:
            on_decided(token, d)
        except Exception:  # the caller's bug must not strand the rest of the batch
            log.exception("on_decided callback failed")

    def _internal_error(
        self,
        call: CallAttempt,
        on_decided: Callable[[T, Decision], None],
        token: T,
        now: float,
        t0: float,
        cfg: EngineConfig,
    ) -> None:
        log.exception("admission failed for call %r", call.call_id)
        self.stats["internal_errors"] += 1
        d = reject(
            "store_unavailable",
            retry_after=cfg.rules.responses.default_retry_after,
            responses=cfg.rules.responses,
        )
        self.stats["decisions_" + d.reason] += 1
        if self.latency_observer is not None:
            self.latency_observer("decision", time.perf_counter() - t0)
        try:
            on_decided(token, d)
        except Exception:
            log.exception("on_decided callback failed")

    def _conclude(self, d: Decision, now: float, cfg: EngineConfig) -> Decision:
        """Side effects every decision shares: the unconsented count (R6) and shadow mode."""
        if d.reason in UNCONSENTED and d.enterprise_id and not self.breaker.is_open:
            self._count_unconsented(d.enterprise_id, now)
        if cfg.shadow and not d.admit and d.reason != "malformed":
            self.stats["shadow_would_reject"] += 1
            d = dataclasses.replace(
                d,
                admit=True,
                reason="admitted",
                sip_code=0,
                retry_after=None,
                shadow_reject=d.reason,
            )
        return d

    def _settle(
        self, call: CallAttempt, local: LocalVerdict, results: Mapping[str, Any], cfg: EngineConfig
    ) -> Decision:
        """The store answered in time: decide, and refund what counted for a rejection."""
        if self.breaker.in_a_row:  # a method call saved on the hot path
            self.breaker.success()
        d = finish(call, local, verdict(local, results, all_checks=False), cfg.rules)
        if d.admit and any(getattr(r, "refunded", False) for r in results.values()):
            # A retransmission of a transaction we rejected fail-closed (its
            # scripts passed but the answer came too late): the stored decision
            # was a rejection, so repeat it rather than admit uncounted.
            self.stats["replay_refunded"] += 1
            return self._closed(call, local, cfg)
        if not d.admit:
            for r in results.values():
                self._refund_result(r)
        return d

    def _store_failed(
        self,
        call: CallAttempt,
        local: LocalVerdict,
        pending: list[Pending],
        e: Exception,
        cfg: EngineConfig,
    ) -> Decision:
        """The store failed or missed the budget: tell the breaker, apply the fail mode.

        Scripts that counted (or still will) for a call we reject are refunded.
        """
        timeout = isinstance(e, TimeoutError)
        self.stats["store_timeouts" if timeout else "store_errors"] += 1
        if isinstance(e, BudgetExceeded) and e.stalled:
            # The loop, not Redis, was late: no step towards the breaker.
            self.stats["loop_stall_timeouts"] += 1
        elif timeout:
            self.breaker.judge_late([p.fut for p in pending])
        else:
            self.breaker.failure()
        d = self._fail(call, local, str(e), cfg)
        for p in pending:
            if not p.fut.done():
                p.fut.add_done_callback(_consume if d.admit else self._refund_late)
            elif not d.admit:
                self._refund_late(p.fut)
        return d

    # ------------------------------------------------------------ refunds
    def _refund_result(self, r: Any) -> None:
        if isinstance(r, CalleeResult) and r.counted:
            self.store.refund("admit", r.keys).add_done_callback(_consume)
            self.stats["refunds"] += 1
        elif isinstance(r, RateResult) and r.counted:
            self.store.refund("rate", r.keys, self._call_id_of(r)).add_done_callback(_consume)
            self.stats["refunds"] += 1

    @staticmethod
    def _call_id_of(r: RateResult) -> str:
        # The txn key is "{tag}:txn:<call-id>|<branch>"; the concurrency entry is the call-id.
        txn = r.keys[0].split(":txn:", 1)[1]
        return txn.rsplit("|", 1)[0]

    def _refund_late(self, fut: asyncio.Future[Any]) -> None:
        """A script answered after the budget ran out for a call we rejected: undo its counting."""
        if fut.cancelled() or fut.exception() is not None:
            return
        try:
            self._refund_result(fut.result())
        except RuntimeError:  # loop closing
            pass

    # ------------------------------------------------------- fail handling
    def _fail(
        self, call: CallAttempt, local: LocalVerdict, why: str, cfg: EngineConfig
    ) -> Decision:
        if cfg.fail_mode == "open":
            self.stats["fail_open"] += 1
            self._limited.warning("fail_open", "store unavailable (%s): deciding fail-open", why)
            return finish(call, local, None, cfg.rules)
        self.stats["fail_closed"] += 1
        self._limited.warning("fail_closed", "store unavailable (%s): rejecting fail-closed", why)
        return self._closed(call, local, cfg)

    def _closed(self, call: CallAttempt, local: LocalVerdict, cfg: EngineConfig) -> Decision:
        responses = cfg.rules.responses
        return reject(
            "store_unavailable",
            retry_after=responses.default_retry_after,
            checks=local.checks,
            responses=responses,
            trunk_id=local.trunk.trunk_id if local.trunk is not None else None,
            enterprise_id=local.trunk.enterprise_id if local.trunk is not None else None,
            caller=local.caller,
            callee=local.callee,
            consent_token=call.consent_token,
        )

    # ------------------------------------------------------- side effects
    def _count_unconsented(self, enterprise_id: str, now: float) -> None:
        fut = self.store.unconsented(
            enterprise_id, self.cfg.unconsented_threshold, self.cfg.unconsented_window_s
        )

        def done(f: asyncio.Future[tuple[int, bool]]) -> None:
            if f.cancelled() or f.exception() is not None:
                return
            count, crossed = f.result()
            if crossed and not self.cfg.shadow:
                self._spawn(self._auto_suspend(enterprise_id, count, now))

        fut.add_done_callback(done)

    async def _auto_suspend(self, enterprise_id: str, count: int, now: float) -> None:
        cause = f"auto: {count} unconsented attempts in {self.cfg.unconsented_window_s} s"
        try:
            ok = await self.store.set_status(
                "enterprise",
                enterprise_id,
                "suspended",
                cause=cause,
                at=datetime.fromtimestamp(now, UTC),
            )
        except (StoreError, ValueError) as e:
            log.error("auto-suspension of enterprise %s failed: %s", enterprise_id, e)
            return
        if ok:
            self.stats["auto_suspended"] += 1
            log.warning("enterprise %s suspended: %s", enterprise_id, cause)
            self.refcache.wake()

    def release(self, trunk_id: str, call_id: str) -> None:
        """Free a concurrency slot (BYE, CANCEL, final error); fire-and-forget."""
        trunk = self.refcache.ref.trunks.get(trunk_id)
        if trunk is not None and trunk.max_concurrent <= 0:
            return  # nothing was tracked for this trunk
        try:
            self.store.release(trunk_id, call_id).add_done_callback(_consume)
        except RuntimeError:  # no running loop
            log.debug("release outside the event loop ignored")

    # ------------------------------------------------------------ explain
    async def explain(self, call: CallAttempt, at: datetime) -> Decision:
        """Every check for this call at ``at``, without counting anything (``policy.explain``).

        Raises ``StoreError`` when the store does not answer.
        """
        return await explain_call(
            self.store,
            self.refcache.ref,
            self.cfg.rules,
            call,
            at,
            concurrency_timeout_s=self.cfg.concurrency_timeout_s,
            timers=self._timers,
        )
