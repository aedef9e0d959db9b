"""parse(): the corpus parses, round-trips, and the malformed corpus gets the right status."""

from __future__ import annotations

import pytest

from gateway.sip import MAX_HEADERS, Request, Response, SipError, parse
from tests.unit._sip_corpus import (
    ALL_VALID,
    COMPACT_INVITE,
    FOLDED_INVITE,
    REPEATED,
    RESP_200,
    SDP,
    SIPP_180,
    SIPP_INVITE,
    crlf,
    invite_with,
)


@pytest.mark.parametrize("data", ALL_VALID)
def test_untouched_messages_round_trip_byte_for_byte(data: bytes) -> None:
    assert parse(data).to_bytes() == data


def test_sipp_invite_fields() -> None:
    m = parse(SIPP_INVITE)
    assert isinstance(m, Request)
    assert (m.method, m.uri, m.version) == ("INVITE", "sip:13800138000@10.0.0.2:5060", "SIP/2.0")
    assert m.call_id == "1-4242@10.0.0.1"
    assert m.cseq == (1, "INVITE")
    assert m.from_tag == "4242SIPpTag001"
    assert m.to_tag is None
    assert m.body == SDP
    assert m.get("max-forwards") == "70"
    assert m.get("P-ASSERTED-IDENTITY") == "<sip:1058001234@10.0.0.1;user=phone>"


def test_compact_forms_are_equivalent_names() -> None:
    m = parse(COMPACT_INVITE)
    assert m.get("Via") == m.get("v") == "SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bKc1"
    assert m.call_id == "compact-1@10.0.0.1"
    assert m.from_tag == "f1"
    assert m.get("Contact") == "<sip:sipp@10.0.0.1:5060>"
    assert m.get("supported") == "timer"
    assert m.get("Content-Type") == "application/sdp"
    assert m.get("content-length") == str(len(SDP))
    assert m.has("T") and m.has("to")
    assert m.body == SDP


def test_folded_headers_unfold_but_keep_raw_bytes() -> None:
    m = parse(FOLDED_INVITE)
    assert m.get("Subject") == "a very long subject line"
    assert m.vias()[0].branch == "z9hG4bKfold"
    assert m.to_bytes() == FOLDED_INVITE


def test_repeated_and_comma_joined_headers_in_order() -> None:
    m = parse(REPEATED)
    assert m.get_all("Allow") == ["INVITE", "ACK", "BYE"]
    assert m.routes() == ["<sip:10.0.0.5:5060;lr;cag=t1>", "<sip:10.0.0.6;lr>", "<sip:10.0.0.7;lr>"]
    assert [v.branch for v in m.vias()] == ["z9hG4bKb1", "z9hG4bKb2"]
    # Date is not a list header: its comma is data.
    assert m.get_all("Date") == ["Sat, 28 Nov 2026 17:00:00 GMT"]


def test_non_list_headers_are_never_split() -> None:
    data = invite_with(
        extra=(
            'WWW-Authenticate: Digest realm="a,b", nonce="x"',
            "User-Agent: foo, bar",
            "Identity: abc.def,ghi;info=<https://x/y,z>",
            "Subject: hello, world",
        )
    )
    m = parse(data)
    assert m.get_all("WWW-Authenticate") == ['Digest realm="a,b", nonce="x"']
    assert m.get_all("user-agent") == ["foo, bar"]
    assert m.get_all("y") == ["abc.def,ghi;info=<https://x/y,z>"]
    assert m.get_all("s") == ["hello, world"]


def test_list_split_is_quote_and_angle_aware() -> None:
    data = invite_with(
        extra=(
            'P-Asserted-Identity: "Doe, John" <sip:1058001234@10.0.0.1>, <tel:+861058001234>',
            "Contact: <sip:a@b;x=1,2>;expires=3, <sip:c@d>",
            "Privacy: id, critical",
        )
    )
    m = parse(data)
    assert m.get_all("P-Asserted-Identity") == [
        '"Doe, John" <sip:1058001234@10.0.0.1>',
        "<tel:+861058001234>",
    ]
    assert m.get_all("m") == ["<sip:a@b;x=1,2>;expires=3", "<sip:c@d>"]
    assert m.get_all("privacy") == ["id", "critical"]


def test_responses() -> None:
    r = parse(SIPP_180)
    assert isinstance(r, Response)
    assert (r.status, r.reason_phrase, r.version) == (180, "Ringing", "SIP/2.0")
    assert r.to_tag == "uas1"
    assert len(r.vias()) == 2
    ok = parse(RESP_200)
    assert isinstance(ok, Response) and ok.status == 200 and ok.body == SDP
    phrase = parse(crlf("SIP/2.0 486 Busy  Here now", *SIPP_180.decode().split("\r\n")[1:7]))
    assert isinstance(phrase, Response) and phrase.reason_phrase == "Busy  Here now"


def test_leading_crlf_and_bare_lf_tolerated() -> None:
    assert parse(b"\r\n\r\n" + SIPP_INVITE).call_id == "1-4242@10.0.0.1"
    for src in (REPEATED, FOLDED_INVITE):
        lf = src.replace(b"\r\n", b"\n")
        m = parse(lf)
        assert m.call_id == parse(src).call_id
        assert m.get_all("Via") == parse(src).get_all("Via")
        assert m.to_bytes() == lf
        m.replace("Max-Forwards", "9")
        assert parse(m.to_bytes()).get("Max-Forwards") == "9"


def test_invalid_utf8_in_display_name_parses_as_latin1() -> None:
    data = invite_with(
        ("from", None), extra=('From: "\xe5\xbc\xa0\xff" <sip:1058001234@10.0.0.1>;tag=z',)
    )
    m = parse(data)
    assert m.from_tag == "z"
    assert m.to_bytes() == data


def test_udp_content_length_smaller_truncates_missing_takes_rest() -> None:
    data = invite_with(("content-length", "Content-Length: 3"), body=b"abcdef")
    assert parse(data).body == b"abc"
    no_cl = invite_with(("content-length", None), body=b"abcdef")
    assert parse(no_cl).body == b"abcdef"


def test_max_forwards_may_be_missing() -> None:
    m = parse(invite_with(("max-forwards", None)))
    assert m.get("Max-Forwards") is None


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (invite_with(("via", None)), 400),
        (invite_with(("from", None)), 400),
        (invite_with(("to", None)), 400),
        (invite_with(("call-id", None)), 400),
        (invite_with(("cseq", None)), 400),
        (invite_with(("content-length", "Content-Length: abc")), 400),
        (invite_with(("content-length", "Content-Length: -1")), 400),
        (invite_with(("content-length", "Content-Length: 10")), 400),
        (invite_with(extra=("Content-Length: 0",)), 400),
        (invite_with(("cseq", "CSeq: 1 BYE")), 400),
        (invite_with(("cseq", "CSeq: x INVITE")), 400),
        (invite_with(("cseq", "CSeq: 2147483648 INVITE")), 400),
        (invite_with(("cseq", "CSeq: 1")), 400),
        (invite_with(extra=("Call-ID: again",)), 400),
        (invite_with(extra=("From: <sip:x@y>;tag=2",)), 400),
        (invite_with(extra=("t: <sip:x@y>",)), 400),
        (invite_with(("max-forwards", "Max-Forwards: seventy")), 400),
        (invite_with(("start", "INVITE sip:a@b SIP/3.0")), 505),
        (invite_with(("start", "INVITE http://a/b SIP/2.0")), 416),
        (invite_with(("start", "INVITE mailto:a@b SIP/2.0")), 416),
        (invite_with(("start", "INVITE  sip:a@b SIP/2.0")), 400),
        (invite_with(("start", "INVITE sip:a@b")), 400),
        (invite_with(("start", "INV<ITE sip:a@b SIP/2.0")), 400),
        (invite_with(extra=("X-Bad: a\0b",)), 400),
        (invite_with(extra=("X-Bad: a\rInjected: 1",)), 400),
        (invite_with(extra=("Bad Name: 1",)), 400),
        (invite_with(extra=("no colon here",)), 400),
        (invite_with(extra=("X-Long: " + "a" * 9000,)), 400),
        (invite_with(extra=tuple(f"X-H{i}: {i}" for i in range(MAX_HEADERS))), 400),
        (
            invite_with(
                ("via", "Via: " + ", ".join(f"SIP/2.0/UDP 10.0.0.{i % 250}" for i in range(65)))
            ),
            400,
        ),
        (
            crlf(
                "SIP/2.0 99 Weird",
                "Via: SIP/2.0/UDP a",
                "From: <sip:a@b>",
                "To: <sip:a@b>",
                "Call-ID: x",
                "CSeq: 1 INVITE",
            ),
            400,
        ),
        (
            crlf(
                "SIP/2.0 700 Weird",
                "Via: SIP/2.0/UDP a",
                "From: <sip:a@b>",
                "To: <sip:a@b>",
                "Call-ID: x",
                "CSeq: 1 INVITE",
            ),
            400,
        ),
        (
            crlf(
                "SIP/3.0 200 OK",
                "Via: SIP/2.0/UDP a",
                "From: <sip:a@b>",
                "To: <sip:a@b>",
                "Call-ID: x",
                "CSeq: 1 INVITE",
            ),
            505,
        ),
        (b"", 400),
        (b"\r\n\r\n", 400),
        (b"INVITE sip:a@b SIP/2.0\r\nVia: x\r\n", 400),
        (b"x" * 70000, 513),
    ],
)
def test_malformed_corpus_gets_the_right_status(data: bytes, status: int) -> None:
    with pytest.raises(SipError) as ei:
        parse(data)
    assert ei.value.status == status
    assert ei.value.reason.isascii()


def test_bare_lf_inside_a_crlf_message_is_tolerated_but_bare_cr_is_not() -> None:
    # A bare LF reads as a line end (lenient); a bare CR can hide a second header line.
    ok = invite_with(extra=("X-A: 1\nX-B: 2",))
    assert parse(ok).get("X-B") == "2"
    with pytest.raises(SipError):
        parse(invite_with(extra=("X-A: 1\rX-B: 2",)))


def test_limits_are_configurable() -> None:
    with pytest.raises(SipError) as ei:
        parse(SIPP_INVITE, max_size=100)
    assert ei.value.status == 513
    with pytest.raises(SipError):
        parse(SIPP_INVITE, max_headers=5)
    with pytest.raises(SipError):
        parse(SIPP_INVITE, max_line=40)
    with pytest.raises(SipError):
        parse(SIPP_180, max_vias=1)
    assert parse(REPEATED, max_vias=2).call_id == "bye-1"
