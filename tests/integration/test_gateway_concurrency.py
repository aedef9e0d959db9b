"""Trunk max_concurrent end to end: a slot is freed by the BYE, by CANCEL and by a final error."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.harness import (
    GatewayProc,
    SippUas,
    raw_invite,
    recv_all,
    run_uac,
    standard_policy,
    status_code,
)

pytestmark = pytest.mark.integration


def _gateway(redis_url: str, tmp_path: Path, peer: SippUas) -> GatewayProc:
    gw = GatewayProc(redis_url, tmp_path / "gw", [peer.hop])
    gw.state_dir.mkdir()
    gw.start()
    return gw


@pytest.fixture
def uas(tmp_path: Path) -> Iterator[SippUas]:
    peer = SippUas(tmp_path).start()
    yield peer
    peer.stop()


def test_bye_releases_the_slot(redis_url: str, tmp_path: Path, uas: SippUas) -> None:
    rows = standard_policy(redis_url, callees=10, max_concurrent=1)
    gw = _gateway(redis_url, tmp_path, uas)
    try:
        # One call at a time: each is admitted only if the previous BYE freed the slot.
        result = run_uac(tmp_path, gw.port, rows, calls=10, rate=5, limit=1)
        assert result.failed == 0 and result.successful == 10, result.stdout
        assert gw.metric("cag_decisions_total", reason="trunk_concurrent") == 0
    finally:
        gw.stop()


def test_cancel_releases_the_slot(redis_url: str, tmp_path: Path) -> None:
    rows = standard_policy(redis_url, callees=5, max_concurrent=1)
    peer = SippUas(tmp_path, scenario="uas_ring.xml").start()
    gw = _gateway(redis_url, tmp_path, peer)
    try:
        result = run_uac(tmp_path, gw.port, rows, calls=4, rate=2, limit=1, scenario="uac_cancel.xml")
        assert result.failed == 0 and result.successful == 4, result.stdout
        assert gw.metric("cag_decisions_total", reason="trunk_concurrent") == 0
    finally:
        gw.stop()
        peer.stop()


def test_limit_is_enforced_while_calls_are_up(redis_url: str, tmp_path: Path) -> None:
    standard_policy(redis_url, callees=5, max_concurrent=1)
    peer = SippUas(tmp_path, scenario="uas_ring.xml").start()  # rings until CANCEL: the slot stays taken
    gw = _gateway(redis_url, tmp_path, peer)
    port = free_port()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", port))
            first = raw_invite(port, gw.port, caller="95500", callee="+8613800000000", token="tok-0",
                            call_id="conc-1@test", branch="z9hG4bK-conc-1")
            s.sendto(first, ("127.0.0.1", gw.port))
            assert 180 in [status_code(m) for m in recv_all(s, 0.5)]
            s.sendto(raw_invite(port, gw.port, caller="95500", callee="+8613800000001", token="tok-1",
                             call_id="conc-2@test", branch="z9hG4bK-conc-2"), ("127.0.0.1", gw.port))
            finals = [m.decode() for m in recv_all(s, 0.5) if status_code(m) >= 200]
            assert len(finals) == 1 and finals[0].startswith("SIP/2.0 603 ")
            assert 'text="trunk_concurrent"' in finals[0] and "Retry-After:" in finals[0]
    finally:
        gw.stop()
        peer.stop()
