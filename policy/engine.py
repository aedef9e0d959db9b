"""``AdmissionEngine.admit(call) -> Decision``: the rules, the store, the budget and the fail mode.

One decision is: the in-memory checks (``evaluate_local`` on the worker's
reference snapshot), then ONE concurrent batch to Redis — at most one call
per hash slot (callee script, token index, caller-number rate, trunk rate /
concurrency) — then ``finish``. The store's auto-batcher puts every call made
during one event-loop turn into one pipeline, so concurrent INVITEs share
round trips.

Failure handling, in the order it is applied:

* budget: the store part has ``budget_ms`` to answer (a timer on one future per decision);
* fail mode: on timeout or a Redis error, ``closed`` rejects with
  ``store_unavailable`` (503, Retry-After = ``ResponseMap.default_retry_after``),
  ``open`` decides with the in-memory checks only (quiet hours included);
* circuit breaker: after ``breaker_failures`` consecutive failures the engine
  stops calling Redis (the fail mode applies at once, no budget is spent) and
  PINGs every ``breaker_probe_s``; the first answer closes it, so decisions
  resume well within SPEC's 5 s of Redis answering again;
* loop stalls are not Redis failures: a budget timer that fires late (the
  worker's event loop was busy — a GC pause, a burst) gets one short grace
  (``stall_grace``) for an answer already in the socket buffer, and a timeout
  after a stall does not count towards the breaker. Before this, three
  timeouts caused by a 100 ms stall opened the breaker and turned a healthy
  Redis into 0.5 s of 503s;
* quota: a rejected call consumes none. A slot script that counted for a
  call the overall decision rejected is refunded (``cag_refund``, once per
  transaction), including a script that answered after the budget ran out.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from policy.decision import UNCONSENTED, Check, Decision, reject
from policy.model import CallAttempt
from policy.rules import (
    CAP_NAMES,
    LocalVerdict,
    RefData,
    RuleConfig,
    StoreVerdict,
    evaluate_local,
    finish,
)
from policy.rules.caps import PER_SECOND_RETRY, check_cap
from policy.rules.consent import check_consent, check_dnc
from policy.rules.purpose import normalize_purpose
from policy.store import CalleeResult, PolicyStore, RateResult, StoreError

log = logging.getLogger(__name__)

LOG_EVERY_S = 5.0  # rate limit for repeated store-failure log lines

# Check details for the reason codes the store's script returns (the Python
# reference, policy.rules.consent, words them per record; the script returns codes).
_CONSENT_DETAIL = {
    "consent_missing": "no consent token",
    "consent_unknown": "unknown consent token, or not valid yet",
    "consent_other_callee": "token was granted for another callee",
    "consent_other_enterprise": "token was granted to another enterprise",
    "purpose_not_allowed": "declared purpose differs from the consent's, or the call's purpose "
    "is not one the enterprise may call for",
    "purpose_marketing": "the call's purpose is marketing: commercial-marketing outbound "
    "is not allowed",
    "consent_revoked": "consent revoked",
    "consent_expired": "consent expired",
    "consent_exhausted": "consent's max_calls used up",
}


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
    late_answer_s: float = 0.2  # a timed-out call answered within this after its budget: not a failure
    concurrency_timeout_s: int = 14400  # a concurrent-call entry without BYE expires after this


@dataclass(slots=True)
class _Slot:
    """One call of the batch: what it was, its future, and (once answered) its result."""

    kind: Literal["callee", "token", "caller", "trunk"]
    fut: asyncio.Future[Any]


class BudgetExceeded(TimeoutError):
    """The store part missed its budget; ``stalled``: the event loop, not Redis, was late."""

    def __init__(self, stalled: bool) -> None:
        super().__init__("decision budget exceeded" + (" (event loop stalled)" if stalled else ""))
        self.stalled = stalled


def _expire(
    waiter: asyncio.Future[None], deadline: float, late_s: float, grace: float, stalled: bool
) -> None:
    """The budget timer. Fired late by more than ``late_s``: the loop was stalled.

    After a stall the timer runs in the same loop iteration that first sees
    the Redis reply's socket as readable, before the reader task can parse it
    (one or two iterations later): one grace of ``grace`` s lets an answer
    that Redis gave on time arrive instead of a spurious fail-mode decision.
    """
    if waiter.done():
        return
    loop = waiter.get_loop()
    now = loop.time()
    if not stalled and now - deadline > late_s:
        loop.call_at(now + grace, _expire, waiter, now + grace, late_s, grace, True)
        return
    waiter.set_exception(BudgetExceeded(stalled))


async def _wait(
    slots: list[_Slot], timeout: float, late_s: float = 0.02, grace: float = 0.01
) -> dict[str, Any]:
    """Wait for every slot's answer; raise the first ``StoreError``, or ``BudgetExceeded``.

    Waits on one private future, so a budget timeout fails only that
    future, never the slot futures: their late answers still arrive and can
    be refunded. The deadline is a bare ``call_at`` on that future, which
    costs a fraction of ``asyncio.timeout`` (no task cancellation to undo).
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    remaining = len(slots)

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

    for s in slots:
        s.fut.add_done_callback(done)
    deadline = loop.time() + timeout
    handle = loop.call_at(deadline, _expire, waiter, deadline, late_s, grace, False)
    try:
        await waiter
    finally:
        handle.cancel()  # a re-armed grace timer is left to find the waiter done (a no-op)
    return {s.kind: s.fut.result() for s in slots}


def _consume(fut: asyncio.Future[Any]) -> None:
    """Done-callback for fire-and-forget futures: mark their exception retrieved."""
    if not fut.cancelled():
        fut.exception()


class AdmissionEngine:
    """Admission decisions for one worker (implements ``Admission`` of docs/interfaces.md)."""

    def __init__(
        self, store: PolicyStore, cfg: EngineConfig, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.cfg = cfg
        self.clock = clock
        self.ref: RefData = RefData.build([], [], [], version=-1)
        self.stats: collections.Counter[str] = collections.Counter()
        self.latency_observer: Callable[[str, float], None] | None = None
        self._loaded = False
        self._refresh_ok = False
        # When the reference data in memory was last known current (loaded, or its
        # version checked against Redis): the age metric a NOC watches while Redis is away.
        self.ref_confirmed_at = 0.0
        self._failures = 0
        self._breaker_open = False
        self._probe_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._last_log: dict[str, float] = {}

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load reference data and keep it fresh (pub/sub + version poll, within 1 s).

        Does not fail when Redis is away: ``ready`` stays False until a first
        snapshot loads; later outages keep the last snapshot in service.
        """
        self._stop.clear()
        try:
            await asyncio.wait_for(self._reload(), 5.0)
        except (StoreError, TimeoutError, OSError) as e:
            log.warning("reference data not loaded yet: %s", e)
        self._spawn(self._refresh_loop())
        self._spawn(self.store.subscribe_changes(self._on_change, self._stop))

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        tasks = [*self._tasks, *([self._probe_task] if self._probe_task else [])]
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except BaseException:  # shutting down
                pass
        self._tasks.clear()
        self._probe_task = None

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def ready(self) -> bool:
        """A reference snapshot is loaded (the gateway adds "a next hop is up")."""
        return self._loaded

    @property
    def redis_ok(self) -> bool:
        return self._refresh_ok and not self._breaker_open

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

    def source_known(self, ip: str) -> bool:
        return bool(self.ref.source_known(ip))

    # ------------------------------------------------------ reference data
    def _on_change(self, version: int) -> None:
        if version != self.ref.version:
            self._wake.set()

    async def _reload(self) -> None:
        async with self._reload_lock:
            trunks, enterprises, filings, version = await self.store.load_refdata()
            self.ref = RefData.build(trunks, enterprises, filings, version=version)
            self._loaded = True
            self._refresh_ok = True
            self.ref_confirmed_at = time.time()
            log.info("reference data version %d: %r", version, self.ref)

    async def _refresh_loop(self) -> None:
        interval = self.cfg.refresh_interval_s
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
            except TimeoutError:
                pass
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                version = await asyncio.wait_for(self.store.ref_version(), max(interval, 1.0))
                if version != self.ref.version or not self._loaded:
                    await asyncio.wait_for(self._reload(), 5.0)
                self._refresh_ok = True
                self.ref_confirmed_at = time.time()
            except (StoreError, TimeoutError, OSError) as e:
                self._refresh_ok = False
                self._log_limited(
                    "refresh",
                    "reference refresh failed (serving version %d): %s",
                    self.ref.version,
                    e,
                )
            except Exception:
                self._refresh_ok = False
                log.exception("reference refresh failed")

    # -------------------------------------------------------------- admit
    async def admit(self, call: CallAttempt) -> Decision:
        """Decide one initial INVITE; never raises."""
        t0 = time.perf_counter()
        try:
            d = await self._admit(call)
        except Exception:
            log.exception("admission failed for call %r", call.call_id)
            self.stats["internal_errors"] += 1
            d = reject(
                "store_unavailable",
                retry_after=self.cfg.rules.responses.default_retry_after,
                responses=self.cfg.rules.responses,
            )
        self.stats["decisions_" + d.reason] += 1
        if self.latency_observer is not None:
            self.latency_observer("decision", time.perf_counter() - t0)
        return d

    async def _admit(self, call: CallAttempt) -> Decision:
        now = self.clock()
        local = evaluate_local(call, self.ref, datetime.fromtimestamp(now, UTC), self.cfg.rules)
        d = local.failed if local.failed is not None else await self._with_store(call, local, now)
        if d.reason in UNCONSENTED and d.enterprise_id and not self._breaker_open:
            self._count_unconsented(d.enterprise_id, now)
        if self.cfg.shadow and not d.admit and d.reason != "malformed":
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

    async def _with_store(self, call: CallAttempt, local: LocalVerdict, now: float) -> Decision:
        if self._breaker_open:
            return self._fail(call, local, "breaker open")
        t0 = time.perf_counter()
        slots = self._submit(call, local, now, dry_run=False, all_checks=False)
        cfg = self.cfg
        budget = cfg.budget_ms / 1000
        try:
            results = await _wait(slots, budget, cfg.stall_late_s, min(budget / 2, 0.025))
        except (TimeoutError, StoreError) as e:
            timeout = isinstance(e, TimeoutError)
            stalled = isinstance(e, BudgetExceeded) and e.stalled
            self.stats["store_timeouts" if timeout else "store_errors"] += 1
            if stalled:
                # The loop, not Redis, was late: no step towards the breaker.
                self.stats["loop_stall_timeouts"] += 1
            elif timeout:
                self._judge_late(slots)
            else:
                self._failure()
            d = self._fail(call, local, str(e))
            # Scripts that counted (or still will) for a call we reject are refunded.
            for s in slots:
                if not s.fut.done():
                    s.fut.add_done_callback(_consume if d.admit else self._refund_late)
                elif not d.admit:
                    self._refund_late(s.fut)
            return d
        self._failures = 0
        if self.latency_observer is not None:
            self.latency_observer("redis", time.perf_counter() - t0)
        d = finish(call, local, self._verdict(local, results, all_checks=False), self.cfg.rules)
        if d.admit and any(getattr(r, "refunded", False) for r in results.values()):
            # A retransmission of a transaction we rejected fail-closed (its
            # scripts passed but the answer came too late): the stored decision
            # was a rejection, so repeat it rather than admit uncounted.
            self.stats["replay_refunded"] += 1
            return self._closed(call, local)
        if not d.admit:
            for r in results.values():
                self._refund_result(r)
        return d

    def _submit(
        self, call: CallAttempt, local: LocalVerdict, now: float, dry_run: bool, all_checks: bool
    ) -> list[_Slot]:
        """Queue this call's store commands; they leave in the loop turn's pipeline."""
        assert local.callee is not None and local.trunk is not None
        now_ms = int(now * 1000)
        txn = call.txn_id
        lim = local.limits
        store = self.store
        quiet_fail = local.quiet.outcome == "fail"
        slots = [
            _Slot(
                "callee",
                store.admit_callee(
                    callee=local.callee,
                    token=call.consent_token,
                    enterprise_id=local.trunk.enterprise_id,
                    purpose=normalize_purpose(call.purpose),
                    allowed_purposes=local.enterprise.purposes if local.enterprise else (),
                    now_ms=now_ms,
                    quiet_fail=quiet_fail,
                    daily_limit=lim.callee_daily,
                    total_limit=lim.callee_total_daily,
                    day=local.day,
                    day_ttl=local.day_ttl,
                    txn=txn,
                    dry_run=dry_run,
                ),
            )
        ]
        if call.consent_token:
            slots.append(_Slot("token", store.token_callee(call.consent_token)))
        # Quiet hours already refuse the call: the per-second caps come after it
        # in SPEC order, so they are neither consulted nor counted.
        if quiet_fail and not all_checks:
            return slots
        if lim.caller_per_second > 0 and local.caller:
            slots.append(
                _Slot(
                    "caller",
                    store.rate(
                        "n",
                        local.caller,
                        limit=lim.caller_per_second,
                        now_ms=now_ms,
                        call_id=call.call_id,
                        txn=txn,
                        dry_run=dry_run,
                    ),
                )
            )
        if lim.trunk_max_cps > 0 or lim.trunk_max_concurrent > 0:
            slots.append(
                _Slot(
                    "trunk",
                    store.rate(
                        "t",
                        local.trunk.trunk_id,
                        limit=lim.trunk_max_cps,
                        max_concurrent=lim.trunk_max_concurrent,
                        now_ms=now_ms,
                        call_id=call.call_id,
                        txn=txn,
                        concurrency_timeout_s=self.cfg.concurrency_timeout_s,
                        dry_run=dry_run,
                    ),
                )
            )
        return slots

    def _verdict(
        self, local: LocalVerdict, results: dict[str, Any], all_checks: bool
    ) -> StoreVerdict:
        cr: CalleeResult = results["callee"]
        reason = cr.consent_reason
        token_callee = results.get("token")
        if (
            reason == "consent_unknown"
            and token_callee is not None
            and token_callee != local.callee
        ):
            reason = "consent_other_callee"
        if reason is None:
            consent = Check(
                "consent",
                "pass",
                None,
                f"consent for {cr.consent_purpose or '?'}, {cr.used} calls used",
            )
        else:
            detail = _CONSENT_DETAIL.get(reason, reason)
            if reason == "consent_other_callee":
                detail = f"token was granted for {token_callee}"
            consent = Check("consent", "fail", reason, detail)
        if cr.dnc_reason is None:
            dnc = Check("dnc", "pass", None, "not registered, or a consented callback")
        else:
            dnc = Check("dnc", "fail", cr.dnc_reason, "callee registered do-not-call")
        lim = local.limits
        caller: RateResult | None = results.get("caller")
        trunk: RateResult | None = results.get("trunk")
        counts: dict[str, int | None] = {
            "callee_daily_cap": cr.day_count,
            "callee_total_daily_cap": cr.total_count,
            "caller_rate": caller.rate_count
            if caller is not None
            else (0 if lim.caller_per_second <= 0 else None),
            "trunk_rate": trunk.rate_count
            if trunk is not None
            else (0 if lim.trunk_max_cps <= 0 else None),
            "trunk_concurrent": trunk.concurrent
            if trunk is not None
            else (0 if lim.trunk_max_concurrent <= 0 else None),
        }
        caps: list[Check] = []
        stopped = False
        for name in CAP_NAMES:
            count = counts[name]
            if (stopped and not all_checks) or count is None:
                caps.append(Check(name, "skip", None, "not evaluated"))
                continue
            retry = local.day_ttl if name.endswith("daily_cap") else PER_SECOND_RETRY
            c = check_cap(name, count, lim.limit_for(name), retry)
            caps.append(c)
            stopped = stopped or c.outcome == "fail"
        return StoreVerdict(
            consent=consent,
            dnc=dnc,
            caps=tuple(caps),
            evidence_ref=cr.evidence_ref,
            consent_purpose=cr.consent_purpose,
        )

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
    def _fail(self, call: CallAttempt, local: LocalVerdict, why: str) -> Decision:
        if self.cfg.fail_mode == "open":
            self.stats["fail_open"] += 1
            self._log_limited("fail_open", "store unavailable (%s): deciding fail-open", why)
            return finish(call, local, None, self.cfg.rules)
        self.stats["fail_closed"] += 1
        self._log_limited("fail_closed", "store unavailable (%s): rejecting fail-closed", why)
        return self._closed(call, local)

    def _closed(self, call: CallAttempt, local: LocalVerdict) -> Decision:
        responses = self.cfg.rules.responses
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

    def _judge_late(self, slots: list[_Slot]) -> None:
        """A budget timeout is a step towards the breaker only if Redis has still not answered
        ``late_answer_s`` later.

        A CPU-saturated worker reads Redis's replies late although Redis
        answered at once: its decisions miss the budget (fail mode), but
        opening the breaker on that would turn every call for the next probe
        interval into a 503 while Redis is fine. A stopped or sleeping Redis
        does not answer within ``late_answer_s``, so it still opens the
        breaker, ``late_answer_s`` later than on the first errors.

        Not answered yet is judged twice, 20 ms apart: the event loop runs
        due timers *before* it reads sockets, and a reply read from the
        socket reaches the slot's future only a few loop turns later (the
        connection's task wakes, the batcher hands the reply out). After a
        stall of the worker (a long garbage collection, CPU taken away) the
        first look would fire while the answer sits unread or unhanded, and
        a stall is exactly what must not count as Redis failing.
        """

        def judge(second_look: bool = False) -> None:
            if all(s.fut.done() and not s.fut.cancelled() and s.fut.exception() is None for s in slots):
                self.stats["late_answers"] += 1
            elif not second_look:
                asyncio.get_running_loop().call_later(0.02, judge, True)  # after the socket is read
            else:
                self._failure()

        try:
            asyncio.get_running_loop().call_later(self.cfg.late_answer_s, judge)
        except RuntimeError:  # loop closing
            pass

    def _failure(self) -> None:
        self._failures += 1
        if self._failures >= self.cfg.breaker_failures and not self._breaker_open:
            self._breaker_open = True
            self.stats["breaker_opened"] += 1
            log.warning(
                "redis failing (%d in a row): circuit breaker open, probing every %.2fs",
                self._failures,
                self.cfg.breaker_probe_s,
            )
            self._probe_task = asyncio.get_running_loop().create_task(self._probe())

    async def _probe(self) -> None:
        while self._breaker_open and not self._stop.is_set():
            await asyncio.sleep(self.cfg.breaker_probe_s)
            try:
                await asyncio.wait_for(self.store.ping(), max(self.cfg.breaker_probe_s, 0.5))
            except (StoreError, TimeoutError, OSError) as e:
                self._log_limited("probe", "redis probe failed: %r", e)
                continue
            self._failures = 0
            self._breaker_open = False
            self._wake.set()  # re-check the reference version at once
            log.warning("redis answers again: circuit breaker closed")

    def _log_limited(self, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_log.get(key, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._last_log[key] = now
            log.warning(msg, *args)

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
            self._wake.set()

    def release(self, trunk_id: str, call_id: str) -> None:
        """Free a concurrency slot (BYE, CANCEL, final error); fire-and-forget."""
        trunk = self.ref.trunks.get(trunk_id)
        if trunk is not None and trunk.max_concurrent <= 0:
            return  # nothing was tracked for this trunk
        try:
            self.store.release(trunk_id, call_id).add_done_callback(_consume)
        except RuntimeError:  # no running loop
            log.debug("release outside the event loop ignored")

    # ------------------------------------------------------------ explain
    async def explain(self, call: CallAttempt, at: datetime) -> Decision:
        """Every check for this call at ``at``, without counting anything (dry run, no txn).

        Raises ``StoreError`` when Redis does not answer: an explanation
        without the consent / DNC / caps half would mislead.
        """
        cfg = self.cfg.rules
        local = evaluate_local(call, self.ref, at, cfg, all_checks=True)
        local = self._with_suspension_detail(local)
        if local.callee is None or local.trunk is None:
            why = "not evaluated: no callee" if local.callee is None else "not evaluated: no trunk"
            skipped = StoreVerdict(
                consent=Check("consent", "skip", None, why),
                dnc=Check("dnc", "skip", None, why),
                caps=tuple(Check(n, "skip", None, why) for n in CAP_NAMES),
            )
            return finish(call, local, skipped, cfg, all_checks=True)
        slots = self._submit(call, local, at.timestamp(), dry_run=True, all_checks=True)
        try:
            results = await _wait(slots, 5.0)
        except TimeoutError as e:
            raise StoreError("explain: store did not answer within 5 s") from e
        verdict = await self._explained(
            call, local, at, results, self._verdict(local, results, True)
        )
        return finish(call, local, verdict, cfg, all_checks=True)

    async def _explained(
        self,
        call: CallAttempt,
        local: LocalVerdict,
        at: datetime,
        results: dict[str, Any],
        verdict: StoreVerdict,
    ) -> StoreVerdict:
        """Word the consent / DNC checks as policy.rules.consent does, from the records.

        The script returns reason codes only; explain is not on the hot path,
        so it reads the consent and DNC records and runs the Python reference
        for its details ("revoked 2026-…", "2 of 2 calls used"). Should the
        two ever disagree, the script's verdict stands (it is what admission
        does) and the disagreement is logged.
        """
        assert local.callee is not None and local.trunk is not None
        cr: CalleeResult = results["callee"]
        token = call.consent_token
        stored = await self.store.get_consent(token) if token else None
        record = stored if stored is not None and stored.callee == local.callee else None
        consent = check_consent(
            record,
            token=token,
            callee=local.callee,
            enterprise_id=local.trunk.enterprise_id,
            declared_purpose=call.purpose,
            allowed_purposes=local.enterprise.purposes if local.enterprise is not None else (),
            used=cr.used,
            now=at,
            token_callee=stored.callee if stored is not None else None,
        )
        dnc = check_dnc(
            await self.store.get_dnc(local.callee),
            consent_ok=verdict.consent.outcome == "pass",
            consent_purpose=cr.consent_purpose,
        )
        agreed = {}
        for name, ours, theirs in (
            ("consent", verdict.consent, consent),
            ("dnc", verdict.dnc, dnc),
        ):
            if (ours.outcome, ours.reason) == (theirs.outcome, theirs.reason):
                agreed[name] = theirs
            else:
                log.warning(
                    "explain: script and reference disagree on %s: %s vs %s",
                    name,
                    ours.reason,
                    theirs.reason,
                )
        return dataclasses.replace(
            verdict,
            consent=agreed.get("consent", verdict.consent),
            dnc=agreed.get("dnc", verdict.dnc),
        )

    @staticmethod
    def _with_suspension_detail(local: LocalVerdict) -> LocalVerdict:
        ent = local.enterprise
        if ent is None or ent.status != "suspended" or ent.suspended_at is None:
            return local
        since = f"; suspended since {ent.suspended_at.isoformat()}"
        checks = tuple(
            dataclasses.replace(
                c,
                detail=c.detail
                + since
                + (
                    f" ({ent.suspended_cause})"
                    if ent.suspended_cause and ent.suspended_cause not in c.detail
                    else ""
                ),
            )
            if c.name == "trunk" and since not in c.detail
            else c
            for c in local.checks
        )
        return dataclasses.replace(local, checks=checks)
