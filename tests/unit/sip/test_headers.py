"""Header names and list splitting."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sip import COMPACT, SipError, split_list
from gateway.sip.headers import canonical_name, first_element_end, header_key, split_params


def test_compact_table_is_complete() -> None:
    assert COMPACT == {
        "i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length",
        "c": "content-type", "f": "from", "s": "subject", "k": "supported", "t": "to", "v": "via",
        "o": "event", "r": "refer-to", "b": "referred-by", "x": "session-expires", "u": "allow-events",
        "y": "identity", "a": "accept-contact", "j": "reject-contact", "d": "request-disposition",
    }  # fmt: skip


def test_keys_and_canonical_names() -> None:
    assert header_key(" V ") == "via" and header_key("CALL-ID") == "call-id"
    assert canonical_name("i") == "Call-ID" and canonical_name("cseq") == "CSeq"
    assert canonical_name("www-authenticate") == "WWW-Authenticate"
    assert canonical_name("X-Admission-Id") == "X-Admission-Id"


def test_split_list() -> None:
    assert split_list("a, b ,c") == ["a", "b", "c"]
    assert split_list('"x, \\"y" <sip:a@b>, <sip:c,d@e>;p="1,2"') == [
        '"x, \\"y" <sip:a@b>',
        '<sip:c,d@e>;p="1,2"',
    ]
    assert split_list("") == [] and split_list(" , ,") == []


def test_split_params() -> None:
    assert split_params(";A=1;b;c = 2;a=3") == {"a": "1", "b": None, "c": "2"}


def test_sip_error_carries_the_answer() -> None:
    e = SipError("unsupported URI scheme", 416)
    assert (e.status, e.reason, str(e)) == (
        416,
        "unsupported URI scheme",
        "416 unsupported URI scheme",
    )
    assert SipError("x").status == 400
    with pytest.raises(SipError):
        raise e


def _scan_cuts(value: str) -> list[int]:
    """The reference reading: top-level comma positions, one character at a time (quotes, <...>)."""
    cuts: list[int] = []
    quoted, angle, i = False, False, 0
    while i < len(value):
        c = value[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            angle = True
        elif c == ">":
            angle = False
        elif c == "," and not angle:
            cuts.append(i)
        i += 1
    return cuts


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet='ab ,<>"\\;\t', max_size=30))
def test_split_list_fast_paths_match_the_character_scan(value: str) -> None:
    cuts = _scan_cuts(value)
    bounds = [-1, *cuts, len(value)]
    parts = [value[a + 1 : b].strip() for a, b in pairwise(bounds)]
    assert split_list(value) == [p for p in parts if p]
    assert first_element_end(value) == (cuts[0] if cuts else -1)
