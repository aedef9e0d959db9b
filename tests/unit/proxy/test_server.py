"""INVITE server transactions: decisions, refusals, retransmissions, ACK, CANCEL, expiry (RFC 3261 §17.2.1)."""

from __future__ import annotations

from gateway.proxy import Admit, Refused, Release
from policy.decision import reject
from tests.unit.proxy._support import (
    ADMIT,
    HOP1,
    T0,
    TRUNK,
    TRUNK_IP,
    WALL,
    first_line,
    headers,
    hget,
    invite,
    make_core,
    only_send,
    param,
    request,
    respond,
    sends,
    start_call,
    status_of,
)


def test_rejection_retransmission_and_ack() -> None:
    core = make_core()
    (adm,) = core.receive(invite(), TRUNK, "udp", None, T0)
    assert isinstance(adm, Admit)
    assert core.receive(invite(), TRUNK, "udp", None, T0 + 0.01) == []  # pending: absorbed
    assert core.stats["retransmission_absorbed"] == 1
    dec = reject("quiet_hours", retry_after=3600, trunk_id="t-a")
    s = only_send(core.decided(adm.key, dec, T0 + 0.02))
    assert s.dest == TRUNK and status_of(s.data) == 603
    assert hget(s.data, "Reason") == 'SIP;cause=603;text="quiet_hours"'
    assert hget(s.data, "Retry-After") == "3600"
    to = hget(s.data, "To")
    assert to is not None and param(to, "tag")
    # Retransmitted INVITE: exactly the same bytes, and no second Admit.
    again = core.receive(invite(), TRUNK, "udp", None, T0 + 0.3)
    assert only_send(again).data == s.data
    # Timer G retransmits until the ACK (backed off by the retransmission just answered).
    assert core.tick(T0 + 0.53) == []
    g = only_send(core.tick(T0 + 1.31))
    assert g.data == s.data
    ack = request("ACK", to_tag=param(to, "tag"))
    assert core.receive(ack, TRUNK, "udp", None, T0 + 1.4) == []
    assert core.tick(T0 + 3) == []
    core.tick(T0 + 6)
    assert core.in_flight() == 1  # Timer I (T4 = 5 s) absorbs ACK retransmissions
    core.tick(T0 + 6.5)
    assert core.in_flight() == 0


def test_retransmitting_client_gets_one_final_per_invite() -> None:
    """The integration test's pattern: four INVITEs 0.4 s apart, four identical finals, then the ACK."""
    core = make_core()
    (adm,) = core.receive(invite(), TRUNK, "udp", None, T0)
    assert isinstance(adm, Admit)
    finals = sends(core.decided(adm.key, reject("consent_unknown", trunk_id="t-a"), T0 + 0.005))
    t = T0
    for i in range(1, 16 * 4):
        t = T0 + i * 0.025
        if i % 16 == 0:
            finals += sends(core.receive(invite(), TRUNK, "udp", None, t))
        finals += sends(core.tick(t))
    assert len(finals) == 4 and len({f.data for f in finals}) == 1
    to = hget(finals[0].data, "To") or ""
    assert core.receive(request("ACK", to_tag=param(to, "tag")), TRUNK, "udp", None, t + 0.01) == []
    assert all(core.tick(t + k * 0.1) == [] for k in range(1, 10))


def test_reject_with_code_zero_is_silent() -> None:
    core = make_core()
    (adm,) = core.receive(invite(), TRUNK, "udp", None, T0)
    assert isinstance(adm, Admit)
    assert core.decided(adm.key, reject("unknown_source"), T0) == []
    assert core.receive(invite(), TRUNK, "udp", None, T0 + 0.5) == []


def test_timer_h_ends_unacked_rejection() -> None:
    core = make_core()
    (adm,) = core.receive(invite(), TRUNK, "udp", None, T0)
    assert isinstance(adm, Admit)
    core.decided(adm.key, reject("callee_dnc", trunk_id="t-a"), T0)
    n = 0
    t = T0
    while t < T0 + 40:
        t += 0.02
        n += len(core.tick(t))
    # 0.5, 1, 2, 4, 4, ... until 32 s
    assert 8 <= n <= 12
    assert core.in_flight() == 0


def test_decided_for_unknown_key_releases_admission() -> None:
    core = make_core()
    assert core.decided("nope|x|h:1", ADMIT, T0) == [Release("t-a", "nope")]
    assert core.decided("nope|x|h:1", reject("callee_dnc"), T0) == []


def test_cancel_while_pending() -> None:
    core = make_core()
    (adm,) = core.receive(invite(), TRUNK, "udp", None, T0)
    assert isinstance(adm, Admit)
    acts = core.receive(request("CANCEL"), TRUNK, "udp", None, T0 + 0.01)
    codes = sorted((hget(s.data, "CSeq"), status_of(s.data)) for s in sends(acts))
    assert codes == [("1 CANCEL", 200), ("1 INVITE", 487)]
    assert core.decided(adm.key, ADMIT, T0 + 0.02) == [Release("t-a", "1-123@10.0.0.1")]
    assert core.stats["forwarded_requests"] == 0


def test_cancel_unknown_gets_481() -> None:
    core = make_core()
    s = only_send(core.receive(request("CANCEL"), TRUNK, "udp", None, T0))
    assert status_of(s.data) == 481


def test_invite_retransmission_after_forwarding_replays_provisional() -> None:
    core = make_core()
    _, fwd = start_call(core)
    s = only_send(core.receive(invite(), TRUNK, "udp", None, T0 + 0.5))
    assert status_of(s.data) == 100
    core.receive(respond(fwd.data, 180, "Ringing"), HOP1, "udp", None, T0 + 0.6, True)
    s = only_send(core.receive(invite(), TRUNK, "udp", None, T0 + 1))
    assert status_of(s.data) == 180


def test_max_forwards_zero_and_loop() -> None:
    core = make_core()
    s = only_send(core.receive(invite(max_forwards="0"), TRUNK, "udp", None, T0))
    assert status_of(s.data) == 483 and hget(s.data, "Reason") == 'SIP;cause=483;text="too_many_hops"'
    looped = invite().replace(
        b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-123-1-0",
        b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-123-1-0\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.2:40000;branch=z9hG4bKcagt0x1abc;rport",
    )
    s = only_send(core.receive(looped, TRUNK, "udp", None, T0))
    assert status_of(s.data) == 482 and hget(s.data, "Reason") == 'SIP;cause=482;text="loop_detected"'
    assert core.in_flight() == 0


def test_overload() -> None:
    core = make_core(max_transactions=2)
    for i in range(2):
        (a,) = core.receive(invite(call_id=f"c{i}"), TRUNK, "udp", None, T0)
        assert isinstance(a, Admit)
    s = only_send(core.receive(invite(call_id="c3"), TRUNK, "udp", None, T0))
    assert status_of(s.data) == 503 and hget(s.data, "Retry-After") == "1"
    assert hget(s.data, "Reason") == 'SIP;cause=503;text="overload"'


def test_pending_transactions_expire() -> None:
    core = make_core()
    (a,) = core.receive(invite(), TRUNK, "udp", None, T0)
    assert isinstance(a, Admit)
    core.tick(T0 + 33)
    assert core.in_flight() == 0
    assert core.decided(a.key, ADMIT, T0 + 34) == [Release("t-a", "1-123@10.0.0.1")]


def test_core_refusals_are_decisions_to_audit() -> None:
    """400 / 482 / 483 / 503 answered by the core come out as ``Refused`` too (SPEC §7), without a transaction."""
    looped = invite().replace(
        b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-123-1-0",
        b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-123-1-0\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.2:40000;branch=z9hG4bKcagt0x1abc;rport",
    )
    cases = [(invite(max_forwards="0"), 483, "too_many_hops", None), (looped, 482, "loop_detected", None)]
    for data, code, reason, retry in cases:
        core = make_core()
        acts = core.receive(data, TRUNK, "udp", None, T0)
        (s,) = sends(acts)
        (r,) = [a for a in acts if isinstance(a, Refused)]
        assert status_of(s.data) == code and r.decision.sip_code == code and r.decision.reason == reason
        assert not r.decision.admit and r.decision.retry_after == retry
        assert r.call.call_id == "1-123@10.0.0.1" and r.call.callee == "13800138000"
        assert r.call.received_at == WALL + T0 and r.record_id.startswith("gw-0-")
        assert core.in_flight() == 0
        # A retransmission is refused (and audited) again: there is no transaction to absorb it.
        again = core.receive(data, TRUNK, "udp", None, T0 + 0.5)
        assert [status_of(x.data) for x in sends(again)] == [code]
    core = make_core(max_transactions=1)
    core.receive(invite(call_id="c1"), TRUNK, "udp", None, T0)
    acts = core.receive(invite(call_id="c2"), TRUNK, "udp", None, T0)
    (r,) = [a for a in acts if isinstance(a, Refused)]
    assert (r.decision.reason, r.decision.sip_code, r.decision.retry_after) == ("overload", 503, 1)
    assert core.in_flight() == 1


def test_refusals_and_policy_rejections_build_the_same_response() -> None:
    """One function turns a Decision into a response: the core's 503 and the worker's shed 503 match."""
    core = make_core(max_transactions=1)
    (a,) = core.receive(invite(call_id="c1"), TRUNK, "udp", None, T0)
    assert isinstance(a, Admit)
    shed = only_send(core.decided(a.key, reject("overload", retry_after=1), T0))
    own = sends(core.receive(invite(call_id="c1", branch="z9hG4bK-other"), TRUNK, "udp", None, T0))[0]
    strip = {"Call-ID", "To", "Via"}
    assert first_line(shed.data) == first_line(own.data) == "SIP/2.0 503 Service Unavailable"
    assert [h for h in headers(shed.data) if h[0] not in strip] == [h for h in headers(own.data) if h[0] not in strip]


def test_record_ids_share_one_random_part_per_core_life() -> None:
    """``node-worker-counter-run``: the same shape as before (every reader parses it), the counter
    tells a life's records apart, ``run`` (drawn once per core) its lives: a restarted worker,
    whose counter starts again, gets other ids. One run a life is what the archive stores cheaply."""
    import random
    import re

    from gateway.proxy import ProxyCore

    def ids(core: ProxyCore, n: int) -> list[str]:
        out = []
        for i in range(n):
            (adm,) = core.receive(invite(call_id=f"c{i}", branch=f"z9hG4bK-{i}"), TRUNK, "udp", None, T0 + i)
            assert isinstance(adm, Admit)
            out.append(adm.record_id)
        return out

    first = make_core()
    life1 = ids(first, 5)
    refused = [a for a in first.receive(invite(max_forwards="0"), TRUNK, "udp", None, T0) if isinstance(a, Refused)]
    life1.append(refused[0].record_id)  # the core's own refusals take their ids from the same place
    shape = re.compile(r"gw-0-([1-9a-f][0-9a-f]*)-([0-9a-f]{8})")
    parts = [shape.fullmatch(r) for r in life1]
    assert all(parts), life1
    assert len({m.group(2) for m in parts if m}) == 1  # one run for the life
    counters = [int(m.group(1), 16) for m in parts if m]
    assert counters == sorted(counters) and len(set(counters)) == len(counters)
    # the next life of the same worker: its counter starts again, its run tells it apart
    again = ProxyCore(first.shared.cfg, lambda ip: ip == TRUNK_IP, rng=random.Random(8), wall_offset=WALL)
    life2 = ids(again, 5)
    assert [r.rsplit("-", 1)[0] for r in life2] == [r.rsplit("-", 1)[0] for r in life1[:5]]
    assert not set(life1) & set(life2)
