"""The store part of one decision: which calls to make, and what their answers say.

``submit`` queues at most one call per hash slot (the callee script, the
token index, the caller-number rate, the trunk rate / concurrency); they
leave in the event-loop turn's pipeline. ``verdict`` turns their answers
into the ``StoreVerdict`` that ``policy.rules.finish`` combines with the
in-memory half. Neither waits: the budget (``policy.budget``) does, so a
batch of decisions can share one wait.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policy.budget import Pending
from policy.decision import Check
from policy.model import CallAttempt
from policy.ports import AdmissionStore, CalleeResult, RateResult
from policy.rules import LocalVerdict, StoreVerdict
from policy.rules.caps import check_caps
from policy.rules.purpose import normalize_purpose

# Check details for the reason codes the store's script returns (the Python
# reference, policy.rules.consent, words them per record; the script returns codes).
CONSENT_DETAIL = {
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


def submit(
    store: AdmissionStore,
    call: CallAttempt,
    local: LocalVerdict,
    now: float,
    *,
    dry_run: bool,
    all_checks: bool,
    concurrency_timeout_s: int,
) -> list[Pending]:
    """Queue this call's store commands; they leave in the loop turn's pipeline."""
    assert local.callee is not None and local.trunk is not None
    now_ms = int(now * 1000)
    txn = call.txn_id
    lim = local.limits
    quiet_fail = local.quiet.outcome == "fail"
    slots = [
        Pending(
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
        slots.append(Pending("token", store.token_callee(call.consent_token)))
    # Quiet hours already refuse the call: the per-second caps come after it
    # in SPEC order, so they are neither consulted nor counted.
    if quiet_fail and not all_checks:
        return slots
    if lim.caller_per_second > 0 and local.caller:
        slots.append(
            Pending(
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
            Pending(
                "trunk",
                store.rate(
                    "t",
                    local.trunk.trunk_id,
                    limit=lim.trunk_max_cps,
                    max_concurrent=lim.trunk_max_concurrent,
                    now_ms=now_ms,
                    call_id=call.call_id,
                    txn=txn,
                    concurrency_timeout_s=concurrency_timeout_s,
                    dry_run=dry_run,
                ),
            )
        )
    return slots


def verdict(local: LocalVerdict, results: Mapping[str, Any], all_checks: bool) -> StoreVerdict:
    """The answers as checks: consent and DNC worded from the script's codes, caps in order."""
    cr: CalleeResult = results["callee"]
    reason = cr.consent_reason
    token_callee = results.get("token")
    if reason == "consent_unknown" and token_callee is not None and token_callee != local.callee:
        reason = "consent_other_callee"
    if reason is None:
        consent = Check(
            "consent",
            "pass",
            None,
            f"consent for {cr.consent_purpose or '?'}, {cr.used} calls used",
        )
    else:
        detail = CONSENT_DETAIL.get(reason, reason)
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
    return StoreVerdict(
        consent=consent,
        dnc=dnc,
        caps=check_caps(counts, lim, local.day_ttl, all_checks=all_checks),
        evidence_ref=cr.evidence_ref,
        consent_purpose=cr.consent_purpose,
    )
