"""evaluate_local / finish / explain: SPEC §5 order, fail-open, response codes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from policy.decision import Check, Decision, ResponseMap
from policy.model import CallAttempt, DncEntry, Enterprise, QuietHours
from policy.rules import (
    CAP_NAMES,
    LocalVerdict,
    RefData,
    RuleConfig,
    StoreVerdict,
    evaluate_local,
    explain,
    finish,
    reference_store_verdict,
)
from tests.unit.policy._fixtures import (
    CALLEE,
    NOON,
    REF,
    TOKEN,
    at,
    call,
    consent,
    enterprises,
    filings,
    trunks,
)

CFG = RuleConfig()
NIGHT = at(2026, 3, 10, 23, 30)


def _store(local: LocalVerdict, c: CallAttempt, now: Any = NOON, **kw: Any) -> StoreVerdict:
    kw.setdefault("consent", consent())
    return reference_store_verdict(local, c, now, **kw)


def decide(
    c: CallAttempt, now: Any = NOON, cfg: RuleConfig = CFG, ref: RefData = REF, **store_kw: Any
) -> Decision:
    local = evaluate_local(c, ref, now, cfg)
    if local.failed is not None:
        return finish(c, local, None, cfg)
    return finish(c, local, _store(local, c, now, **store_kw), cfg)


def test_good_call_is_admitted() -> None:
    d = decide(call())
    assert (d.admit, d.reason, d.sip_code, d.retry_after) == (True, "admitted", 0, None)
    assert (d.trunk_id, d.enterprise_id, d.caller, d.callee) == (
        "t-a",
        "ent-a",
        "+861058001234",
        CALLEE,
    )
    assert (d.consent_token, d.evidence_ref, d.fail_open) == (TOKEN, "ev-1", False)
    names = [ch.name for ch in d.checks]
    assert names == [
        "trunk",
        "callee",
        "caller_id",
        "filing",
        "purpose",
        "consent",
        "dnc",
        "quiet_hours",
        *CAP_NAMES,
    ]
    assert all(ch.outcome == "pass" for ch in d.checks)


def test_local_verdict_fields() -> None:
    local = evaluate_local(call(callee="+1 212 555 1234"), REF, NOON, CFG)
    assert local.failed is None
    assert (local.caller, local.callee, local.callee_tz) == (
        "+861058001234",
        "+12125551234",
        "America/New_York",
    )
    # 11:00 Shanghai = 23:00 EDT the day before in New York.
    local = evaluate_local(call(callee="+1 212 555 1234"), REF, at(2026, 3, 10, 11, 0), CFG)
    assert (local.day, local.day_ttl) == ("20260309", 1 * 3600)
    assert local.quiet.reason == "quiet_hours" and local.quiet.retry_after == 9 * 3600
    assert local.limits.trunk_max_cps == 10
    assert [c.name for c in local.checks] == ["trunk", "callee", "caller_id", "filing", "purpose"]


@pytest.mark.parametrize(
    ("kw", "reason", "code"),
    [
        ({"source_ip": "10.0.0.1"}, "unknown_source", 0),
        ({"source_ip": "198.51.100.20"}, "trunk_suspended", 403),
        ({"source_ip": "198.51.100.30"}, "enterprise_suspended", 403),
        ({"source_ip": "198.51.100.40"}, "enterprise_blacklisted", 403),
        ({"callee": "alice"}, "callee_invalid", 404),
        ({"callee": None}, "callee_invalid", 404),
        ({"from_user": None}, "caller_missing", 433),
        ({"privacy_id": True}, "caller_anonymous", 433),
        ({"pai_user": "95588"}, "caller_identity_mismatch", 403),
        ({"from_user": "13900139000"}, "caller_subscriber_number", 403),
        ({"from_user": "95599"}, "caller_not_filed", 403),
        ({"from_user": "955881"}, "caller_length_altered", 403),
        ({"from_user": "01058008888"}, "caller_filing_inactive", 403),
        ({"from_user": "01058009999"}, "caller_outbound_disabled", 403),
        ({"from_user": "01058007777"}, "caller_not_owned", 403),
        ({"purpose": "marketing"}, "purpose_marketing", 608),
        ({"purpose": "survey"}, "purpose_not_allowed", 608),
        ({"consent_token": None}, "consent_missing", 608),
    ],
)
def test_each_local_reason_end_to_end(kw: dict[str, Any], reason: str, code: int) -> None:
    d = decide(call(**kw))
    assert (d.admit, d.reason, d.sip_code) == (False, reason, code)
    assert d.checks[-1].reason == reason


def test_licence_expired_end_to_end() -> None:
    d = decide(call(source_ip="198.51.100.60"), at(2026, 3, 11, 9, 0))
    assert (d.reason, d.sip_code) == ("licence_expired", 403)


@pytest.mark.parametrize(
    ("store_kw", "reason"),
    [
        ({"consent": None}, "consent_unknown"),
        ({"consent": None, "token_callee": "+8613900139000"}, "consent_other_callee"),
        ({"consent": consent(enterprise_id="ent-b")}, "consent_other_enterprise"),
        ({"consent": consent(revoked_at=NOON)}, "consent_revoked"),
        ({"consent": consent(expires_at=NOON)}, "consent_expired"),
        ({"consent": consent(max_calls=2), "used": 2}, "consent_exhausted"),
        ({"dnc": DncEntry(number=CALLEE, scope="all")}, "callee_dnc"),
    ],
)
def test_store_consent_family(store_kw: dict[str, Any], reason: str) -> None:
    d = decide(call(), **store_kw)
    assert (d.admit, d.reason, d.sip_code, d.retry_after) == (False, reason, 608, None)


# --- effective purpose: no X-Call-Purpose means the consent's purpose governs (R1) ------------


@pytest.mark.parametrize(
    ("consent_purpose", "reason"),
    [("marketing", "purpose_marketing"), ("survey", "purpose_not_allowed")],
)
def test_consent_purpose_decides_without_declared_purpose(
    consent_purpose: str, reason: str
) -> None:
    d = decide(call(), consent=consent(purpose=consent_purpose))
    assert (d.admit, d.reason, d.sip_code) == (False, reason, 608)
    assert d.checks[-1].name == "purpose"  # reported under the purpose check (SPEC order)
    assert d.checks[-1].reason == reason


def test_consent_purpose_must_be_one_of_the_enterprise_purposes() -> None:
    # ent-b grants only "callback": a consultation consent is refused for it ...
    c = call(source_ip="198.51.100.10", from_user="01058007777")
    d = decide(c, consent=consent(enterprise_id="ent-b", purpose="consultation"))
    assert (d.reason, d.sip_code) == ("purpose_not_allowed", 608)
    # ... and admitted for ent-a, which grants the default purposes.
    assert decide(call(), consent=consent(purpose="consultation")).admit


def test_effective_purpose_is_shown_when_admitted() -> None:
    d = decide(call())
    purpose = next(x for x in d.checks if x.name == "purpose")
    assert purpose.outcome == "pass" and "callback" in purpose.detail


def test_purpose_from_consent_beats_dnc_quiet_hours_and_caps() -> None:
    d = decide(
        call(),
        NIGHT,
        consent=consent(purpose="marketing"),
        dnc=DncEntry(number=CALLEE, scope="all"),
        counts={"callee_daily_cap": 99},
    )
    assert d.reason == "purpose_marketing"


def test_marketing_consent_with_declared_other_purpose_is_a_mismatch() -> None:
    d = decide(call(purpose="callback"), consent=consent(purpose="marketing"))
    assert d.reason == "purpose_not_allowed"


def test_explain_marketing_consent_fails_purpose_and_consent() -> None:
    c = call()
    local = evaluate_local(c, REF, NOON, CFG, all_checks=True)
    store = reference_store_verdict(local, c, NOON, consent=consent(purpose="marketing"))
    d = finish(c, local, store, CFG, all_checks=True)
    by_name = {x.name: x for x in d.checks}
    assert d.reason == "purpose_marketing"
    assert (by_name["purpose"].outcome, by_name["purpose"].reason) == ("fail", "purpose_marketing")
    assert by_name["consent"].reason == "purpose_marketing"


def test_fail_open_cannot_know_the_consent_purpose() -> None:
    local = evaluate_local(call(), REF, NOON, CFG)
    d = finish(call(), local, None, CFG)
    purpose = next(x for x in d.checks if x.name == "purpose")
    assert d.admit and purpose.outcome == "pass"


def test_dnc_commercial_allows_consented_callback() -> None:
    assert decide(call(), dnc=DncEntry(number=CALLEE, scope="commercial")).admit
    d = decide(
        call(),
        consent=consent(purpose="consultation"),
        dnc=DncEntry(number=CALLEE, scope="commercial"),
    )
    assert d.reason == "callee_dnc"


@pytest.mark.parametrize(
    ("name", "retry"),
    [
        ("callee_daily_cap", 12 * 3600),
        ("callee_total_daily_cap", 12 * 3600),
        ("caller_rate", 1),
        ("trunk_rate", 1),
        ("trunk_concurrent", 1),
    ],
)
def test_caps_end_to_end(name: str, retry: int) -> None:
    cfg = RuleConfig(
        caps=RuleConfig().caps.model_copy(update={"callee_total_daily": 4, "caller_per_second": 1})
    )
    trunk_ref = RefData.build([replace_trunk(t) for t in trunks()], enterprises(), filings())
    d = decide(call(), cfg=cfg, ref=trunk_ref, counts={name: 10})
    assert (d.admit, d.reason, d.sip_code, d.retry_after) == (False, name, 603, retry)


def replace_trunk(t: Any) -> Any:
    return t.model_copy(update={"max_concurrent": 2}) if t.trunk_id == "t-a" else t


def test_caps_under_limit_admit() -> None:
    assert decide(call(), counts={"callee_daily_cap": 2}).admit
    assert decide(call(), counts={"callee_daily_cap": 3}).reason == "callee_daily_cap"


def test_quiet_hours_end_to_end() -> None:
    d = decide(call(), NIGHT)
    assert (d.admit, d.reason, d.sip_code, d.retry_after) == (
        False,
        "quiet_hours",
        603,
        8 * 3600 + 30 * 60,
    )


def test_enterprise_quiet_hours_replace_the_default() -> None:
    ents = [
        e.model_copy(update={"quiet_hours": QuietHours.parse("12:00-13:30")})
        if e.enterprise_id == "ent-a"
        else e
        for e in enterprises()
    ]
    ref = RefData.build(trunks(), ents, filings())
    assert decide(call(), NIGHT, ref=ref).admit
    d = decide(call(), at(2026, 3, 10, 12, 0), ref=ref)
    assert (d.reason, d.retry_after) == ("quiet_hours", 5400)
    none = [e.model_copy(update={"quiet_hours": QuietHours.parse("none")}) for e in enterprises()]
    assert decide(call(), NIGHT, ref=RefData.build(trunks(), none, filings())).admit


# --- order: a call failing two checks reports the earlier one -----------------------------


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"source_ip": "198.51.100.20", "privacy_id": True}, "trunk_suspended"),
        ({"privacy_id": True, "from_user": "95599"}, "caller_anonymous"),
        ({"from_user": "95599", "purpose": "marketing"}, "caller_not_filed"),
        ({"purpose": "marketing", "consent_token": None}, "purpose_marketing"),
    ],
)
def test_earlier_local_check_wins(kw: dict[str, Any], reason: str) -> None:
    assert decide(call(**kw), NIGHT).reason == reason


def test_consent_before_dnc_before_quiet_before_caps() -> None:
    dnc = DncEntry(number=CALLEE, scope="all")
    full = {"callee_daily_cap": 99}
    assert decide(call(), NIGHT, consent=None, dnc=dnc, counts=full).reason == "consent_unknown"
    assert decide(call(), NIGHT, dnc=dnc, counts=full).reason == "callee_dnc"
    assert decide(call(), NIGHT, counts=full).reason == "quiet_hours"
    assert decide(call(), NOON, counts=full).reason == "callee_daily_cap"


def test_rejection_carries_checks_up_to_the_decision() -> None:
    d = decide(call(), NOON, consent=None)
    assert [c.name for c in d.checks][-1] == "consent"


# --- fail-open -------------------------------------------------------------------------------


def test_fail_open_admits_with_store_checks_skipped() -> None:
    local = evaluate_local(call(), REF, NOON, CFG)
    d = finish(call(), local, None, CFG)
    assert (d.admit, d.fail_open) == (True, True)
    skipped = {c.name for c in d.checks if c.outcome == "skip"}
    assert skipped == {"consent", "dnc", *CAP_NAMES}


def test_fail_open_still_rejects_quiet_hours_and_local_checks() -> None:
    local = evaluate_local(call(), REF, NIGHT, CFG)
    d = finish(call(), local, None, CFG)
    assert (d.admit, d.reason, d.fail_open, d.retry_after) == (False, "quiet_hours", False, 30600)
    local = evaluate_local(call(from_user="95599"), REF, NOON, CFG)
    assert finish(call(from_user="95599"), local, None, CFG).reason == "caller_not_filed"


def test_short_store_caps_are_padded_as_skipped() -> None:
    c = call()
    local = evaluate_local(c, REF, NOON, CFG)
    store = StoreVerdict(consent=Check("consent", "pass"), dnc=Check("dnc", "pass"), caps=())
    d = finish(c, local, store, CFG)
    assert d.admit and [x.outcome for x in d.checks[-5:]] == ["skip"] * 5


# --- response codes ---------------------------------------------------------------------------


def test_consent_family_code_is_configurable() -> None:
    cfg = RuleConfig(responses=ResponseMap(consent_code=603))
    assert decide(call(purpose="marketing"), cfg=cfg).sip_code == 603
    assert decide(call(), cfg=cfg, consent=None).sip_code == 603
    assert decide(call(), cfg=cfg, dnc=DncEntry(number=CALLEE)).sip_code == 603


def test_time_family_code_is_configurable() -> None:
    cfg = RuleConfig(responses=ResponseMap(time_code=480))
    assert decide(call(), NIGHT, cfg=cfg).sip_code == 480
    assert decide(call(), cfg=cfg, counts={"callee_daily_cap": 3}).sip_code == 480


def test_unknown_source_code_is_configurable() -> None:
    cfg = RuleConfig(responses=ResponseMap(unknown_source_code=403))
    assert decide(call(source_ip="10.0.0.1"), cfg=cfg).sip_code == 403


def test_stir_shaken_require_end_to_end() -> None:
    cfg = RuleConfig(stir_shaken="require")
    d = decide(call(), cfg=cfg)
    assert (d.reason, d.sip_code) == ("identity_missing", 428)
    d = decide(call(identity="x.y"), cfg=cfg)
    assert (d.reason, d.sip_code) == ("identity_invalid", 438)


# --- explain ----------------------------------------------------------------------------------


def test_explain_shows_every_check_even_after_a_failure() -> None:
    c = call(source_ip="10.0.0.1", from_user="95599", purpose="marketing")
    d = explain(c, REF, NIGHT, CFG)
    by_name = {x.name: x for x in d.checks}
    assert d.reason == "unknown_source"
    assert list(by_name) == [
        "trunk",
        "callee",
        "caller_id",
        "filing",
        "purpose",
        "consent",
        "dnc",
        "quiet_hours",
        *CAP_NAMES,
    ]
    assert by_name["filing"].reason == "caller_not_filed"
    assert by_name["purpose"].outcome == "skip"  # no enterprise without a trunk
    assert by_name["quiet_hours"].reason == "quiet_hours"


def test_explain_with_store_verdict_lists_all_failures() -> None:
    c = call(purpose="marketing")
    local = evaluate_local(c, REF, NIGHT, CFG, all_checks=True)
    store = reference_store_verdict(local, c, NIGHT, consent=None, dnc=DncEntry(number=CALLEE))
    d = finish(c, local, store, CFG, all_checks=True)
    failed = [x.reason for x in d.checks if x.outcome == "fail"]
    assert d.reason == "purpose_marketing"
    assert failed == ["purpose_marketing", "consent_unknown", "callee_dnc", "quiet_hours"]


def test_local_failure_skips_quiet_computation_but_not_the_day() -> None:
    local = evaluate_local(call(source_ip="10.0.0.1"), REF, NIGHT, CFG)
    assert local.failed is not None and local.failed.reason == "unknown_source"
    assert local.quiet.outcome == "skip"
    assert local.day == "20260310"


def test_reference_verdict_stops_counting_at_first_refused_cap() -> None:
    cfg = RuleConfig(caps=RuleConfig().caps.model_copy(update={"caller_per_second": 1}))
    c = call()
    local = evaluate_local(c, REF, NOON, cfg)
    store = reference_store_verdict(
        local, c, NOON, consent=consent(), counts={"callee_daily_cap": 3, "caller_rate": 5}
    )
    assert [x.outcome for x in store.caps] == ["fail", "skip", "skip", "skip", "skip"]
    assert store.evidence_ref == "ev-1" and store.consent_purpose == "callback"


def test_enterprise_daily_cap_override() -> None:
    ent_b = Enterprise(enterprise_id="ent-a", callee_daily_cap=1)
    ref = RefData.build(trunks(), [ent_b], filings())
    assert decide(call(), ref=ref, counts={"callee_daily_cap": 1}).reason == "callee_daily_cap"


def test_rule_config_is_hashable_and_immutable() -> None:
    assert hash(RuleConfig()) == hash(RuleConfig())
    with pytest.raises(AttributeError):
        RuleConfig().region = "US"  # type: ignore[misc]
    assert replace(CFG, region="US").region == "US"
