"""Property tests: hostile input ends in SipError, never in another exception."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sip import Ping, SipError, StreamFramer, parse
from tests.unit._sip_corpus import ALL_VALID, mutated

BOUNDED = settings(max_examples=300, deadline=None)


@BOUNDED
@given(st.binary(max_size=2000))
def test_parse_arbitrary_bytes(data: bytes) -> None:
    try:
        parse(data)
    except SipError:
        pass


@BOUNDED
@given(mutated())
def test_parse_mutated_valid_messages(data: bytes) -> None:
    try:
        m = parse(data)
    except SipError:
        return
    # Whatever parses can be inspected, edited and re-emitted with SipError as the only failure.
    try:
        m.vias()
        _ = (m.from_tag, m.to_tag, m.cseq, m.call_id, m.routes())
        m.pop_first_via()
        m.prepend("Via", "SIP/2.0/UDP 10.0.0.5;branch=z9hG4bKx")
        m.pop_first_route()
    except SipError:
        pass
    out = m.to_bytes()
    assert isinstance(out, bytes)


@BOUNDED
@given(st.lists(st.binary(max_size=300), max_size=10), st.sampled_from(ALL_VALID))
def test_framer_arbitrary_chunks(chunks: list[bytes], valid: bytes) -> None:
    f = StreamFramer(max_message=4096)
    try:
        for c in [valid, *chunks]:
            for item in f.feed(c):
                assert isinstance(item, bytes | Ping)
    except SipError:
        pass


@BOUNDED
@given(st.data())
def test_framer_any_split_of_valid_stream(data: st.DataObject) -> None:
    stream = b"".join(ALL_VALID[:2]) + b"\r\n\r\n" + ALL_VALID[4]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    f = StreamFramer()
    got: list[bytes | Ping] = []
    prev = 0
    for c in [*cuts, len(stream)]:
        got.extend(f.feed(stream[prev:c]))
        prev = c
    assert got == [ALL_VALID[0], ALL_VALID[1], Ping(), ALL_VALID[4]]


def test_hostile_corpus_parses_or_raises_sip_error() -> None:
    from tests.unit._sip_corpus import HOSTILE

    for name, data in HOSTILE.items():
        try:
            parse(data)
        except SipError as e:
            assert 400 <= e.status < 600, name
