"""Complaint intake (R12): find the call, name the enterprise, withdraw its consent, count, suspend.

Shared by ``POST /v1/complaints`` and ``cag policy complaint add`` so both
act identically. The steps, in order:

1. trace: the audit records of calls from ``caller`` to ``callee`` in the
   72 h before ``reported_at`` (``provisioning.trace``);
2. responsible enterprise: the one of the latest admitted call among them
   (else the latest traced call; else the enterprise the caller number is
   filed to — a complaint about a call the gateway never saw still names
   who holds the number);
3. the consent evidence that enterprise relied on: the tokens in its traced
   records; each still-valid one of them for this callee is revoked
   (``consent_withdrawn``) — effective on the next INVITE;
4. the complaint is stored and counted in the enterprise's rolling 30 days;
   over its ``complaint_threshold`` an active enterprise is suspended with
   cause ``complaints`` (``enterprise_suspended``).

Each action is recorded in the audit trail as a change by ``actor``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from gateway.audit.record import Entry
from policy.model import Enterprise, NumberFiling
from policy.numbers import normalize_number
from policy.store import PolicyStore
from provisioning.changes import ChangeLog
from provisioning.store import WINDOW_DAYS, ApiStore

log = logging.getLogger("cag.api.complaints")

SUSPEND_CAUSE = "complaints"
CHANNELS = ("12321", "carrier")

# (callers, callees, reported_at) -> decision rows; blocking code is run in a thread by the caller.
Tracer = Callable[[frozenset[str], frozenset[str], datetime], Awaitable[list[Entry]]]


def channel_label(channel: str) -> str:
    """A bounded metrics label: the two named channels, else ``other``."""
    return channel if channel in CHANNELS else "other"


def spellings(number: str, region: str) -> frozenset[str]:
    """Forms a number may have in audit records (normalised by the engine; raw when it could not)."""
    norm = normalize_number(number, region)
    return frozenset(x for x in (number, norm) if x)


def responsible(rows: list[Entry], filed_to: str | None) -> tuple[str | None, str]:
    """(enterprise, how it was found) from the traced rows, newest admitted call first."""
    with_ent = [r for r in rows if r.get("enterprise_id")]
    admitted = [r for r in with_ent if r.get("decision") in ("admit", "would_reject")]
    for pool, how in ((admitted, "admitted_call"), (with_ent, "traced_call")):
        if pool:
            return str(pool[-1]["enterprise_id"]), how
    if filed_to:
        return filed_to, "number_filing"
    return None, "not_found"


def _record_view(r: Entry) -> dict[str, Any]:
    return {
        "record_id": r.get("record_id"),
        "time": r.get("time"),
        "call_id": r.get("call_id"),
        "enterprise_id": r.get("enterprise_id"),
        "decision": r.get("decision"),
        "reason": r.get("reason"),
        "consent_token": r.get("consent_token"),
        "evidence_ref": r.get("evidence_ref"),
    }


async def file_complaint(
    policy: PolicyStore,
    api: ApiStore,
    changes: ChangeLog,
    trace: Tracer,
    *,
    callee: str,
    caller: str,
    reported_at: datetime,
    channel: str,
    ref: str,
    actor: str,
    region: str,
    default_threshold: int,
    now: datetime | None = None,
    on_suspended: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Take one complaint through every step; returns the API's 201 body."""
    now = now or datetime.now(UTC)
    callee_n = normalize_number(callee, region) or callee
    caller_n = normalize_number(caller, region) or caller
    rows = await trace(spellings(caller, region), spellings(callee, region), reported_at)
    # One filing and the small kinds: never the whole filings hash (a million of them at a carrier).
    _, enterprises, _, _ = await policy.load_ref_small()
    ents: dict[str, Enterprise] = {e.enterprise_id: e for e in enterprises}
    got = await policy.get_ref("filings", caller_n)
    filing = got if isinstance(got, NumberFiling) else None
    ent_id, how = responsible(rows, filing.enterprise_id if filing else None)

    actions: list[str] = []  # SPEC §10 names: consent_withdrawn, enterprise_suspended
    withdrawn: list[str] = []
    evidence: list[dict[str, Any]] = []
    if ent_id:
        tokens = list(dict.fromkeys(
            str(r["consent_token"]) for r in rows if r.get("enterprise_id") == ent_id and r.get("consent_token")
        ))
        for token in tokens:
            consent = await policy.get_consent(token)
            if consent is None:
                continue
            evidence.append({"token": token, "evidence_ref": consent.evidence_ref, "purpose": consent.purpose,
                             "granted_at": consent.granted_at.isoformat()})
            if consent.enterprise_id != ent_id or consent.callee != callee_n or consent.revoked_at is not None:
                continue
            if await policy.revoke_consent(token, now):
                withdrawn.append(token)
                await changes.record(actor, "consent_withdrawn", enterprise_id=ent_id, callee=callee_n,
                                     consent_token=token, evidence_ref=consent.evidence_ref)

    complaint_id = f"cmp-{uuid.uuid4().hex[:16]}"
    complaint: dict[str, Any] = {
        "complaint_id": complaint_id,
        "callee": callee_n,
        "caller": caller_n,
        "reported_at": reported_at.isoformat(),
        "channel": channel,
        "ref": ref,
        "filed_at": now.isoformat(),
        "filed_by": actor,
        "enterprise_id": ent_id,
        "traced_by": how,
        "records": [_record_view(r) for r in rows],
        "evidence": evidence,
        "actions": [],  # completed below, then stored again
        "withdrawn_tokens": [],
    }
    count = await api.add_complaint(complaint, filed_at=now, now=now)
    await changes.record(actor, "complaint", enterprise_id=ent_id, caller=caller_n, callee=callee_n)

    threshold = default_threshold
    ent = ents.get(ent_id) if ent_id else None
    if ent is not None and ent.complaint_threshold is not None:
        threshold = ent.complaint_threshold
    if withdrawn:
        actions.append("consent_withdrawn")
    if ent is not None and count > threshold and ent.status == "active":
        if await policy.set_status("enterprise", ent.enterprise_id, "suspended", cause=SUSPEND_CAUSE, at=now):
            actions.append("enterprise_suspended")
            log.warning(
                "enterprise %s suspended: %d complaints in %d days (threshold %d); complaint %s",
                ent.enterprise_id, count, WINDOW_DAYS, threshold, complaint_id,
            )
            await changes.record(actor, "enterprise_suspended", enterprise_id=ent.enterprise_id)
            if on_suspended is not None:
                on_suspended(ent.enterprise_id)
    complaint["actions"] = actions
    complaint["withdrawn_tokens"] = withdrawn
    complaint["complaints_30d"] = count
    complaint["complaint_threshold"] = threshold if ent is not None else None
    if actions:
        await api.add_complaint(complaint, filed_at=now, now=now)  # same id: the record now says what was done
    log.info("complaint %s (%s %s): %s -> %s, %d call(s) traced, actions %s",
             complaint_id, channel, ref, caller_n, callee_n, len(rows), actions)
    return complaint
