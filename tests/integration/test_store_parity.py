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
from policy.model import DEFAULT_PURPOSES, Consent, DncEntry, Enterprise
from policy.rules.consent import check_consent, check_dnc
from policy.rules.purpose import normalize_purpose
from policy.store import PolicyStore, day_key, total_day_key
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
    purposes: tuple[str, ...] = DEFAULT_PURPOSES  # ent-a's granted purposes
    expect: str | None = None  # when set, the consent reason both must give ("" = pass)


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
    # The effective purpose (declared, else the consent's): never marketing, one of
    # the enterprise's purposes (R1/R6). The first case is the hole this closes.
    Case(
        "marketing consent, no declared purpose",
        consent={"purpose": "marketing"},
        expect="purpose_marketing",
    ),
    Case(
        "marketing consent in capitals",
        consent={"purpose": " MARKETING"},
        expect="purpose_marketing",
    ),
    Case(
        "marketing consent, declared callback",
        consent={"purpose": "marketing"},
        purpose="callback",
        expect="purpose_not_allowed",
    ),
    Case(
        "marketing consent, declared marketing",
        consent={"purpose": "marketing"},
        purpose="marketing",
        expect="purpose_marketing",
    ),
    Case(
        "marketing consent, enterprise lists marketing",
        consent={"purpose": "marketing"},
        purpose=None,
        purposes=("callback", "marketing"),
        expect="purpose_marketing",
    ),
    Case(
        "marketing consent beats revocation and expiry",
        consent={
            "purpose": "marketing",
            "granted_at": NOON - 3 * H,
            "expires_at": NOON - H,
            "revoked_at": NOON - 2 * H,
        },
        expect="purpose_marketing",
    ),
    Case(
        "marketing consent of another enterprise",
        consent={"purpose": "marketing", "enterprise_id": "ent-b"},
        expect="consent_other_enterprise",
    ),
    Case(
        "marketing consent, no token",
        consent={"purpose": "marketing"},
        token=None,
        expect="consent_missing",
    ),
    Case(
        "marketing consent, dnc commercial",
        consent={"purpose": "marketing"},
        dnc="commercial",
        expect="purpose_marketing",
    ),
    Case(
        "consent purpose not granted to the enterprise",
        consent={"purpose": "survey"},
        expect="purpose_not_allowed",
    ),
    Case(
        "consultation consent, enterprise grants callback only",
        consent={"purpose": "consultation"},
        purposes=("callback",),
        expect="purpose_not_allowed",
    ),
    Case(
        "consultation consent, enterprise grant in capitals",
        consent={"purpose": "consultation"},
        purposes=(" Consultation ",),
        expect="",
    ),
    Case(
        "consultation consent, no declared purpose", consent={"purpose": "consultation"}, expect=""
    ),
    Case(
        "declared purpose not granted, same as consent's",
        consent={"purpose": "survey"},
        purpose="survey",
        expect="purpose_not_allowed",
    ),
    Case("enterprise grants nothing", purposes=(), expect="purpose_not_allowed"),
    Case("empty consent purpose", consent={"purpose": ""}, expect="purpose_not_allowed"),
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
        allowed_purposes=case.purposes,
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
            assert await store.set_consent_used(T, case.used)
    if case.dnc:
        await store.dnc_add(DncEntry(number=case.callee, scope=case.dnc))  # type: ignore[arg-type]
    if case.purposes != DEFAULT_PURPOSES:
        await _grant_purposes(store, case.purposes)
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
    if case.expect is not None:
        assert (lua["consent"].reason or "") == case.expect


async def _grant_purposes(store: PolicyStore, purposes: tuple[str, ...]) -> None:
    ent = Enterprise(enterprise_id="ent-a", name="A", purposes=purposes)
    await store.put_records("enterprises", [ent])


@pytest.mark.parametrize(
    ("overrides", "purposes", "reason"),
    [
        ({"purpose": "marketing"}, DEFAULT_PURPOSES, "purpose_marketing"),
        ({"purpose": "survey"}, DEFAULT_PURPOSES, "purpose_not_allowed"),
        ({"purpose": "consultation"}, ("callback",), "purpose_not_allowed"),
    ],
)
async def test_purpose_rejection_counts_nothing(
    overrides: dict[str, Any],
    purposes: tuple[str, ...],
    reason: str,
    store: PolicyStore,
    make_engine: EngineFactory,
) -> None:
    """A consent whose purpose the call may not have is refused by the script itself.

    SPEC §5: a rejected call consumes no quota, so the script must not count it
    (no refund needed): neither the daily counters nor the consent's ``used``.
    """
    await store.grant_consent(_consent(overrides))
    if purposes != DEFAULT_PURPOSES:
        await _grant_purposes(store, purposes)
    e = await make_engine()
    c = call(consent_token=T)
    d = await e.admit(c)
    assert (d.admit, d.reason, d.sip_code) == (False, reason, 608)
    assert [x.name for x in d.checks][-1] == "purpose"
    assert e.stats["refunds"] == 0, "the script itself must not have counted"
    day = NOON.strftime("%Y%m%d")
    assert await store.client.get(day_key(CALLEE, "ent-a", day)) is None
    assert await store.client.get(total_day_key(CALLEE, day)) is None
    assert await store.consent_used(T) == 0
    # A retransmission replays the stored decision, still counting nothing.
    again = await e.admit(c)
    assert again.reason == reason
    assert await store.consent_used(T) == 0
