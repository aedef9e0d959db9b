"""check_purpose (R1 no marketing, R6 per-enterprise purposes)."""

from __future__ import annotations

import pytest

from policy.model import Enterprise
from policy.rules.purpose import check_purpose

ENT = Enterprise(enterprise_id="e", purposes=("callback", "Consultation"))


@pytest.mark.parametrize("declared", ["marketing", "MARKETING", " Marketing "])
def test_marketing_always_rejected(declared: str) -> None:
    everything = Enterprise(enterprise_id="e", purposes=("callback", "marketing"))
    c = check_purpose(declared, everything)
    assert (c.name, c.outcome, c.reason) == ("purpose", "fail", "purpose_marketing")


def test_purpose_outside_enterprise_grant() -> None:
    c = check_purpose("survey", ENT)
    assert (c.outcome, c.reason) == ("fail", "purpose_not_allowed")


@pytest.mark.parametrize("declared", ["callback", "Callback", "consultation"])
def test_granted_purpose_passes(declared: str) -> None:
    assert check_purpose(declared, ENT).outcome == "pass"


@pytest.mark.parametrize("declared", [None, "", "  "])
def test_absent_purpose_passes(declared: str | None) -> None:
    assert check_purpose(declared, ENT).outcome == "pass"
