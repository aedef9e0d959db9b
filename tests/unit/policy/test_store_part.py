"""What a decision asks the store, and how the answers read as checks (no Redis)."""

from __future__ import annotations

from policy.rules import CAP_NAMES, RuleConfig, evaluate_local
from policy.rules.caps import CapLimits, check_caps
from policy.store_part import verdict
from tests.unit.policy import _fixtures as fx
from tests.unit.policy._fakes import callee_result, rate_result


def test_answers_that_pass_read_as_passing_checks() -> None:
    local = evaluate_local(fx.call(), fx.REF, fx.NOON, RuleConfig())
    v = verdict(
        local, {"callee": callee_result(), "token": fx.CALLEE, "trunk": rate_result()}, False
    )
    assert (v.consent.outcome, v.dnc.outcome) == ("pass", "pass")
    assert [c.outcome for c in v.caps] == ["pass"] * len(CAP_NAMES)
    assert v.evidence_ref == "ev-1" and v.consent_purpose == "callback"


def test_unknown_token_granted_for_another_callee_is_worded_so() -> None:
    local = evaluate_local(fx.call(), fx.REF, fx.NOON, RuleConfig())
    v = verdict(
        local,
        {"callee": callee_result(consent_reason="consent_unknown"), "token": "+8613900000000"},
        False,
    )
    assert v.consent.reason == "consent_other_callee"
    assert v.consent.detail == "token was granted for +8613900000000"


def test_a_cap_not_asked_is_skipped_and_caps_stop_at_the_first_refusal() -> None:
    local = evaluate_local(fx.call(), fx.REF, fx.NOON, RuleConfig())
    # t-a has max_cps 10: without the trunk's answer its rate was not evaluated.
    v = verdict(local, {"callee": callee_result()}, False)
    assert {c.name: c.outcome for c in v.caps}["trunk_rate"] == "skip"
    full = verdict(local, {"callee": callee_result(day_count=3)}, False)
    assert [c.outcome for c in full.caps][:2] == ["fail", "skip"]
    assert full.caps[0].retry_after == local.day_ttl


def test_check_caps_all_checks_evaluates_past_a_refusal() -> None:
    limits = CapLimits(callee_daily=1, caller_per_second=1)
    counts = {"callee_daily_cap": 1, "caller_rate": 5}
    first = check_caps(counts, limits, 600)
    assert [c.outcome for c in first] == ["fail", "skip", "skip", "skip", "skip"]
    every = check_caps(counts, limits, 600, all_checks=True)
    assert [c.outcome for c in every] == ["fail", "skip", "fail", "skip", "skip"]
    assert (every[0].retry_after, every[2].retry_after) == (600, 1)
