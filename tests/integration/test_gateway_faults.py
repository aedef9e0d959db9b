"""Redis going away, visibly: fail-closed 503, fail-open admits, recovery; shadow mode.

Each test runs its own redis-server so it can stop and restart it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.embedded_redis import EmbeddedRedis
from tests.conftest import free_port
from tests.integration.harness import (
    GatewayProc,
    SippUas,
    call_once,
    raw_invite,
    recv_all,
    standard_policy,
    status_code,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def uas(tmp_path: Path) -> Iterator[SippUas]:
    peer = SippUas(tmp_path).start()
    yield peer
    peer.stop()


def _start(own_redis: EmbeddedRedis, tmp_path: Path, uas: SippUas, *extra: str) -> GatewayProc:
    standard_policy(own_redis.url, callees=1)
    gw = GatewayProc(own_redis.url, tmp_path / "gw", [uas.hop], extra=list(extra))
    gw.state_dir.mkdir()
    gw.start()
    return gw


def test_fail_closed_answers_503_then_recovers(own_redis: EmbeddedRedis, tmp_path: Path, uas: SippUas) -> None:
    gw = _start(own_redis, tmp_path, uas, "--fail-mode", "closed", "--budget-ms", "50")
    try:
        assert status_code(call_once(gw, "tok-0", 1)[0]) == 200
        own_redis.stop()
        t0 = time.monotonic()
        finals = call_once(gw, "tok-0", 2, wait=1.0)
        assert finals, "every INVITE gets an answer while Redis is away"
        text = finals[0].decode()
        assert text.startswith("SIP/2.0 503 ")
        assert 'text="store_unavailable"' in text and "Retry-After: 1" in text
        assert time.monotonic() - t0 < 0.5, "answered within the budget, not after a timeout"
        own_redis.start()
        t_back = time.monotonic()
        deadline = t_back + 5.0
        status = 0
        n = 3
        while time.monotonic() < deadline:
            finals = call_once(gw, "tok-0", n, wait=0.5)
            n += 1
            if finals and status_code(finals[0]) == 200:
                status = 200
                break
        assert status == 200, "decisions resume within 5 s of Redis answering"
        time.sleep(1.2)
        assert gw.metric("cag_proxy_events_total", event="fail_closed") >= 1
    finally:
        gw.stop()


def test_fail_open_admits_on_memory_checks_only(own_redis: EmbeddedRedis, tmp_path: Path, uas: SippUas) -> None:
    gw = _start(own_redis, tmp_path, uas, "--fail-mode", "open")
    try:
        own_redis.stop()
        # A consent Redis would reject (unknown token) is admitted: consent needs Redis.
        finals = call_once(gw, "no-such-token", 1)
        assert finals and status_code(finals[0]) == 200
        # ...but an in-memory check still rejects: an unfiled caller.
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", port))
            s.sendto(raw_invite(port, gw.port, caller="95577", callee="+8613800000000", token="tok-0",
                             call_id="fo-unfiled@test", branch="z9hG4bK-fo-unfiled"), ("127.0.0.1", gw.port))
            finals = [m for m in recv_all(s, 1.0) if status_code(m) >= 200]
        assert finals and 'text="caller_not_filed"' in finals[0].decode()
        time.sleep(1.2)
        assert gw.metric("cag_proxy_events_total", event="fail_open") >= 1
    finally:
        gw.stop()


def test_shadow_mode_forwards_what_it_would_reject(own_redis: EmbeddedRedis, tmp_path: Path, uas: SippUas) -> None:
    gw = _start(own_redis, tmp_path, uas, "--shadow")
    try:
        finals = call_once(gw, "no-such-token", 1)
        assert finals and status_code(finals[0]) == 200
        time.sleep(1.2)
        assert gw.metric("cag_proxy_events_total", event="shadow_would_reject") == 1
    finally:
        gw.stop()
