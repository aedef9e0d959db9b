"""policy.numbers: normalisation (SPEC §3), kinds (R5) and callee time zones (R8)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policy.numbers import (
    is_access_number,
    is_subscriber_number,
    normalize_number,
    number_kind,
    number_timezone,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("13800138000", "+8613800138000"),
        ("+8613800138000", "+8613800138000"),
        ("8613800138000", "+8613800138000"),
        ("008613800138000", "+8613800138000"),
        ("138 0013 8000", "+8613800138000"),
        ("138-0013-8000", "+8613800138000"),
        ("(010) 5800.1234", "+861058001234"),
        ("010-58001234", "+861058001234"),
        ("tel:+86-138-0013-8000", "+8613800138000"),
        ("+8613800138000;phone-context=example.com", "+8613800138000"),
        ("+1 212 555 1234", "+12125551234"),
        ("+44 20 7123 4567", "+442071234567"),
    ],
)
def test_ordinary_numbers_become_e164(raw: str, expected: str) -> None:
    assert normalize_number(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("95588", "95588"),  # bank 95 number
        ("9558", "9558"),  # ≤ 6 digits: kept
        ("95105888", "95105888"),  # 8-digit 95 number
        ("96123", "96123"),
        ("400-123-4567", "4001234567"),
        ("800 123 4567", "8001234567"),
        ("10086", "10086"),  # service code
        ("+8695588", "95588"),  # access number with country code: back to its exact digits
        ("+864001234567", "4001234567"),
        ("04001234567", "4001234567"),
    ],
)
def test_access_numbers_are_kept_exact(raw: str, expected: str) -> None:
    assert normalize_number(raw) == expected


@pytest.mark.parametrize(
    "raw", [None, "", "   ", "anonymous", "Anonymous", "alice", "+", "12ab34", "\uff11\uff13\uff18"]
)
def test_non_numbers_are_none(raw: str | None) -> None:
    assert normalize_number(raw) is None


def test_unparseable_number_kept_as_digits() -> None:
    # Too long for any plan: phonenumbers refuses it, exact matching still works.
    assert normalize_number("+" + "1" * 20) == "+" + "1" * 20


@pytest.mark.parametrize("raw", ["1259301058001234", "+861795113800138000", "1795113800138000"])
def test_carrier_prefix_is_not_stripped(raw: str) -> None:
    """R4: a carrier-selection prefix in front of a filed number must not vanish into a match."""
    assert normalize_number(raw) == raw


def test_access_number_rule_bounds() -> None:
    assert is_access_number("95588")
    assert is_access_number("123456")
    assert not is_access_number("959999999")  # 9 digits: not a 95 number
    assert not is_access_number("40012345678")  # 11 digits: not a 400 number
    assert not is_access_number("4101234567")


@given(
    st.text(alphabet="0123456789 +-().", max_size=20)
    | st.from_regex(r"\+?(86|0086|00|1|44|0)?[0-9]{1,16}", fullmatch=True)
)
def test_normalisation_is_idempotent(raw: str) -> None:
    """Stored numbers are normalised once and compared with numbers normalised per call."""
    once = normalize_number(raw)
    if once is not None:
        assert normalize_number(once) == once


@pytest.mark.parametrize("raw", ["000000001", "+8600000001", "00000000000"])
def test_leading_zero_nonsense_reaches_a_fixed_point(raw: str) -> None:
    once = normalize_number(raw)
    assert once is not None and normalize_number(once) == once


@pytest.mark.parametrize(
    ("number", "kind"),
    [
        ("95588", "access"),
        ("96123", "access"),
        ("4001234567", "access"),
        ("+8613800138000", "mobile"),
        ("13800138000", "mobile"),
        ("010-58001234", "fixed"),
        ("+12125551234", "fixed_or_mobile"),
        ("+442071234567", "fixed"),
        ("+447911123456", "mobile"),
        ("+448001234567", "toll_free"),
        ("+8612345678901", "invalid"),
        ("anonymous", "invalid"),
    ],
)
def test_number_kind(number: str, kind: str) -> None:
    assert number_kind(number) == kind


def test_subscriber_numbers_are_mobile_and_fixed() -> None:
    assert is_subscriber_number("+8613800138000")
    assert is_subscriber_number("010-58001234")
    assert is_subscriber_number("+12125551234")
    assert not is_subscriber_number("95588")
    assert not is_subscriber_number("4001234567")
    assert not is_subscriber_number("+448001234567")


@pytest.mark.parametrize(
    ("number", "tz"),
    [
        ("+12125551234", "America/New_York"),
        ("+442071234567", "Europe/London"),
        ("+8613800138000", "Asia/Shanghai"),
        ("95588", "Asia/Shanghai"),
        ("+999123", "Asia/Shanghai"),  # unknown country code
        ("+80012345678", "Asia/Shanghai"),  # global number: Etc/Unknown
    ],
)
def test_number_timezone(number: str, tz: str) -> None:
    assert number_timezone(number) == tz


def test_number_timezone_default_is_configurable() -> None:
    assert number_timezone("+8613800138000", "Asia/Urumqi") == "Asia/Urumqi"
