"""Lua/Python parity: cag_admit (dry run, via explain) and check_consent/check_dnc give the same reasons.

The script decides what to count, so it must agree with the Python reference
in policy/rules/consent.py case for case: same order, same reason codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from policy.decision import Check
from policy.model import Consent, DncEntry
from policy.rules.consent import check_consent, check_dnc
from policy.rules.purpose import normalize_purpose
from policy.store import PolicyStore, consent_key
from tests.integration.conftest import CALLEE, NOON, OTHER_CALLEE, EngineFactory, call

pytestmark = pytest.mark.integration

T = "tok-p"
H = timedelta(hours=1)


@dataclass
class Case:
    name: str
    consent: dict[str, Any] | None = field(
        default_factory=dict
    )  # overrides; None: no consent stored
    token: str | None = T
    callee: str = CALLEE  # the callee dialled
    purpose: str | None = None  # declared
    used: int = 0
    dnc: str | None = None  # scope


CASES = [
    Case("valid"),
    Case("no token", token=None),
    Case("empty token", token=""),
    Case("unknown token", consent=None),
    Case("token of another callee", consent={"callee": OTHER_CALLEE}),
    Case("other enterprise", consent={"enterprise_id": "ent-b"}),
    Case("declared purpose differs", purpose="consultation"),
    Case("declared purpose same, other case", purpose=" CallBack "),
    Case(
        "purpose mismatch beats revocation",
        purpose="consultation",
        consent={"revoked_at": NOON - H},
    ),
    Case("revoked before", consent={"revoked_at": NOON - H}),
    Case("revoked exactly now", consent={"revoked_at": NOON}),
    Case("revocation in the future", consent={"revoked_at": NOON + H}),
    Case("not yet valid", consent={"granted_at": NOON + H, "expires_at": NOON + 2 * H}),
    Case("expired", consent={"granted_at": NOON - 2 * H, "expires_at": NOON - H}),
    Case("expires exactly now", consent={"granted_at": NOON - 2 * H, "expires_at": NOON}),
    Case("expires later", consent={"expires_at": NOON + H}),
    Case(
        "revoked and expired",
        consent={"granted_at": NOON - 3 * H, "expires_at": NOON - H, "revoked_at": NOON - 2 * H},
    ),
    Case("exhausted", consent={"max_calls": 2}, used=2),
    Case("one call left", consent={"max_calls": 2}, used=1),
    Case(
        "expired and exhausted",
        consent={"granted_at": NOON - 2 * H, "expires_at": NOON - H, "max_calls": 1},
        used=1,
    ),
    Case("dnc all", dnc="all"),
    Case("dnc all, no consent", consent=None, dnc="all"),
    Case("dnc commercial, consented callback", dnc="commercial"),
    Case(
        "dnc commercial, consented consultation",
        consent={"purpose": "consultation"},
        dnc="commercial",
    ),
    Case(
        "dnc commercial, consent purpose in capitals",
        consent={"purpose": "CALLBACK"},
        dnc="commercial",
    ),
    Case("dnc commercial, consent revoked", consent={"revoked_at": NOON - H}, dnc="commercial"),
    Case("dnc commercial, no token", token=None, dnc="commercial"),
]


def _consent(overrides: dict[str, Any]) -> Consent:
    fields: dict[str, Any] = {
        "token": T,
        "callee": CALLEE,
        "enterprise_id": "ent-a",
        "purpose": "callback",
        "granted_at": datetime(2026, 3, 1, tzinfo=UTC),
        "evidence_ref": "ev-p",
    }
    fields.update(overrides)
    return Consent(**fields)


def _reference(case: Case) -> tuple[Check, Check]:
    """What policy.rules.consent says for this state."""
    stored = _consent(case.consent) if case.consent is not None else None
    record = stored if stored is not None and stored.callee == case.callee else None
    token_callee = stored.callee if stored is not None else None
    c = check_consent(
        record,
        token=case.token,
        callee=case.callee,
        enterprise_id="ent-a",
        declared_purpose=case.purpose,
        used=case.used,
        now=NOON,
        token_callee=token_callee,
    )
    entry = DncEntry(number=case.callee, scope=case.dnc) if case.dnc else None  # type: ignore[arg-type]
    purpose = normalize_purpose(record.purpose) if record is not None else None
    d = check_dnc(entry, consent_ok=c.outcome == "pass", consent_purpose=purpose)
    return c, d


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_lua_matches_python(
    case: Case, store: PolicyStore, make_engine: EngineFactory
) -> None:
    if case.consent is not None:
        stored = _consent(case.consent)
        await store.grant_consent(stored)
        if case.used:
            await store.client.hset(consent_key(stored.callee, T), "used", case.used)
    if case.dnc:
        await store.dnc_add(DncEntry(number=case.callee, scope=case.dnc))  # type: ignore[arg-type]
    e = await make_engine()
    digits = "13900139000" if case.callee == OTHER_CALLEE else "13800138000"
    x = await e.explain(call(consent_token=case.token, callee=digits, purpose=case.purpose), NOON)
    lua = {c.name: c for c in x.checks}
    ref_consent, ref_dnc = _reference(case)
    assert (lua["consent"].outcome, lua["consent"].reason) == (
        ref_consent.outcome,
        ref_consent.reason,
    )
    assert (lua["dnc"].outcome, lua["dnc"].reason) == (ref_dnc.outcome, ref_dnc.reason)
