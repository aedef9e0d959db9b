"""URIs and the URI inside From / To / PAI values."""

from __future__ import annotations

import pytest

from gateway.sip import SipError, header_params, header_uri, parse_uri, user_of


def test_sip_uri_parts() -> None:
    u = parse_uri("sip:+8613800138000;npdi;rn=x@10.0.0.2:5062;user=phone;transport=tcp")
    assert (u.scheme, u.user, u.host, u.port) == ("sip", "+8613800138000", "10.0.0.2", 5062)
    assert u.params == {"user": "phone", "transport": "tcp"}


def test_sips_ipv6_and_no_user() -> None:
    u = parse_uri("SIPS:[2001:db8::1]:5061;lr")
    assert (u.scheme, u.user, u.host, u.port, u.params) == (
        "sips",
        None,
        "[2001:db8::1]",
        5061,
        {"lr": None},
    )


def test_tel_uri() -> None:
    u = parse_uri("tel:+8613800138000;phone-context=+86")
    assert (u.scheme, u.user, u.host, u.port) == ("tel", "+8613800138000", "", None)
    assert u.params == {"phone-context": "+86"}


def test_percent_decoding_and_password() -> None:
    assert parse_uri("sip:%2B8613800138000:secret@h").user == "+8613800138000"


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("http://x", 416),
        ("mailto:a@b", 416),
        ("sip", 400),
        ("sip:", 400),
        ("sip:a@", 400),
        ("sip:a@h:99999", 400),
        ("sip:a@h:x", 400),
        ("sip:a@[::1", 400),
        ("tel:", 400),
        ("sip:@h", 400),
    ],
)
def test_bad_uris(text: str, status: int) -> None:
    with pytest.raises(SipError) as ei:
        parse_uri(text)
    assert ei.value.status == status


def test_header_uri_name_addr_and_addr_spec() -> None:
    assert header_uri('"Doe, <J>" <sip:a@b;user=phone>;tag=x') == "sip:a@b;user=phone"
    assert header_uri("Alice <sip:a@b>") == "sip:a@b"
    assert header_uri("sip:a@b;tag=x") == "sip:a@b"  # RFC 3261 §20: params belong to the header
    assert header_uri(" <tel:+861058001234> ") == "tel:+861058001234"
    with pytest.raises(SipError):
        header_uri('"unterminated <sip:a@b>')
    with pytest.raises(SipError):
        header_uri("<sip:a@b")


def test_header_params() -> None:
    assert header_params('"x;y" <sip:a@b;lr>;tag=1;foo') == {"tag": "1", "foo": None}
    assert header_params("sip:a@b;tag=x;expires=3") == {"tag": "x", "expires": "3"}
    assert header_params("<sip:a@b>") == {}
    assert header_params('<sip:a@b>;text="a;b";tag=t') == {"text": '"a;b"', "tag": "t"}


def test_user_of() -> None:
    assert user_of("sip:+8613800138000@10.0.0.2;user=phone") == "+8613800138000"
    assert user_of("<sip:1058001234@10.0.0.1;user=phone>;tag=1") == "1058001234"
    assert user_of("tel:+8613800138000;phone-context=+86") == "+8613800138000"
    assert user_of('"Anonymous" <sip:anonymous@anonymous.invalid>;tag=1') == "anonymous"
    assert user_of("<sip:10.0.0.1>") is None
    assert user_of("garbage") is None
    assert user_of("<http://x>") is None
    assert user_of('"\xe5\xbc\xa0" <sip:1058001234@h>') == "1058001234"
