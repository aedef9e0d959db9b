"""TCP framing: Content-Length, keep-alives, partial data, limits."""

from __future__ import annotations

import pytest

from gateway.sip import Ping, SipError, StreamFramer, parse
from tests.unit._sip_corpus import COMPACT_INVITE, REPEATED, RESP_200, SIPP_INVITE, invite_with


def test_several_messages_in_one_chunk() -> None:
    f = StreamFramer()
    assert f.feed(SIPP_INVITE + RESP_200 + COMPACT_INVITE) == [
        SIPP_INVITE,
        RESP_200,
        COMPACT_INVITE,
    ]


def test_message_split_byte_by_byte() -> None:
    f = StreamFramer()
    stream = SIPP_INVITE + b"\r\n\r\n" + REPEATED
    got: list[bytes | Ping] = []
    for i in range(len(stream)):
        got.extend(f.feed(stream[i : i + 1]))
    assert got == [SIPP_INVITE, Ping(), REPEATED]
    assert parse(got[0]).call_id == "1-4242@10.0.0.1"  # type: ignore[arg-type]


def test_keepalives() -> None:
    f = StreamFramer()
    assert f.feed(b"\r\n\r\n") == [Ping()]
    assert f.feed(b"\r\n\r\n\r\n\r\n") == [Ping(), Ping()]
    assert f.feed(b"\r\n") == []  # might become a ping
    assert f.feed(b"\r\n") == [Ping()]
    assert f.feed(b"\r\n" + REPEATED) == [REPEATED]  # a single CRLF is ignored


def test_missing_content_length_is_fatal() -> None:
    f = StreamFramer()
    with pytest.raises(SipError) as ei:
        f.feed(invite_with(("content-length", None)))
    assert ei.value.status == 400
    with pytest.raises(SipError):
        f.feed(REPEATED)  # unusable after an error


@pytest.mark.parametrize("cl", ["abc", "-1", "1, 2"])
def test_bad_content_length(cl: str) -> None:
    with pytest.raises(SipError):
        StreamFramer().feed(invite_with(("content-length", f"Content-Length: {cl}")))


def test_compact_content_length_frames() -> None:
    data = invite_with(("content-length", "l: 4"), body=b"abcd")
    assert StreamFramer().feed(data + data) == [data, data]


def test_oversize_header_and_body() -> None:
    f = StreamFramer(max_message=1000)
    with pytest.raises(SipError) as ei:
        f.feed(b"INVITE sip:a@b SIP/2.0\r\nX: " + b"a" * 2000)
    assert ei.value.status == 513
    f2 = StreamFramer(max_message=1000)
    with pytest.raises(SipError) as ei:
        f2.feed(invite_with(("content-length", "Content-Length: 5000")))
    assert ei.value.status == 513


def test_partial_body_buffered() -> None:
    data = invite_with(("content-length", "Content-Length: 10"), body=b"0123456789")
    f = StreamFramer()
    assert f.feed(data[:-4]) == []
    assert f.feed(data[-4:]) == [data]
