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
# Empty since issue 15 findings 6 (intmeth) and the §3.1.2.7 gap (ltgtruri) were fixed.
XFAIL: dict[str, str] = {}


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


# ---- around the fixes of issue 15 findings 4-6: what is still refused, what is still accepted

_BASE = (
    b"INVITE sip:13800138000@10.0.0.2 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1\r\n"
    b"From: <sip:1058001234@10.0.0.1>;tag=a\r\n"
    b"To: <sip:13800138000@10.0.0.2>\r\n"
    b"Call-ID: c1\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:1058001234@10.0.0.1>;expires=60\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def test_base_request_parses() -> None:
    assert isinstance(parse(_BASE), Request)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"To: <sip:13800138000@10.0.0.2>", b"To: <sip:13800138000@10.0.0.2>\0"),  # NUL outside quotes
        (b"Call-ID: c1", b"Call-ID: c\x001"),
        (b"branch=z9hG4bK-1", b"branch=z9hG4bK-1;"),  # empty Via parameter
        (b"branch=z9hG4bK-1", b"branch=z9hG4bK-1,"),  # empty Via element
        (b";branch=z9hG4bK-1", b";;branch=z9hG4bK-1"),
        (b";expires=60", b";expires=60;;"),  # empty Contact parameter
        (b"From: <sip:", b'From: "unterminated <sip:'),
        (b"INVITE sip:13800138000@10.0.0.2 ", b"INVITE sip:13800138000@10.0.0.2?Route=%3Csip:x%3E "),
        (b"INVITE sip:13800138000@10.0.0.2 ", b"INVITE sip:10.0.0.2?Subject=hi "),
        (b"INVITE sip:13800138000@10.0.0.2 ", b"INVITE 1sip:13800138000@10.0.0.2 "),  # not a scheme: 400
    ],
)
def test_still_refused_400(old: bytes, new: bytes) -> None:
    data = _BASE.replace(old, new, 1)
    assert data != _BASE
    with pytest.raises(SipError) as e:
        parse(data)
    assert e.value.status == 400, str(e.value)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"To: <sip:", b'To: "a\\\0b" <sip:'),  # NUL as a quoted-pair
        (b"To: <sip:", b'To: "a;;b,,c" <sip:'),  # separators inside a quoted display name
        (b"Contact: <sip:1058001234@10.0.0.1>;expires=60", b"Contact: *"),
        (b"Contact: <sip:1058001234@10.0.0.1>;expires=60", b"Contact: <sip:a@b;lr>, sip:c@d;x=1"),
        (b"branch=z9hG4bK-1", b'branch=z9hG4bK-1;x="a;;b"'),
        (b"INVITE sip:13800138000@10.0.0.2 ", b"INVITE sip:a?b@10.0.0.2 "),  # '?' in the user part is legal
        (b"INVITE sip:13800138000@10.0.0.2 ", b"INVITE tel:+8613800138000 "),
    ],
)
def test_still_accepted(old: bytes, new: bytes) -> None:
    data = _BASE.replace(old, new, 1)
    assert data != _BASE
    assert isinstance(parse(data), Request)


def test_unknown_but_well_formed_scheme_is_still_416() -> None:
    with pytest.raises(SipError) as e:
        parse(_BASE.replace(b"INVITE sip:13800138000@10.0.0.2 ", b"INVITE im:alice@example.com ", 1))
    assert e.value.status == 416


def test_a_broken_contact_in_a_response_is_not_the_parsers_business() -> None:
    """Only requests are checked (answered 400); a response would merely be dropped."""
    resp = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1\r\n"
        b"From: <sip:a@b>;tag=a\r\nTo: <sip:c@d>;tag=b\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n"
        b"Contact: <sip:c@d>;;\r\nContent-Length: 0\r\n\r\n"
    )
    assert isinstance(parse(resp), Response)
