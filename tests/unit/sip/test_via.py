"""Via values and where responses go."""

from __future__ import annotations

import pytest

from gateway.sip import SipError, parse, parse_via
from tests.unit._sip_corpus import RESP_200


def test_via_parts() -> None:
    v = parse_via(
        "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport;received=1.2.3.4;maddr=224.0.0.1;ttl=1"
    )
    assert (v.transport, v.host, v.port, v.branch) == ("UDP", "10.0.0.1", 5060, "z9hG4bK1")
    assert v.params["maddr"] == "224.0.0.1" and v.params["ttl"] == "1"
    assert v.rport is None and "rport" in v.params
    assert v.response_address() == ("1.2.3.4", 5060)


def test_lws_and_lower_case_transport() -> None:
    v = parse_via("SIP / 2.0 / tcp   host.example:5070 ;branch=z9hG4bKx")
    assert (v.transport, v.host, v.port, v.branch) == ("TCP", "host.example", 5070, "z9hG4bKx")


def test_rport_and_received_honoured() -> None:
    v = parse_via("SIP/2.0/UDP 10.0.0.1;rport=40000;received=192.0.2.7")
    assert v.rport == 40000
    assert v.response_address() == ("192.0.2.7", 40000)
    assert parse_via("SIP/2.0/UDP h").response_address(5080) == ("h", 5080)


def test_ipv6_via() -> None:
    v = parse(RESP_200).vias()[0]
    assert (v.host, v.port) == ("[2001:db8::5]", 5062)
    assert v.response_address() == ("2001:db8::5", 5062)
    assert parse_via("SIP/2.0/UDP [::1]").response_address() == ("::1", 5060)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "SIP/2.0/UDP",
        "SIP/3.0/UDP h",
        "HTTP/2.0/UDP h",
        "SIP/2.0/UDP h:0",
        "SIP/2.0/UDP h:abc",
        "SIP/2.0/U;DP h",
        "SIP/2.0/UDP [::1",
        "SIP/2.0/UDP <h>",
    ],
)
def test_bad_vias(bad: str) -> None:
    with pytest.raises(SipError):
        parse_via(bad)
