"""check_caller_id (R7 true/unaltered/not hidden caller ID, R5 subscriber numbers, STIR/SHAKEN shape)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from policy.rules.caller_id import caller_of, check_caller_id, identity_shape_error
from tests.unit.policy._fixtures import REF, call


def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


HEADER = _b64(
    {"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": "https://cert.example.org/p.cer"}
)
PAYLOAD = _b64(
    {"attest": "A", "dest": {"tn": ["8613800138000"]}, "iat": 1, "orig": {"tn": "861058001234"}}
)
SIG = "c2lnbmF0dXJl_-"
INFO = ";info=<https://cert.example.org/p.cer>"
GOOD = f"{HEADER}.{PAYLOAD}.{SIG}{INFO};alg=ES256;ppt=shaken"


def _check(stir: str = "off", **kw: Any) -> tuple[str, str | None]:
    c = check_caller_id(call(**kw), REF.filings, region="CN", stir_shaken=stir)
    assert c.name == "caller_id"
    return c.outcome, c.reason


def test_filed_caller_passes() -> None:
    assert _check() == ("pass", None)


@pytest.mark.parametrize(
    "kw",
    [
        {"from_user": None},
        {"from_user": ""},
        {"from_user": "  "},
        {"from_user": "alice"},  # not a number: untraceable
        {"pai_user": "bob", "from_user": None},
    ],
)
def test_caller_missing(kw: dict[str, Any]) -> None:
    assert _check(**kw) == ("fail", "caller_missing")


@pytest.mark.parametrize(
    "kw",
    [
        {"anonymous": True},
        {"privacy_id": True},
        {"from_user": "anonymous"},
        {"from_user": "Anonymous"},
        {"pai_user": "ANONYMOUS"},
        {"from_user": "anonymous", "pai_user": "01058001234", "privacy_id": True},
    ],
)
def test_caller_anonymous(kw: dict[str, Any]) -> None:
    assert _check(**kw) == ("fail", "caller_anonymous")


def test_pai_is_the_caller_when_present() -> None:
    c = call(pai_user="95588", from_user=None)
    assert caller_of(c) == "95588"
    assert caller_of(call()) == "+861058001234"


@pytest.mark.parametrize(
    ("pai", "frm"),
    [
        ("13800138000", "+8613800138000"),
        ("+86 10 5800 1234", "01058001234"),
        ("tel:95588", "95588"),
    ],
)
def test_same_number_in_two_formats_is_no_mismatch(pai: str, frm: str) -> None:
    c = check_caller_id(call(pai_user=pai, from_user=frm), REF.filings)
    assert c.reason != "caller_identity_mismatch"


@pytest.mark.parametrize(("pai", "frm"), [("01058001234", "95588"), ("01058001234", "alice")])
def test_pai_from_mismatch(pai: str, frm: str) -> None:
    assert _check(pai_user=pai, from_user=frm) == ("fail", "caller_identity_mismatch")


@pytest.mark.parametrize(
    "number", ["13800138000", "+8613900139000", "010-58001111", "+12125551234"]
)
def test_unfiled_subscriber_number(number: str) -> None:
    assert _check(from_user=number) == ("fail", "caller_subscriber_number")


def test_filed_subscriber_number_is_left_to_the_filing_check() -> None:
    # +861058007777 is a fixed line filed (to ent-b): caller_id passes, filing decides.
    assert _check(from_user="01058007777") == ("pass", None)


def test_unfiled_access_number_is_left_to_the_filing_check() -> None:
    assert _check(from_user="95599") == ("pass", None)


def test_stir_shaken_off_ignores_identity() -> None:
    assert _check("off", identity=None) == ("pass", None)
    assert _check("off", identity="garbage") == ("pass", None)


def test_stir_shaken_require() -> None:
    assert _check("require", identity=None) == ("fail", "identity_missing")
    assert _check("require", identity="") == ("fail", "identity_missing")
    assert _check("require", identity=GOOD) == ("pass", None)
    assert _check("require", identity="garbage") == ("fail", "identity_invalid")


def test_identity_shape() -> None:
    assert identity_shape_error(GOOD) is None
    # compact form (empty payload), alg/ppt parameters defaulted
    assert identity_shape_error(f"{HEADER}..{SIG}{INFO}") is None
    bad = {
        "two parts": f"{HEADER}.{SIG}{INFO}",
        "no info": f"{HEADER}.{PAYLOAD}.{SIG};alg=ES256",
        "wrong alg param": f"{HEADER}.{PAYLOAD}.{SIG}{INFO};alg=RS256",
        "wrong ppt param": f"{HEADER}.{PAYLOAD}.{SIG}{INFO};ppt=div",
        "not base64url": f"{HEADER}.{PAYLOAD}.si+g/{INFO}",
        "header not json": f"bm90anNvbg.{PAYLOAD}.{SIG}{INFO}",
        "header alg": f"{_b64({'alg': 'RS256', 'ppt': 'shaken'})}.{PAYLOAD}.{SIG}{INFO}",
        "header ppt": f"{_b64({'alg': 'ES256', 'ppt': 'div'})}.{PAYLOAD}.{SIG}{INFO}",
    }
    for why, value in bad.items():
        assert identity_shape_error(value) is not None, why


def test_anonymity_reported_before_identity() -> None:
    assert _check("require", privacy_id=True, identity=None) == ("fail", "caller_anonymous")
