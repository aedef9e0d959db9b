"""What a lingering transaction keeps, and what the timer heap keeps for it.

After its final response a server transaction lingers 32 s only to absorb or
answer retransmissions, so it must not hold the INVITE any more; and the
timer heap must not keep one stale entry per call for 180 s (Timer C).
"""

from __future__ import annotations

from gateway.proxy import Admit
from policy.decision import admitted, reject
from tests.unit.proxy._support import HOP1, TRUNK, invite, make_core, respond, sends, status_of


def _answered_calls(n: int) -> tuple[object, list[bytes]]:
    core = make_core()
    invites = []
    for i in range(n):
        inv = invite(call_id=f"m{i}@x", branch=f"z9hG4bK-m{i}")
        invites.append(inv)
        adm = next(a for a in core.receive(inv, TRUNK, "udp", None, 1000.0) if isinstance(a, Admit))
        fwd = sends(core.decided(adm.key, admitted(trunk_id="t-a"), 1000.0))[1].data
        core.receive(respond(fwd, 180, "Ringing"), HOP1, "udp", None, 1000.0, True)
        core.receive(respond(fwd, 200, "OK"), HOP1, "udp", None, 1000.0, True)
    return core, invites


def test_answered_call_leaves_a_tomb_that_still_absorbs_retransmissions() -> None:
    # Since the tombs (gateway/proxy/linger.py): an answered call keeps no transaction at all.
    core, invites = _answered_calls(3)
    assert not core.shared.servers and not core.shared.clients
    assert len(core.servers.graves) == 3 and core.in_flight() == 3
    assert core.receive(invites[0], TRUNK, "udp", None, 1001.0) == []
    assert core.stats["retransmission_absorbed"] == 1


def test_rejected_transaction_keeps_only_its_final_for_retransmissions() -> None:
    core = make_core()
    inv = invite()
    adm = next(a for a in core.receive(inv, TRUNK, "udp", None, 1000.0) if isinstance(a, Admit))
    final = sends(core.decided(adm.key, reject("consent_unknown", trunk_id="t-a"), 1000.0))[0].data
    txn = core.shared.servers[adm.key]
    assert txn.req is None and txn.last == final
    again = sends(core.receive(inv, TRUNK, "udp", None, 1000.1))
    assert [s.data for s in again] == [final] and status_of(final) == 608


def test_answered_calls_leave_one_timer_entry_each_and_timers_still_fire() -> None:
    core, _ = _answered_calls(500)
    # One live entry per server and client transaction; no Timer C entry 180 s out.
    assert len(core.shared.timers.entries()) <= 2 * 500
    assert max(e[0] for e in core.shared.timers.entries()) < 1000.0 + 40
    core.tick(1001.0)
    assert core.in_flight() == 500
    core.tick(1000.0 + 31.9)
    assert core.in_flight() == 500
    core.tick(1000.0 + 32.1)
    assert core.in_flight() == 0 and not core.shared.clients
    assert not core.shared.timers.entries()


def test_calls_answered_after_ringing_leave_no_timer_c_entries() -> None:
    # Answered 2 s after the 180, with ticks in between (as in a worker): each call's
    # Timer C entry (180 s out) goes stale at the 2xx; the heap compacts them away.
    core = make_core()
    now = 1000.0
    fwds = []
    for i in range(3000):
        inv = invite(call_id=f"r{i}@x", branch=f"z9hG4bK-r{i}")
        adm = next(a for a in core.receive(inv, TRUNK, "udp", None, now) if isinstance(a, Admit))
        fwd = sends(core.decided(adm.key, admitted(trunk_id="t-a"), now))[1].data
        core.receive(respond(fwd, 180, "Ringing"), HOP1, "udp", None, now, True)
        fwds.append(fwd)
        now += 0.001
        core.tick(now)
    now += 2.0
    core.tick(now)
    for fwd in fwds:
        core.receive(respond(fwd, 200, "OK"), HOP1, "udp", None, now, True)
    assert not core.shared.servers and not core.shared.clients
    assert len(core.shared.timers.entries()) <= 1100  # was 3,000 (Timer C, 180 s out) before compaction
    core.tick(now + 32.1)
    assert core.in_flight() == 0
