"""Edits change only the lines they touch; everything else is re-emitted byte-for-byte."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sip import Request, SipError, header_params, parse
from gateway.sip.message import _tag_of
from tests.unit._sip_corpus import (
    COMPACT_INVITE,
    REPEATED,
    SIPP_180,
    SIPP_INVITE,
    crlf,
    invite_with,
)

OUR_VIA = "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKcagt0x1;rport"


def lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def test_pop_first_via_from_a_comma_joined_line_rewrites_only_that_line() -> None:
    r = parse(SIPP_180)
    top = r.pop_first_via()
    assert top.branch == "z9hG4bKcagt0x1" and top.received == "10.0.0.5" and top.rport == 5060
    out = r.to_bytes()
    before, after = lines(SIPP_180), lines(out)
    assert after[1] == b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-4242-1-0"
    assert before[0] == after[0] and before[2:] == after[2:]
    assert out.endswith(b"\r\n\r\n")
    assert [v.branch for v in parse(out).vias()] == ["z9hG4bK-4242-1-0"]


def test_pop_first_via_from_separate_lines_removes_the_line() -> None:
    m = parse(REPEATED)
    assert m.pop_first_via().branch == "z9hG4bKb1"
    out = m.to_bytes()
    assert out == REPEATED.replace(b"Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKb1\r\n", b"")
    assert m.pop_first_via().branch == "z9hG4bKb2"
    with pytest.raises(SipError):
        m.pop_first_via()


def test_prepend_via_replace_max_forwards_remove_token() -> None:
    m = parse(SIPP_INVITE)
    assert isinstance(m, Request)
    m.prepend("Record-Route", "<sip:10.0.0.5:5060;lr;cag=x>")
    m.prepend("Via", OUR_VIA)  # last prepended comes first, as the proxy does it
    m.replace("Max-Forwards", "69")
    assert m.remove("X-Consent-Token") == 1
    m.append("X-Admission-Id", "gw-0-1")
    out = m.to_bytes()
    want = SIPP_INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards: 69").replace(
        b"X-Consent-Token: ct-0001\r\n", b""
    )
    head, body = want.split(b"\r\n\r\n", 1)
    first, rest = head.split(b"\r\n", 1)
    expected = (
        first
        + b"\r\nVia: "
        + OUR_VIA.encode()
        + b"\r\nRecord-Route: <sip:10.0.0.5:5060;lr;cag=x>\r\n"
        + rest
        + b"\r\nX-Admission-Id: gw-0-1\r\n\r\n"
        + body
    )
    assert out == expected
    again = parse(out)
    assert [v.branch for v in again.vias()] == ["z9hG4bKcagt0x1", "z9hG4bK-4242-1-0"]


def test_generated_names_are_canonical_never_compact() -> None:
    m = parse(COMPACT_INVITE)
    m.prepend("v", OUR_VIA)
    m.replace("max-forwards", "69")
    m.append("call-id", "ignored-dup")
    m.append("www-authenticate", 'Digest realm="x"')
    m.append("cseq", "1 INVITE")
    text = m.to_bytes().decode("latin-1")
    assert "\r\nVia: SIP/2.0/UDP 10.0.0.5" in text
    assert "\r\nMax-Forwards: 69\r\n" in text
    assert "\r\nCall-ID: ignored-dup\r\n" in text
    assert '\r\nWWW-Authenticate: Digest realm="x"\r\n' in text
    assert "\r\nCSeq: 1 INVITE\r\n" in text
    # the untouched compact lines are still there as they came
    assert "\r\nf: <sip:1058001234@10.0.0.1>;tag=f1\r\n" in text


@pytest.mark.parametrize("bad", ["a\r\nInjected: 1", "a\nb", "a\rb", "a\0b"])
def test_edits_refuse_header_injection(bad: str) -> None:
    m = parse(SIPP_INVITE)
    for op in (m.prepend, m.append, m.replace):
        with pytest.raises(ValueError):
            op("X-Test", bad)
    with pytest.raises(ValueError):
        m.append("Bad Name", "1")
    with pytest.raises(ValueError):
        m.append("X-A:\r\nB", "1")
    assert m.to_bytes() == SIPP_INVITE


def test_changed_body_regenerates_content_length() -> None:
    m = parse(SIPP_INVITE)
    m.body = b"v=0\r\n"
    out = m.to_bytes()
    again = parse(out)
    assert again.body == b"v=0\r\n" and again.get("Content-Length") == "5"
    assert len(lines(out)) == len(lines(SIPP_INVITE))


def test_edited_message_without_content_length_gets_one() -> None:
    data = invite_with(("content-length", None))
    m = parse(data)
    assert m.to_bytes() == data  # untouched: exact
    m.replace("Max-Forwards", "69")
    assert parse(m.to_bytes()).get("Content-Length") == "0"


def test_routes_pop_first_comma_joined_or_repeated() -> None:
    m = parse(REPEATED)
    assert m.pop_first_route() == "<sip:10.0.0.5:5060;lr;cag=t1>"
    assert m.routes() == ["<sip:10.0.0.6;lr>", "<sip:10.0.0.7;lr>"]
    assert b"\r\nRoute: <sip:10.0.0.6;lr>\r\nRoute: <sip:10.0.0.7;lr>\r\n" in m.to_bytes()
    assert m.pop_first_route() == "<sip:10.0.0.6;lr>"
    assert m.pop_first_route() == "<sip:10.0.0.7;lr>"
    assert m.pop_first_route() is None
    assert b"Route" not in m.to_bytes()


def test_remove_counts_lines_and_has() -> None:
    m = parse(REPEATED)
    assert m.has("allow") and m.remove("ALLOW") == 2 and not m.has("Allow")
    assert m.remove("X-Nothing") == 0


def test_start_line_edit_is_regenerated() -> None:
    m = parse(SIPP_INVITE)
    assert isinstance(m, Request)
    m.uri = "sip:13800138000@10.0.0.9:5080"
    assert m.to_bytes().startswith(b"INVITE sip:13800138000@10.0.0.9:5080 SIP/2.0\r\n")


def test_lazy_accessors_raise_sip_error_only() -> None:
    m = parse(
        crlf(
            "OPTIONS sip:a@b SIP/2.0",
            "Via: garbage",
            "From: x",
            "To: y",
            "Call-ID: z",
            "CSeq: 1 OPTIONS",
        )
    )
    with pytest.raises(SipError):
        m.vias()
    assert m.from_tag is None and m.to_tag is None


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet='at g=<>";; \\T', max_size=25))
def test_tag_shortcut_reads_what_header_params_reads(value: str) -> None:
    try:
        expected: object = header_params(value).get("tag")
    except SipError:
        expected = SipError
    try:
        got: object = _tag_of(value)
    except SipError:
        got = SipError
    assert got == expected


def test_cached_lookups_follow_edits() -> None:
    r = parse(SIPP_INVITE)
    assert isinstance(r, Request)
    assert r.from_tag and r.to_tag is None and r.cseq[1] == "INVITE"
    top = r.top_via()
    assert top is not None and top.raw == r.vias()[0].raw
    r.replace("From", "<sip:a@b>;tag=new")
    r.replace("To", "<sip:c@d>;tag=t2")
    r.replace("CSeq", "7 INVITE")
    assert (r.from_tag, r.to_tag, r.cseq) == ("new", "t2", (7, "INVITE"))
    r.prepend("Via", OUR_VIA)
    assert r.get("Via") == OUR_VIA and r.top_via().raw == OUR_VIA  # type: ignore[union-attr]
    r.drop_first_via()
    assert r.top_via().raw == top.raw  # type: ignore[union-attr]
    r.remove("Max-Forwards")
    assert r.get("Max-Forwards") is None and not r.has("max-forwards")
    r.append("Max-Forwards", "5")
    assert r.get("max-forwards") == "5"
    r.prepend("Route", "<sip:x@y;lr>, <sip:z@w;lr>")
    assert r.pop_first_route() == "<sip:x@y;lr>" and r.get("Route") == "<sip:z@w;lr>"


@pytest.mark.parametrize("data", [SIPP_180, SIPP_INVITE, REPEATED])
def test_via_at_parses_one_value_as_vias_would(data: bytes) -> None:
    expected = [v.raw for v in parse(data).vias()]
    m = parse(data)
    assert [m.via_at(i).raw for i in range(len(expected))] == expected  # type: ignore[union-attr]
    assert m.via_at(len(expected)) is None
