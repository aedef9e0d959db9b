"""check_filing (R2 outbound, R3 filed/active, R4/R5 ownership and exact length)."""

from __future__ import annotations

import pytest

from policy.model import NumberFiling
from policy.numbers import normalize_number
from policy.rules import RefData
from policy.rules.filing import check_filing
from tests.unit.policy._fixtures import REF


def _filing(raw: str, enterprise: str | None = "ent-a") -> tuple[str, str | None]:
    caller = normalize_number(raw)
    assert caller is not None
    c = check_filing(caller, enterprise, REF)
    assert c.name == "filing"
    return c.outcome, c.reason


@pytest.mark.parametrize(
    "raw", ["010-58001234", "+861058001234", "95588", "400 123 4567", "+864001234567"]
)
def test_filed_outbound_number_passes(raw: str) -> None:
    assert _filing(raw) == ("pass", None)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("+861058001111", "caller_not_filed"),
        ("95599", "caller_not_filed"),
        ("+861058008888", "caller_filing_inactive"),
        ("+861058009999", "caller_outbound_disabled"),
        ("+861058007777", "caller_not_owned"),  # filed to ent-b
        ("96123", "caller_not_owned"),
    ],
)
def test_filing_rejections(raw: str, reason: str) -> None:
    assert _filing(raw) == ("fail", reason)


@pytest.mark.parametrize(
    "raw",
    [
        "955881",  # digit appended to 95588
        "9558",  # digit removed
        "40012345678",  # 400 number with a digit appended (normalises to +86 form)
        "400123456",  # 400 number with a digit removed
        "+8610580012345",  # fixed number with a digit appended
        "+86105800123",  # and removed
    ],
)
def test_length_altered(raw: str) -> None:
    assert _filing(raw) == ("fail", "caller_length_altered")


def test_length_alteration_of_another_enterprises_number_is_not_filed() -> None:
    # 96123 belongs to ent-b: for ent-a, 961234 is simply not filed.
    assert _filing("961234") == ("fail", "caller_not_filed")
    assert _filing("961234", "ent-b") == ("fail", "caller_length_altered")


def test_unknown_enterprise_skips_ownership_and_length_tests() -> None:
    assert _filing("+861058007777", None) == ("pass", None)
    assert _filing("955881", None) == ("fail", "caller_not_filed")


def test_filings_loaded_unnormalised_are_keyed_normalised() -> None:
    ref = RefData.build(
        [], [], [NumberFiling(number="010-5800 1234", enterprise_id="e", outbound=True)]
    )
    assert "+861058001234" in ref.filings
    assert check_filing("+861058001234", "e", ref).outcome == "pass"
