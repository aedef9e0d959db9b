"""check_consent (R1 consented calls only, R11 withdrawal) and check_dnc (R11 "谢绝来电")."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from policy.model import Consent, DncEntry
from policy.rules.consent import check_consent, check_dnc
from tests.unit.policy._fixtures import CALLEE, TOKEN, consent

T0 = datetime(2026, 3, 10, 4, 0, tzinfo=UTC)


def _check(c: Consent | None, **kw: Any) -> tuple[str, str | None]:
    args: dict[str, Any] = {
        "token": TOKEN,
        "callee": CALLEE,
        "enterprise_id": "ent-a",
        "declared_purpose": None,
        "allowed_purposes": ("callback", "consultation"),
        "used": 0,
        "now": T0,
    }
    args.update(kw)
    result = check_consent(c, **args)
    assert result.name == "consent"
    return result.outcome, result.reason


def test_valid_consent_passes() -> None:
    assert _check(consent()) == ("pass", None)
    assert _check(consent(), declared_purpose="Callback") == ("pass", None)


@pytest.mark.parametrize("token", [None, ""])
def test_consent_missing(token: str | None) -> None:
    assert _check(consent(), token=token) == ("fail", "consent_missing")
    assert _check(None, token=token) == ("fail", "consent_missing")


def test_consent_unknown() -> None:
    assert _check(None) == ("fail", "consent_unknown")
    assert _check(None, token_callee=CALLEE) == ("fail", "consent_unknown")


def test_token_of_another_callee() -> None:
    assert _check(None, token_callee="+8613900139000") == ("fail", "consent_other_callee")
    assert _check(consent(callee="+8613900139000")) == ("fail", "consent_other_callee")


def test_token_of_another_enterprise() -> None:
    assert _check(consent(enterprise_id="ent-b")) == ("fail", "consent_other_enterprise")


def test_declared_purpose_must_match_consent() -> None:
    assert _check(consent(purpose="callback"), declared_purpose="consultation") == (
        "fail",
        "purpose_not_allowed",
    )


# --- the effective purpose: declared, else the consent's (R1 no marketing, R6 grants) -------


def test_consent_for_marketing_without_declared_purpose_is_refused() -> None:
    """The R1 hole: leaving X-Call-Purpose out must not let a marketing consent through."""
    assert _check(consent(purpose="marketing")) == ("fail", "purpose_marketing")
    assert _check(consent(purpose=" Marketing ")) == ("fail", "purpose_marketing")


def test_marketing_refused_even_when_the_enterprise_lists_it() -> None:
    everything = ("callback", "consultation", "marketing")
    assert _check(consent(purpose="marketing"), allowed_purposes=everything) == (
        "fail",
        "purpose_marketing",
    )
    assert _check(
        consent(purpose="marketing"), declared_purpose="marketing", allowed_purposes=everything
    ) == ("fail", "purpose_marketing")


def test_declared_marketing_against_other_consent_is_a_mismatch() -> None:
    # The local purpose check has already said purpose_marketing for this call.
    assert _check(consent(), declared_purpose="marketing") == ("fail", "purpose_not_allowed")


def test_consent_purpose_outside_the_enterprise_grant() -> None:
    assert _check(consent(purpose="survey")) == ("fail", "purpose_not_allowed")
    assert _check(consent(purpose="consultation"), allowed_purposes=("callback",)) == (
        "fail",
        "purpose_not_allowed",
    )
    assert _check(consent(), allowed_purposes=()) == ("fail", "purpose_not_allowed")


def test_consent_purpose_inside_the_grant_passes() -> None:
    assert _check(consent(purpose="consultation")) == ("pass", None)
    assert _check(consent(purpose="CallBack"), allowed_purposes=(" Callback ",)) == ("pass", None)
    assert _check(consent(purpose="consultation"), declared_purpose="Consultation") == (
        "pass",
        None,
    )


def test_empty_consent_purpose_is_not_allowed() -> None:
    assert _check(consent(purpose="")) == ("fail", "purpose_not_allowed")


def test_purpose_checked_after_enterprise_before_revocation() -> None:
    other = consent(purpose="marketing", enterprise_id="ent-b")
    assert _check(other) == ("fail", "consent_other_enterprise")
    assert _check(consent(purpose="marketing"), token=None) == ("fail", "consent_missing")
    late = consent(purpose="marketing", revoked_at=T0, expires_at=T0, max_calls=1)
    assert _check(late, used=1) == ("fail", "purpose_marketing")
    assert _check(consent(purpose="survey", revoked_at=T0)) == ("fail", "purpose_not_allowed")


def test_revoked_now_or_before() -> None:
    assert _check(consent(revoked_at=T0)) == ("fail", "consent_revoked")
    assert _check(consent(revoked_at=T0 - timedelta(seconds=1))) == ("fail", "consent_revoked")
    assert _check(consent(revoked_at=T0 + timedelta(seconds=1))) == ("pass", None)


def test_not_yet_granted() -> None:
    assert _check(consent(granted_at=T0 + timedelta(seconds=1))) == ("fail", "consent_unknown")
    assert _check(consent(granted_at=T0)) == ("pass", None)


def test_expiring_at_the_call_instant_is_expired() -> None:
    assert _check(consent(expires_at=T0)) == ("fail", "consent_expired")
    assert _check(consent(expires_at=T0 - timedelta(days=1))) == ("fail", "consent_expired")
    assert _check(consent(expires_at=T0 + timedelta(microseconds=1))) == ("pass", None)


def test_max_calls_reached_exactly() -> None:
    assert _check(consent(max_calls=3), used=2) == ("pass", None)
    assert _check(consent(max_calls=3), used=3) == ("fail", "consent_exhausted")
    assert _check(consent(max_calls=None), used=10_000) == ("pass", None)


def test_order_other_callee_before_expired() -> None:
    c = consent(callee="+8613900139000", expires_at=T0)
    assert _check(c) == ("fail", "consent_other_callee")


def test_order_revoked_before_expired_and_exhausted() -> None:
    c = consent(revoked_at=T0, expires_at=T0, max_calls=1)
    assert _check(c, used=1) == ("fail", "consent_revoked")


def test_naive_now_is_utc() -> None:
    assert _check(consent(expires_at=T0), now=T0.replace(tzinfo=None)) == (
        "fail",
        "consent_expired",
    )


def test_no_dnc_entry_passes() -> None:
    c = check_dnc(None, consent_ok=False, consent_purpose=None)
    assert (c.name, c.outcome) == ("dnc", "pass")


@pytest.mark.parametrize(
    ("ok", "purpose"), [(True, "callback"), (False, None), (True, "consultation")]
)
def test_dnc_all_rejects_everything(ok: bool, purpose: str | None) -> None:
    entry = DncEntry(number=CALLEE, scope="all")
    assert check_dnc(entry, consent_ok=ok, consent_purpose=purpose).reason == "callee_dnc"


def test_dnc_commercial_allows_only_consented_callbacks() -> None:
    entry = DncEntry(number=CALLEE, scope="commercial")
    assert check_dnc(entry, consent_ok=True, consent_purpose="callback").outcome == "pass"
    assert check_dnc(entry, consent_ok=False, consent_purpose="callback").reason == "callee_dnc"
    assert check_dnc(entry, consent_ok=True, consent_purpose="consultation").reason == "callee_dnc"
