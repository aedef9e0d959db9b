"""SIP → policy: the CallAttempt an initial INVITE is asked about (SPEC §3)."""

from __future__ import annotations

from gateway.proxy import Admit
from tests.unit.proxy._support import (
    T0,
    TRUNK,
    WALL,
    invite,
    make_core,
)


def test_admit_reads_the_call_attempt() -> None:
    core = make_core()
    inv = invite(extra=(
        "P-Asserted-Identity: <sip:1058001234@10.0.0.1;user=phone>",
        "Privacy: none",
        "X-Consent-Token: tok-9",
        "X-Call-Purpose: consultation",
        "Identity: abc;info=<https://cert>",
    ))
    (adm,) = core.receive(inv, TRUNK, "udp", None, T0)
    assert isinstance(adm, Admit)
    c = adm.call
    assert c.call_id == "1-123@10.0.0.1" and c.branch == "z9hG4bK-123-1-0"
    assert (c.source_ip, c.source_port) == TRUNK
    assert c.callee == "13800138000" and c.from_user == "1058001234" and c.pai_user == "1058001234"
    assert not c.anonymous and not c.privacy_id
    assert c.consent_token == "tok-9" and c.purpose == "consultation"
    assert c.identity is not None and c.identity.startswith("abc")
    assert c.received_at == WALL + T0  # loop time + the adapter's wall offset
    assert adm.record_id.startswith("gw-0-")
    assert core.in_flight() == 1 and core.stats["invites"] == 1


def test_anonymous_and_privacy_flags() -> None:
    core = make_core()
    (a,) = core.receive(invite(extra=("Privacy: id",), caller="anonymous"), TRUNK, "udp", None, T0)
    assert isinstance(a, Admit) and a.call.anonymous and a.call.privacy_id
