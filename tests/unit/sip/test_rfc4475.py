"""RFC 4475 torture messages through the parser (``gateway.sip.parse``).

The messages are data (tests/data/rfc4475/*.dat, the exact bytes of the
RFC's archive); ``expected.csv`` beside them says what each must give, with
its section. Here only the ``parse`` column: ``ok`` or the ``SipError``
status; ``-`` rows are decided above the parser (tests/unit/proxy/
test_rfc4475_core.py). docs/interop.md has the whole table.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from gateway.sip import Request, Response, SipError, parse

DATA = Path(__file__).resolve().parents[2] / "data" / "rfc4475"

# Rows whose parser outcome is wrong today: strict, so the fix flips them to XPASS.
XFAIL = {
    "intmeth": "issue 15 finding 6: a NUL inside a quoted string (legal, RFC 4475 §3.1.1.2) is refused",
    "ltgtruri": "RFC 4475 §3.1.2.7 (beyond issue 15's list): a '<sip:...>' Request-URI is refused 416, not 400",
}


def rows() -> list[dict[str, str]]:
    lines = [ln for ln in (DATA / "expected.csv").read_text().splitlines() if ln and not ln.startswith("#")]
    return list(csv.DictReader(lines))


def _cases() -> list[object]:
    out: list[object] = []
    for r in rows():
        if r["parse"] == "-":
            continue
        marks = [pytest.mark.xfail(strict=True, reason=XFAIL[r["name"]])] if r["name"] in XFAIL else []
        out.append(pytest.param(r["name"], r["section"], r["parse"], id=r["name"], marks=marks))
    return out


def test_corpus_is_complete() -> None:
    """49 messages of RFC 4475 §3 (the IPv6 ones of §4 are not in the archive used), one row each."""
    names = {r["name"] for r in rows()}
    files = {p.stem for p in DATA.glob("*.dat")}
    assert names == files
    assert len(names) == 49
    assert all(r["section"].startswith("3.") for r in rows())


@pytest.mark.parametrize(("name", "section", "expected"), _cases())
def test_parse_outcome(name: str, section: str, expected: str) -> None:
    data = (DATA / f"{name}.dat").read_bytes()
    if expected == "ok":
        msg = parse(data)
        assert isinstance(msg, Request | Response), (name, section)
    else:
        with pytest.raises(SipError) as e:
            parse(data)
        assert e.value.status == int(expected), (name, section, str(e.value))


def test_wsinv_reads_through_folding_and_leading_zeros() -> None:
    """§3.1.1.1: folded lines everywhere, CSeq 0009 and an empty Subject are well formed."""
    msg = parse((DATA / "wsinv.dat").read_bytes())
    assert isinstance(msg, Request)
    assert msg.method == "INVITE"
    assert msg.cseq == (9, "INVITE")
    assert msg.get("Subject") == ""
    assert msg.get("Call-ID") == "wsinv.ndaksdj@192.0.2.1"


def test_dblreq_ignores_the_trailing_invite() -> None:
    """§3.1.1.8: the octets after Content-Length (an INVITE) are noise on UDP."""
    msg = parse((DATA / "dblreq.dat").read_bytes())
    assert isinstance(msg, Request)
    assert msg.method == "REGISTER"
    assert msg.body == b""


def test_esc02_method_is_not_register() -> None:
    """§3.1.1.5: '%' in a method is not an escape; RE%47IST%45R is an unknown method."""
    msg = parse((DATA / "esc02.dat").read_bytes())
    assert isinstance(msg, Request)
    assert msg.method == "RE%47IST%45R"


@pytest.mark.parametrize(("name", "status", "phrase"), [("unreason", 200, None), ("noreason", 100, "")])
def test_reason_phrases(name: str, status: int, phrase: str | None) -> None:
    """§3.1.1.12 / §3.1.1.13: an unusual (UTF-8, escapes) and an empty reason phrase."""
    msg = parse((DATA / f"{name}.dat").read_bytes())
    assert isinstance(msg, Response)
    assert msg.status == status
    if phrase is not None:
        assert msg.reason_phrase == phrase


@pytest.mark.xfail(strict=True, reason="issue 15 finding 6: a NUL inside a quoted string is refused")
def test_intmeth_keeps_its_method_and_display_name() -> None:
    """§3.1.1.2: the method is a token of every allowed character; the NUL is in a quoted string."""
    msg = parse((DATA / "intmeth.dat").read_bytes())
    assert isinstance(msg, Request)
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert "\0" in (msg.get("To") or "")


def test_longreq_long_values() -> None:
    """§3.1.1.7: long header values and many Vias are within the limits."""
    msg = parse((DATA / "longreq.dat").read_bytes())
    assert isinstance(msg, Request)
    assert len(msg.vias()) > 10
