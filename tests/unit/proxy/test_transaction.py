"""INVITE transaction state machines: every legal transition, and an illegal one raises where it happens.

Driven directly (no core): a transaction's methods are the only way its
state changes, so they are the machine.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.proxy.transaction import (
    CLIENT_MOVES,
    INF,
    SERVER_MOVES,
    T1,
    T2,
    T4,
    TIMER_D,
    TIMER_F,
    TIMER_H,
    ClientTxn,
    CState,
    ServerTxn,
    SState,
    TransactionError,
)
from gateway.sip import parse
from policy.model import CallAttempt
from tests.unit.proxy._support import TRUNK, invite

NOW = 100.0
FIELDS = ("sip:a@b", (), "<sip:c@d>;tag=1", "<sip:a@b>", 1)


def server(transport: str = "udp") -> ServerTxn:
    req = parse(invite())
    call = CallAttempt(call_id="1-123@10.0.0.1", branch="b", source_ip=TRUNK[0], source_port=TRUNK[1],
                       callee="13800138000", from_user="1058001234", pai_user=None)
    return ServerTxn("k", req, call, "rid", TRUNK, TRUNK, transport, None, "tag", NOW)  # type: ignore[arg-type]


def client(transport: str = "udp", srv: ServerTxn | None = None) -> ClientTxn:
    return ClientTxn("br", srv or server(), 0, ("10.0.0.9", 5070), transport, b"INVITE", "via", FIELDS, NOW, 1.0)


# ---- server side: how to reach each state, and the method that makes each move

def _server_in(state: SState, transport: str = "udp") -> ServerTxn:
    t = server(transport)
    if state == SState.PENDING:
        return t
    if state == SState.DROPPED:
        t.drop(NOW)
        return t
    if state in (SState.COMPLETED, SState.CONFIRMED):
        t.complete(b"SIP/2.0 603 Decline", NOW)
        if state == SState.CONFIRMED:
            t.on_ack(NOW)
        return t
    t.forward("trunk", b"SIP/2.0 100 Trying")
    if state == SState.ACCEPTED:
        t.accept(NOW, 1e9)
    return t


SERVER_MOVE: dict[SState, Callable[[ServerTxn], None]] = {
    SState.FORWARDED: lambda t: t.forward("trunk", b"100"),
    SState.COMPLETED: lambda t: t.complete(b"final", NOW + 1),
    SState.DROPPED: lambda t: t.drop(NOW + 1),
    SState.ACCEPTED: lambda t: t.accept(NOW + 1, 1e9),
    SState.CONFIRMED: lambda t: t.on_ack(NOW + 1),
}


@pytest.mark.parametrize(("old", "new"), sorted(SERVER_MOVES))
def test_every_legal_server_move(old: SState, new: SState) -> None:
    t = _server_in(old)
    SERVER_MOVE[new](t)
    assert t.state == new


@pytest.mark.parametrize(
    ("old", "new"),
    [(o, n) for o in SState for n in SERVER_MOVE if (o, n) not in SERVER_MOVES and n != SState.CONFIRMED],
)
def test_illegal_server_moves_raise(old: SState, new: SState) -> None:
    t = _server_in(old)
    with pytest.raises(TransactionError):
        SERVER_MOVE[new](t)
    assert t.state == old


def test_ack_outside_completed_changes_nothing() -> None:
    """An ACK is absorbed in Confirmed / Dropped (retransmitted ACKs); only Completed moves."""
    for state in (SState.CONFIRMED, SState.DROPPED):
        t = _server_in(state)
        end = t.end_at
        t.on_ack(NOW + 2)
        assert t.state == state and t.end_at == end


def test_server_timers_follow_the_state() -> None:
    t = server()
    assert t.end_at == NOW + TIMER_H and t.next_due() == NOW + TIMER_H  # the pending bound
    t.complete(b"final", NOW)
    assert (t.g_at, t.end_at, t.last, t.req, t.call) == (NOW + T1, NOW + TIMER_H, b"final", None, None)
    t.back_off(NOW + T1)
    assert t.g_at == NOW + T1 + 2 * T1
    for _ in range(5):
        t.back_off(NOW)
    assert t.g_iv == T2  # capped
    t.on_ack(NOW + 3)
    assert t.g_at == INF and t.end_at == NOW + 3 + T4  # Timer I
    tcp = server("tcp")
    tcp.complete(b"final", NOW)
    assert tcp.g_at == INF  # no retransmissions over TCP
    tcp.on_ack(NOW + 1)
    assert tcp.end_at == NOW + 1  # and no Timer I
    acc = _server_in(SState.ACCEPTED)
    assert acc.answered_at == 1e9 and acc.last is None and acc.req is None and acc.end_at == NOW + TIMER_H
    with pytest.raises(TransactionError):
        acc.request()


# ---- client side

def _client_in(state: CState) -> ClientTxn:
    c = client()
    if state == CState.CALLING:
        return c
    if state == CState.PROCEEDING:
        c.on_provisional(NOW, 180.0, 180)
    elif state == CState.ACCEPTED:
        c.on_2xx(NOW)
    elif state == CState.COMPLETED:
        c.on_final(b"ACK", NOW)
    elif state == CState.ABANDONED:
        c.abandon(NOW)
    return c


CLIENT_MOVE: dict[CState, Callable[[ClientTxn], None]] = {
    CState.PROCEEDING: lambda c: c.on_provisional(NOW + 1, 180.0, 183),
    CState.ACCEPTED: lambda c: c.on_2xx(NOW + 1),
    CState.COMPLETED: lambda c: c.on_final(b"ACK", NOW + 1),
    CState.ABANDONED: lambda c: c.abandon(NOW + 1),
}


@pytest.mark.parametrize(("old", "new"), sorted(CLIENT_MOVES))
def test_every_legal_client_move(old: CState, new: CState) -> None:
    c = _client_in(old)
    CLIENT_MOVE[new](c)
    assert c.state == new


@pytest.mark.parametrize(
    ("old", "new"),
    [(o, n) for o in CState for n in CLIENT_MOVE
     if (o, n) not in CLIENT_MOVES and not (o == n == CState.PROCEEDING)],
)
def test_illegal_client_moves_raise(old: CState, new: CState) -> None:
    c = _client_in(old)
    with pytest.raises(TransactionError):
        CLIENT_MOVE[new](c)
    assert c.state == old


def test_client_timers_follow_the_state() -> None:
    c = client()
    assert (c.a_at, c.hop_at, c.c_at) == (NOW + T1, NOW + 1.0, INF)
    assert client("tcp").a_at == INF  # Timer A is for UDP only
    c.on_timer_a(NOW + T1)
    assert c.a_at == NOW + T1 + 2 * T1
    c.on_provisional(NOW + 1, 180.0, 100)
    assert (c.a_at, c.hop_at, c.c_at) == (INF, INF, NOW + 181)
    assert c.got_response and not c.got_provisional  # a 100 allows CANCEL, not "no more failover"
    c.on_provisional(NOW + 2, 180.0, 180)  # more provisionals: Proceeding stays, Timer C restarts
    assert c.state == CState.PROCEEDING and c.got_provisional and c.c_at == NOW + 182
    c.cancel_sent(b"CANCEL", NOW + 3)
    assert c.cancel_at == NOW + 3 + T1 and not c.cancel_pending
    assert c.on_cancel_timer(NOW + 3.5) and c.cancel_at == NOW + 3.5 + 2 * T1
    c.on_cancel_answered()
    assert c.cancel_at == INF
    c.on_final(b"ACK", NOW + 4)
    assert c.next_due() == c.end_at == NOW + 4 + TIMER_D and c.data == b"" and c.ack == b"ACK"


def test_cancel_retransmission_gives_up() -> None:
    c = _client_in(CState.PROCEEDING)
    c.cancel_sent(b"CANCEL", NOW)
    at, sent = c.cancel_at, 0
    while at < NOW + 100 and c.on_cancel_timer(at):
        sent += 1
        at = c.cancel_at
    # Timer E doubling from T1, capped at T2, until Timer F (64·T1): again at +0.5, 1.5, 3.5, 7.5 … 31.5.
    assert c.cancel_at == INF and at >= NOW + TIMER_F and sent == 10
