"""Hostile input through the whole proxy core, not just the parser.

``ProxyCore.receive`` swallows exceptions by design (a bug must drop one
message, not a worker), so "never raises" is checked through the core's
``internal_error`` counter, and every action it returns must be well formed:
each Send parses as SIP and its header section has no bare CR, LF or NUL
(nothing injected from a request survives into what we send).

Time budget: a few hundred examples per test, no deadline (busy CI machines);
the whole module runs in well under 60 s. A crash found here becomes an
explicit case in ``HOSTILE`` below.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.proxy import Admit, ProxyCore, Send
from gateway.sip import SipError, parse
from policy.decision import admitted, reject
from tests.unit._sip_corpus import ALL_VALID, HOSTILE, invite_with, mutated
from tests.unit.proxy._support import HOP1, TRUNK, invite, make_core, request

BUDGET = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
UNKNOWN = ("203.0.113.7", 5060)
SOURCES = [TRUNK, HOP1, UNKNOWN]


def assert_well_formed(actions: list[object], answered: bytes = b"") -> None:
    """Every Send goes to a real address and parses as SIP.

    Responses the core *generates* (``answered`` is the request they answer)
    must have no bare CR, LF or NUL in any header line: the To/From/Call-ID/
    Via echo required by RFC 3261 must not let a request split our response.
    Relayed messages are forwarded bytes and only have to parse. A stateless
    400 for a malformed request echoes its broken CSeq, so it may not parse.
    """
    for a in actions:
        if not isinstance(a, Send):
            continue
        assert isinstance(a.dest[0], str) and isinstance(a.dest[1], int)
        head, _, _ = a.data.partition(b"\r\n\r\n")
        if a.data.startswith(b"SIP/2.0 ") and answered and not answered.startswith(b"SIP/"):
            for line in head.split(b"\r\n"):
                assert b"\r" not in line and b"\n" not in line and b"\0" not in line, a.data
        try:
            parse(a.data)
        except SipError:
            assert b'text="malformed"' in head, a.data


def drive(core: ProxyCore, data: bytes, source: tuple[str, int], transport: str, now: float) -> None:
    out = core.receive(data, source, transport, 1 if transport == "tcp" else None, now)
    assert_well_formed(out, data)
    for i, a in enumerate(out):
        if isinstance(a, Admit):
            dec = admitted(trunk_id="t-a") if i % 2 == 0 else reject("consent_unknown", trunk_id="t-a")
            assert_well_formed(core.decided(a.key, dec, now + 0.001), data)
    assert_well_formed(core.tick(now + 40.0))
    assert core.stats["internal_error"] == 0, core.stats


@BUDGET
@given(st.binary(max_size=3000), st.sampled_from(SOURCES), st.sampled_from(["udp", "tcp"]))
def test_core_arbitrary_bytes(data: bytes, source: tuple[str, int], transport: str) -> None:
    drive(make_core(), data, source, transport, 1000.0)


@BUDGET
@given(mutated(), st.sampled_from(SOURCES), st.sampled_from(["udp", "tcp"]))
def test_core_mutated_valid_messages(data: bytes, source: tuple[str, int], transport: str) -> None:
    drive(make_core(), data, source, transport, 1000.0)


@st.composite
def mutated_gateway_traffic(draw: st.DrawFn) -> list[bytes]:
    """A valid INVITE then mutated in-dialog traffic for the same call."""
    base = [invite(), request("ACK", to_tag="x"), request("BYE", to_tag="x", cseq=2), request("CANCEL")]
    out = []
    for _ in range(draw(st.integers(1, 4))):
        data = bytearray(draw(st.sampled_from(base)))
        for _ in range(draw(st.integers(0, 4))):
            pos = draw(st.integers(0, len(data)))
            data[pos:pos] = draw(st.sampled_from([b"\r\n", b"\r", b"\n", b"\0", b"\xff\xfe", b";tag=", b"x" * 50]))
        out.append(bytes(data))
    return out


@BUDGET
@given(mutated_gateway_traffic())
def test_core_mutated_call_sequences(msgs: list[bytes]) -> None:
    core = make_core()
    for i, m in enumerate(msgs):
        drive(core, m, TRUNK, "udp", 1000.0 + i)


# --------------------------------------------------------------- the corpus

REACH_POLICY = {"crlf_in_from_tag", "invalid_utf8"}


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("source", [TRUNK, HOP1, UNKNOWN], ids=["trunk", "hop", "unknown"])
def test_hostile_corpus_is_answered_400_or_dropped(name: str, source: tuple[str, int]) -> None:
    core = make_core()
    data = HOSTILE[name]
    out = core.receive(data, source, "udp", None, 1000.0)
    assert core.stats["internal_error"] == 0
    assert_well_formed(out, data)
    if name in REACH_POLICY and source == TRUNK:
        # Odd but parseable (latin-1 bytes, a percent-encoded CRLF that is never
        # decoded): it goes to policy like any INVITE; the rejection must be clean.
        (adm,) = [a for a in out if isinstance(a, Admit)]
        final = core.decided(adm.key, reject("consent_missing", trunk_id="t-a"), 1000.01)
        assert_well_formed(final, data)
        assert any(isinstance(a, Send) and a.data.startswith(b"SIP/2.0 608 ") for a in final)
        return
    for a in out:
        assert isinstance(a, Send)
        assert b"X-Injected" not in a.data.partition(b"\r\n\r\n")[0].split(b"\r\n", 1)[-1].split(b":")[0]
        if source == UNKNOWN:
            pytest.fail(f"{name}: answered an unknown source")
        status = int(a.data.split(b" ", 2)[1])
        assert status in (400, 413, 416, 482, 483, 505, 513), (name, a.data[:80])


def test_valid_corpus_never_internal_errors() -> None:
    for source in SOURCES:
        core = make_core()
        for m in ALL_VALID:
            assert_well_formed(core.receive(m, source, "udp", None, 1000.0))
        assert core.stats["internal_error"] == 0


def test_unknown_source_requests_are_dropped_before_parsing() -> None:
    core = make_core()
    calls: list[bytes] = []
    import gateway.proxy.core as core_mod

    real = core_mod.parse

    def spy(data: bytes) -> object:
        calls.append(data)
        return real(data)

    core_mod.parse = spy  # type: ignore[assignment]
    try:
        assert core.receive(invite(), UNKNOWN, "udp", None, 1.0) == []
        assert core.receive(b"\0garbage", UNKNOWN, "udp", None, 1.0) == []
    finally:
        core_mod.parse = real
    assert calls == []
    assert core.stats["dropped_unknown_source"] == 2
    # The configurable 403 still answers (it needs the parse to build the response).
    core403 = make_core(unknown_source_code=403)
    out = core403.receive(invite(), UNKNOWN, "udp", None, 1.0)
    assert len(out) == 1 and isinstance(out[0], Send) and out[0].data.startswith(b"SIP/2.0 403 ")


def test_regression_bare_cr_in_via_is_not_echoed_in_the_stateless_400() -> None:
    """Found by test_core_mutated_valid_messages: the raw-line 400 echoed ``Via: S\\rP/2.0/UDP…``."""
    core = make_core()
    data = invite_with(("via", "Via: S\rP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-1"), ("cseq", "CSeq: x INVITE"))
    out = core.receive(data, TRUNK, "udp", None, 1.0)
    assert out == [] and core.stats["dropped_malformed"] == 1
