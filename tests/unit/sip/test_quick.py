"""The quick relay view of responses (gateway/sip/quick.py) against the full parser.

The contract: whatever ``quick_response`` accepts, ``parse`` accepts too,
reads the same (status, Call-ID, CSeq, tags, Vias, Max-Forwards), and after
dropping the top Via emits the same bytes. Checked on the valid corpus, on
relay-shaped messages and on mutations of both.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sip import QuickResponse, Response, SipError, parse, quick_response
from tests.unit._sip_corpus import ALL_VALID, HOSTILE, crlf, mutate

ACK = crlf(
    "ACK sip:uas@10.0.0.99:5070 SIP/2.0",
    "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1-5",
    "Route: <sip:10.0.0.2:5060;transport=udp;lr;cag=abc.def>",
    "From: sipp <sip:1058001234@10.0.0.1:5060>;tag=123SIPpTag001",
    "To: <sip:13800138000@10.0.0.2:5060>;tag=uas-tag-1",
    "Call-ID: c1@x",
    "CSeq: 1 ACK",
    "Max-Forwards: 70",
    "Content-Length: 0",
)
BYE_JOINED = crlf(
    "BYE sip:uas@10.0.0.99:5070 SIP/2.0",
    "v: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1-7;rport",
    "ROUTE: <sip:10.0.0.2:5060;lr;cag=abc.def>, <sip:10.9.9.9;lr>",
    "Route: <sip:10.8.8.8;lr>",
    "f: <sip:1058001234@10.0.0.1:5060>;tag=a",
    "t: <sip:13800138000@10.0.0.2:5060>;tag=b",
    "i: c2@x",
    "CSeq: 2 BYE",
    "l: 0",
)
BYE_NO_MF = crlf(
    "BYE sip:uas@10.0.0.99:5070 SIP/2.0",
    "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1-7",
    "Via: SIP/2.0/UDP 10.0.0.7:5060;branch=z9hG4bK-0",
    "From: <sip:1@10.0.0.1>;tag=a",
    "To: <sip:2@10.0.0.2>;tag=b",
    "Call-ID: c3@x",
    "CSeq: 3 BYE",
    "Content-Length: 4",
    body=b"abcdEXTRA",
)
RESP_JOINED = crlf(
    "SIP/2.0 200 OK",
    "Via: SIP/2.0/UDP 10.0.0.2:40000;branch=z9hG4bKcagt0x1;rport, SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1",
    "Record-Route: <sip:10.0.0.2:5060;lr;cag=x.y>",
    "From: sipp <sip:1@10.0.0.1>;tag=a",
    "To: <sip:2@10.0.0.2>;tag=b",
    "Call-ID: c4@x",
    "CSeq: 1 INVITE",
    "Contact: <sip:uas@10.0.0.9:5070>",
    "Content-Length: 0",
)
RESP_LINES = crlf(
    "SIP/2.0 180 Ringing",
    "VIA: SIP/2.0/UDP 10.0.0.2:40000;branch=z9hG4bKcagt0x1;rport",
    "v: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1",
    "From: <sip:1@10.0.0.1>;tag=a",
    "To: <sip:2@10.0.0.2>;tag=b",
    "Call-ID: c5@x",
    "CSeq: 1 INVITE",
    "Content-Length: 0",
)
RELAYED = [ACK, BYE_JOINED, BYE_NO_MF, RESP_JOINED, RESP_LINES]
CORPUS = ALL_VALID + RELAYED


def _same_reading(q: QuickResponse, m: Response) -> None:
    assert (q.status, q.call_id, q.cseq) == (m.status, m.call_id, m.cseq)
    for name in ("Via", "From", "To", "Call-ID", "CSeq", "Route", "Max-Forwards", "Content-Length", "Contact"):
        assert q.get(name) == m.get(name), name
    for attr in ("to_tag", "from_tag"):
        try:
            expected = getattr(m, attr)
        except SipError:
            with pytest.raises(SipError):
                getattr(q, attr)
            continue
        assert getattr(q, attr) == expected
    for n in range(3):
        try:
            expected_via = m.via_at(n)
        except SipError:
            with pytest.raises(SipError):
                q.via_at(n)
            continue
        got = q.via_at(n)
        assert (got.raw if got else None) == (expected_via.raw if expected_via else None)


def check(data: bytes) -> None:
    """The contract in the module docstring, for one input."""
    q = quick_response(data)
    if q is None:
        return
    m = parse(data)  # must not raise: the quick view accepted it
    assert isinstance(m, Response)
    assert q.to_bytes() == m.to_bytes()
    _same_reading(q, m)
    try:
        m.drop_first_via()
    except SipError:
        with pytest.raises(SipError):
            q.drop_first_via()
        return
    q.drop_first_via()
    assert q.to_bytes() == m.to_bytes()
    _same_reading(q, m)
    # A view that goes to the full parse after the edit replays it once, not twice.
    again = quick_response(data)
    assert again is not None
    again.drop_first_via()
    again.get_all("Contact")
    assert again.to_bytes() == m.to_bytes()


@pytest.mark.parametrize("data", CORPUS)
def test_corpus_reads_and_edits_like_parse(data: bytes) -> None:
    check(data)


def test_relay_shapes_take_the_quick_view() -> None:
    """The shapes SIPp and the core produce are quick; odd ones go to parse; requests never."""
    for data in (RESP_JOINED, RESP_LINES):
        assert quick_response(data) is not None
    for data in (ACK, BYE_JOINED, BYE_NO_MF):
        assert quick_response(data) is None
    folded = RESP_JOINED.replace(b"\r\nCSeq: 1 INVITE", b"\r\nCSeq: 1\r\n INVITE")
    spaced = RESP_JOINED.replace(b"\r\nCall-ID:", b"\r\nCall-ID :")
    bare_lf = RESP_JOINED.replace(b"\r\nCSeq", b"\nCSeq")
    two_to = RESP_JOINED.replace(b"\r\nCall-ID", b"\r\nt: <sip:x@y>;tag=z\r\nCall-ID")
    no_cl = RESP_JOINED.replace(b"\r\nContent-Length: 0", b"")
    odd_case = RESP_JOINED.replace(b"\r\nCall-ID", b"\r\ncALL-iD: dup\r\nCall-ID")
    for data in (folded, spaced, bare_lf, two_to, no_cl, odd_case):
        assert quick_response(data) is None, data


def test_joined_via_loses_only_its_first_value() -> None:
    q = quick_response(RESP_JOINED)
    assert q is not None
    q.drop_first_via()
    out = q.to_bytes()
    assert b"\r\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1\r\n" in out
    assert out.replace(b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1", b"") == RESP_JOINED.replace(
        b"Via: SIP/2.0/UDP 10.0.0.2:40000;branch=z9hG4bKcagt0x1;rport, SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1", b""
    )


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_corpus(name: str) -> None:
    data = HOSTILE[name]
    if quick_response(data) is not None:
        parse(data)
    check(data)


@st.composite
def mutated_relay(draw: st.DrawFn) -> bytes:
    return mutate(
        draw, CORPUS, 6, b'\r\n\0 \t:;,<>"@x9\xffVv',
        [b"\r\n", b",", b";branch=", b"\r\nVia: ", b"\r\nv: ", b"\r\nRoute: ", b"\r\n ",
         b"\r\nl: 5", b"\r\nMax-Forwards: x", b"\r\nt: <sip:a@b>", b", <sip:q;lr>"],
    )


@settings(max_examples=800, deadline=None)
@given(mutated_relay())
def test_mutated_messages_read_and_edit_like_parse(data: bytes) -> None:
    check(data)
