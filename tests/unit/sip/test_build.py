"""Responses and requests we originate."""

from __future__ import annotations

import pytest

from gateway.sip import PHRASES, Request, Response, build_request, build_response, parse
from tests.unit._sip_corpus import REPEATED, SIPP_180, SIPP_INVITE


def req(data: bytes = SIPP_INVITE) -> Request:
    m = parse(data)
    assert isinstance(m, Request)
    return m


def test_response_copies_vias_from_to_callid_cseq() -> None:
    r = req(REPEATED)
    out = build_response(r, 481)
    assert out == (
        b"SIP/2.0 481 Call/Transaction Does Not Exist\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKb1\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.3:5060;branch=z9hG4bKb2\r\n"
        b"From: <sip:a@b>;tag=1\r\n"
        b"To: <sip:c@d>;tag=2\r\n"
        b"Call-ID: bye-1\r\n"
        b"CSeq: 2 BYE\r\n"
        b"Content-Length: 0\r\n\r\n"
    )


def test_to_tag_added_only_when_missing_and_not_100() -> None:
    r = req()
    final = parse(
        build_response(
            r, 608, to_tag="gw1", extra=[("Reason", 'SIP;cause=608;text="consent_missing"')]
        )
    )
    assert isinstance(final, Response)
    assert (final.status, final.reason_phrase, final.to_tag) == (608, "Rejected", "gw1")
    assert final.get("Reason") == 'SIP;cause=608;text="consent_missing"'
    trying = parse(build_response(r, 100, to_tag="gw1"))
    assert (
        trying.to_tag is None and isinstance(trying, Response) and trying.reason_phrase == "Trying"
    )
    # a To that already has a tag keeps it
    assert parse(build_response(req(REPEATED), 200, to_tag="other")).to_tag == "2"


def test_comma_joined_via_copied_verbatim() -> None:
    data = SIPP_180.replace(b"SIP/2.0 180 Ringing", b"INVITE sip:x@y SIP/2.0")
    out = build_response(req(data), 503, "Service Unavailable", extra=[("Retry-After", "1")])
    via_line = next(line for line in SIPP_180.split(b"\r\n") if line.startswith(b"Via:"))
    assert via_line in out
    assert b"\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n" in out


def test_default_phrases() -> None:
    for code in (
        100,
        180,
        183,
        200,
        400,
        403,
        404,
        405,
        408,
        413,
        416,
        428,
        433,
        436,
        437,
        438,
        480,
        481,
        482,
        483,
        486,
        487,
        500,
        503,
        505,
        513,
        603,
        608,
    ):
        assert code in PHRASES
        assert build_response(req(), code).startswith(
            f"SIP/2.0 {code} {PHRASES[code]}\r\n".encode()
        )
    assert build_response(req(), 499).startswith(b"SIP/2.0 499 Client Error\r\n")


@pytest.mark.parametrize("bad", ["1\r\nX: y", "1\n", "1\r", "a\0"])
def test_extra_values_with_cr_lf_nul_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        build_response(req(), 603, extra=[("Retry-After", bad)])
    with pytest.raises(ValueError):
        build_response(req(), 603, "Decline\r\nX: 1")
    with pytest.raises(ValueError):
        build_request("OPTIONS", "sip:a@b", [("X", bad)])


def test_extra_names_are_canonical() -> None:
    out = build_response(req(), 401, extra=[("www-authenticate", 'Digest realm="a,b"')])
    assert b'\r\nWWW-Authenticate: Digest realm="a,b"\r\n' in out
    with pytest.raises(ValueError):
        build_response(req(), 401, extra=[("Bad: Name", "x")])


def test_build_request_computes_content_length() -> None:
    data = build_request(
        "OPTIONS",
        "sip:10.0.0.9:5070",
        [
            ("v", "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKcagprobe1"),
            ("Max-Forwards", "70"),
            ("From", "<sip:ping@10.0.0.5>;tag=1"),
            ("To", "<sip:ping@10.0.0.9>"),
            ("i", "p1"),
            ("CSeq", "1 OPTIONS"),
            ("Content-Length", "999"),
        ],
        b"hello",
    )
    assert data.startswith(b"OPTIONS sip:10.0.0.9:5070 SIP/2.0\r\nVia: SIP/2.0/UDP")
    m = parse(data)
    assert m.body == b"hello" and m.get_all("Content-Length") == ["5"] and m.call_id == "p1"
    with pytest.raises(ValueError):
        build_request("OPT IONS", "sip:a", [])


def test_response_to_a_request_with_an_unreadable_to() -> None:
    # The parser now refuses an unterminated quoted string in a request's To (RFC 4475
    # §3.1.2.6, issue 15 finding 6), so the broken To is put in after the parse: what
    # is tested is build_response's fallback when the To cannot be read.
    r = req(REPEATED)
    r.replace("To", '"broken <sip:c@d>')
    out = build_response(r, 400, to_tag="gw")
    assert b'\r\nTo: "broken <sip:c@d>;tag=gw\r\n' in out


def test_every_status_a_decision_can_carry_has_its_phrase_here() -> None:
    """One phrase table: policy's reason codes (and the configurable 603/608/480/403) all resolve in PHRASES."""
    from policy.decision import DEFAULT_SIP_CODES

    codes = {c for c in DEFAULT_SIP_CODES.values() if c} | {403, 480, 603, 608}
    assert codes <= set(PHRASES)
