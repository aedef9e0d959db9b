"""``cag explain``: every check for one call, with the store consulted but nothing counted.

The store's scripts run dry (no transaction, no counting) with every check
evaluated; consent and DNC are then worded from their records by the Python
reference (``policy.rules.consent``), which admission never pays for.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from policy.budget import wait_all
from policy.decision import Check, Decision
from policy.model import CallAttempt
from policy.ports import AdmissionStore, CalleeResult, StoreError, Timers
from policy.rules import (
    CAP_NAMES,
    LocalVerdict,
    RefData,
    RuleConfig,
    StoreVerdict,
    evaluate_local,
    finish,
)
from policy.rules.consent import check_consent, check_dnc
from policy.store_part import submit, verdict

log = logging.getLogger(__name__)

EXPLAIN_TIMEOUT_S = 5.0  # not the hot path: a slow store still gets an answer


async def explain_call(
    store: AdmissionStore,
    ref: RefData,
    cfg: RuleConfig,
    call: CallAttempt,
    at: datetime,
    *,
    concurrency_timeout_s: int,
    timers: Timers | None = None,
) -> Decision:
    """Every check for this call at ``at``, without counting anything (dry run, no txn).

    Raises ``StoreError`` when Redis does not answer: an explanation
    without the consent / DNC / caps half would mislead.
    """
    local = _with_suspension_detail(evaluate_local(call, ref, at, cfg, all_checks=True))
    if local.callee is None or local.trunk is None:
        why = "not evaluated: no callee" if local.callee is None else "not evaluated: no trunk"
        skipped = StoreVerdict(
            consent=Check("consent", "skip", None, why),
            dnc=Check("dnc", "skip", None, why),
            caps=tuple(Check(n, "skip", None, why) for n in CAP_NAMES),
        )
        return finish(call, local, skipped, cfg, all_checks=True)
    slots = submit(
        store,
        call,
        local,
        at.timestamp(),
        dry_run=True,
        all_checks=True,
        concurrency_timeout_s=concurrency_timeout_s,
    )
    try:
        results = await wait_all(slots, EXPLAIN_TIMEOUT_S, timers=timers)
    except TimeoutError as e:
        raise StoreError("explain: store did not answer within 5 s") from e
    explained = await _explained(store, call, local, at, results, verdict(local, results, True))
    return finish(call, local, explained, cfg, all_checks=True)


async def _explained(
    store: AdmissionStore,
    call: CallAttempt,
    local: LocalVerdict,
    at: datetime,
    results: Mapping[str, Any],
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
    stored = await store.get_consent(token) if token else None
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
        await store.get_dnc(local.callee),
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
