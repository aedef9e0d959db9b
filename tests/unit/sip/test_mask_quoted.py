"""The one quote scan (``headers.mask_quoted``) behind list and parameter splits and the parser's checks."""

from __future__ import annotations

import pytest

from gateway.sip.headers import HIDDEN, mask_quoted, split_list, split_params


def test_mask_keeps_length_and_hides_quoted_strings() -> None:
    value = 'a, "b,\\"c", d'
    mask, open_quote = mask_quoted(value)
    assert len(mask) == len(value)
    assert not open_quote
    assert mask == "a, " + HIDDEN * 7 + ", d"


def test_angles_hide_the_uri_but_its_opening_bracket() -> None:
    mask, _ = mask_quoted('"x" <sip:a,b@h>;p=1, <sip:c>', angles=True)
    assert mask.replace(HIDDEN, "") == " <;p=1, <"


@pytest.mark.parametrize("value", ['"unterminated', '"a\\"', 'x;y="z'])
def test_an_open_quote_is_reported(value: str) -> None:
    assert mask_quoted(value)[1]


def test_splits_read_the_mask() -> None:
    assert split_list('"A, B" <sip:a@h>, "C" <sip:c,d@h>') == ['"A, B" <sip:a@h>', '"C" <sip:c,d@h>']
    assert split_params(';a="x;y";b') == {"a": '"x;y"', "b": None}


@pytest.mark.parametrize(
    "value",
    [
        "sip:a@h",
        "<sip:a@h>;expires=60, <sip:b@h>",
        "<sip:a,,b@h>",
        "<sip:a@h",
        "x <sip:a@h> y <sip:b@h",
        '"A" <sip:a@h>',
        "",
    ],
)
def test_the_quote_free_contact_reading_matches_the_scan(value: str) -> None:
    from gateway.sip.parser import _unquoted

    assert _unquoted(value, True) == mask_quoted(value, True)[0].replace(HIDDEN, "")
