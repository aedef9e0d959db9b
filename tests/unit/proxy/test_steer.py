"""gateway.proxy.steer: which worker owns a request, without a parse."""

from __future__ import annotations

import zlib

from hypothesis import given
from hypothesis import strategies as st

from gateway.proxy.steer import call_id_line, owner, unwrap, wrap
from gateway.sip import parse
from tests.unit._sip_corpus import crlf

INVITE = crlf(
    "INVITE sip:+8613800000001@10.0.0.9 SIP/2.0",
    "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1",
    "Max-Forwards: 70",
    "From: <sip:+8695500001@10.0.0.1>;tag=a",
    "To: <sip:+8613800000001@10.0.0.9>",
    "Call-ID: abc-123@10.0.0.1",
    "CSeq: 1 INVITE",
    "Content-Length: 0",
)


def test_long_compact_and_any_case_give_the_same_owner() -> None:
    forms = [
        INVITE,
        INVITE.replace(b"Call-ID: ", b"i: "),
        INVITE.replace(b"Call-ID: ", b"CALL-ID:"),
        INVITE.replace(b"Call-ID: ", b"call-id   :  "),
    ]
    assert {call_id_line(f) for f in forms} == {b"abc-123@10.0.0.1"}
    assert {owner(f, 7) for f in forms} == {zlib.crc32(b"abc-123@10.0.0.1") % 7}


def test_a_transaction_meets_itself_on_one_worker() -> None:
    """INVITE, its retransmission, its CANCEL and the ACK share the Call-ID, hence the owner."""
    cancel = INVITE.replace(b"INVITE sip", b"CANCEL sip", 1).replace(b"1 INVITE", b"1 CANCEL")
    ack = INVITE.replace(b"INVITE sip", b"ACK sip", 1).replace(b"1 INVITE", b"1 ACK")
    assert owner(INVITE, 4) == owner(INVITE, 4) == owner(cancel, 4) == owner(ack, 4)


def test_what_is_not_steered() -> None:
    assert owner(INVITE, 1) is None  # one worker
    assert owner(b"SIP/2.0 200 OK\r\nCall-ID: x\r\n\r\n", 4) is None  # responses stay
    assert owner(b"OPTIONS sip:x SIP/2.0\r\nVia: y\r\n\r\n", 4) is None  # no Call-ID: the parser answers
    assert owner(b"garbage", 4) is None
    # A Call-ID in the body is not a header.
    assert owner(b"INVITE sip:x SIP/2.0\r\nVia: y\r\n\r\nCall-ID: in-body\r\n", 4) is None


def test_owner_is_the_parsed_call_id_hash() -> None:
    msg = parse(INVITE)
    cid = msg.get("Call-ID")
    assert cid is not None
    assert owner(INVITE, 3) == zlib.crc32(cid.encode()) % 3


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=16))
def test_never_raises_and_stays_in_range(data: bytes, n: int) -> None:
    j = owner(b"INVITE sip:x SIP/2.0\r\n" + data, n)
    assert j is None or 0 <= j < n


def test_wrap_round_trip() -> None:
    assert unwrap(wrap(("10.0.0.1", 5060), INVITE)) == (("10.0.0.1", 5060), INVITE)
    assert unwrap(wrap(("2001:db8::1", 5060), b"x\ny")) == (("2001:db8::1", 5060), b"x\ny")
    assert unwrap(b"no newline") is None
    assert unwrap(b"host notaport\nx") is None
