"""Consent and do-not-call (R1: consented callbacks only; R11: DNC and withdrawal honoured).

These run against per-callee state in Redis: the store's server-side script
mirrors ``check_consent`` and ``check_dnc`` exactly (same order, same
reason codes), and these Python versions are the reference it is tested
against and what ``explain`` uses.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from policy.decision import Check
from policy.model import Consent, DncEntry
from policy.rules._util import aware, failed, passed
from policy.rules.purpose import normalize_purpose

CONSENT = "consent"
DNC = "dnc"


def check_consent(
    consent: Consent | None,
    *,
    token: str | None,
    callee: str,
    enterprise_id: str,
    declared_purpose: str | None,
    allowed_purposes: Collection[str],
    used: int,
    now: datetime,
    token_callee: str | None = None,
) -> Check:
    """Does a valid consent token cover this call to this callee by this enterprise (R1)?

    ``consent`` is the record for (callee, token) or None; ``token_callee`` is the
    callee the token was granted for, from the global token index, so a token
    replayed against another number is named as such. ``used`` is the number of
    calls already admitted under the consent. ``allowed_purposes`` are the
    purposes the carrier granted the calling enterprise (``Enterprise.purposes``).

    The call's *effective purpose* is the declared ``X-Call-Purpose`` when
    present, else the consent's purpose. ``check_purpose`` can only judge a
    declared purpose; a call that declares none is judged here, once the
    consent says what the call is for, so a consent recorded for marketing
    cannot be used by leaving the header out (R1).

    Reason codes, checked in this order:
      ``consent_missing``           no token presented (R1)
      ``consent_unknown``           no such token, or not yet valid (``now`` < granted_at)
      ``consent_other_callee``      the token was granted for another callee
      ``consent_other_enterprise``  the token was granted to another enterprise
      ``purpose_not_allowed``       declared purpose differs from the consent's (R1, SPEC §3)
      ``purpose_marketing``         the effective purpose is marketing (R1: never allowed)
      ``purpose_not_allowed``       the effective purpose is not among ``allowed_purposes`` (R6)
      ``consent_revoked``           revoked at or before ``now`` (R11: effective on the next INVITE)
      ``consent_expired``           ``now`` ≥ expires_at (expiring at the call instant is expired)
      ``consent_exhausted``         ``used`` ≥ max_calls
    """
    if not token:
        return failed(CONSENT, "consent_missing", "no consent token")
    if consent is None:
        if token_callee is not None and token_callee != callee:
            return failed(CONSENT, "consent_other_callee", f"token was granted for {token_callee}")
        return failed(CONSENT, "consent_unknown", "unknown consent token")
    if consent.callee != callee:
        return failed(CONSENT, "consent_other_callee", f"token was granted for {consent.callee}")
    if consent.enterprise_id != enterprise_id:
        return failed(
            CONSENT, "consent_other_enterprise", f"token was granted to {consent.enterprise_id}"
        )
    declared = normalize_purpose(declared_purpose)
    granted = normalize_purpose(consent.purpose)
    if declared is not None and declared != granted:
        return failed(
            CONSENT,
            "purpose_not_allowed",
            f"declared purpose {declared!r} != consent purpose {consent.purpose!r}",
        )
    effective = declared if declared is not None else granted
    source = "declared" if declared is not None else "consent's"
    if effective == "marketing":
        return failed(
            CONSENT,
            "purpose_marketing",
            f"{source} purpose is marketing: commercial-marketing outbound is not allowed",
        )
    allowed = {p for p in map(normalize_purpose, allowed_purposes) if p is not None}
    if effective not in allowed:
        return failed(
            CONSENT,
            "purpose_not_allowed",
            f"{source} purpose {effective!r} not among {' '.join(sorted(allowed)) or 'none'}",
        )
    now = aware(now)
    if consent.revoked_at is not None and consent.revoked_at <= now:
        return failed(CONSENT, "consent_revoked", f"revoked {consent.revoked_at.isoformat()}")
    if now < consent.granted_at:
        return failed(
            CONSENT, "consent_unknown", f"not valid before {consent.granted_at.isoformat()}"
        )
    if consent.expires_at is not None and now >= consent.expires_at:
        return failed(CONSENT, "consent_expired", f"expired {consent.expires_at.isoformat()}")
    if consent.max_calls is not None and used >= consent.max_calls:
        return failed(CONSENT, "consent_exhausted", f"{used} of {consent.max_calls} calls used")
    return passed(CONSENT, f"token {consent.token} for {consent.purpose}")


def check_dnc(entry: DncEntry | None, *, consent_ok: bool, consent_purpose: str | None) -> Check:
    """Has the callee registered not to be called (R11 "谢绝来电")?

    Reason code:
      ``callee_dnc``  scope "all"; or scope "commercial" unless the call is a
                      callback the callee consented to (the callee asked for it,
                      so it is not the commercial call they declined)
    """
    if entry is None:
        return passed(DNC, "not registered")
    if (
        entry.scope == "commercial"
        and consent_ok
        and normalize_purpose(consent_purpose) == "callback"
    ):
        return passed(DNC, "commercial-only registration; consented callback")
    return failed(DNC, "callee_dnc", f"callee registered do-not-call ({entry.scope})")
