"""Screening: unknown sources (drop or 403), malformed requests answered from their raw lines or dropped."""

from __future__ import annotations

import random

import pytest

from gateway.proxy import Admit, ProxyCore
from tests.unit.proxy._support import (
    HOP1,
    T0,
    TRUNK,
    hget,
    invite,
    make_core,
    only_send,
    status_of,
)


def test_unknown_source_dropped_or_403() -> None:
    core = make_core()
    assert core.receive(invite(), ("10.6.6.6", 5060), "udp", None, T0) == []
    assert core.stats["dropped_unknown_source"] == 1
    core403 = make_core(unknown_source_code=403)
    s = only_send(core403.receive(invite(), ("10.6.6.6", 5060), "udp", None, T0))
    assert status_of(s.data) == 403 and hget(s.data, "Reason") == 'SIP;cause=403;text="unknown_source"'


def test_malformed_requests_are_answered_with_their_status_or_dropped() -> None:
    core = make_core()
    cases = [
        (invite().replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE"), 400),
        (invite().replace(b"sip:13800138000@10.0.0.2:5060 SIP/2.0", b"http://x SIP/2.0"), 416),
        (invite().replace(b"SIP/2.0\r\nVia", b"SIP/3.0\r\nVia", 1), 505),
        (invite(max_forwards="abc"), 400),
    ]
    for data, code in cases:
        s = only_send(core.receive(data, TRUNK, "udp", None, T0))
        assert status_of(s.data) == code and s.dest == TRUNK
        assert hget(s.data, "Reason") == f'SIP;cause={code};text="malformed"'
        assert hget(s.data, "Call-ID") == "1-123@10.0.0.1"
    assert core.stats["malformed_answered"] == 4
    # Nothing to build a response from, a broken response, an unknown source: dropped, counted.
    assert core.receive(b"NOT SIP AT ALL", TRUNK, "udp", None, T0) == []
    assert core.receive(b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n", HOP1, "udp", None, T0) == []
    assert core.receive(cases[0][0], ("6.6.6.6", 5060), "udp", None, T0) == []
    # The unknown source's request is dropped before parsing, so it counts as that.
    assert core.stats["dropped_malformed"] == 2 and core.stats["dropped_unknown_source"] == 1


def _counting_core(**kw: object) -> tuple[ProxyCore, list[str]]:
    asked: list[str] = []

    def known(ip: str) -> bool:
        asked.append(ip)
        return ip == TRUNK[0]

    base = make_core(**kw)
    return ProxyCore(base.cfg, known, rng=random.Random(7)), asked


@pytest.mark.parametrize("code", [0, 403])
def test_the_trunk_directory_is_asked_once_per_message(code: int) -> None:
    core, asked = _counting_core(unknown_source_code=code)
    (a,) = core.receive(invite(), TRUNK, "udp", None, T0)
    assert isinstance(a, Admit) and asked == [TRUNK[0]]
    asked.clear()
    core.receive(invite(call_id="other"), ("10.9.9.9", 5060), "udp", None, T0)
    assert asked == ["10.9.9.9"]
    asked.clear()
    core.receive(b"INVITE nonsense\r\n\r\n", TRUNK, "udp", None, T0)  # malformed: one look-up too
    assert asked == [TRUNK[0]]
    asked.clear()
    core.receive(invite(call_id="c3"), TRUNK, "udp", None, T0, True)  # steered in: not screened early
    assert asked == [TRUNK[0]]


def test_responses_and_next_hops_skip_the_early_look_up() -> None:
    core, asked = _counting_core()
    core.receive(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKx\r\n\r\n", ("10.9.9.9", 5060), "udp", None, T0)
    assert asked == []
    assert core.screen(invite(), HOP1[0], T0) is False and asked == []
    assert core.screen(invite(), "10.9.9.9", T0) is True and asked == ["10.9.9.9"]
