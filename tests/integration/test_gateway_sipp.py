"""The gateway end to end: real SIPp caller and callee, real redis-server, two workers."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.harness import (
    ROOT,
    GatewayProc,
    SippUas,
    raw_invite,
    recv_all,
    run_uac,
    standard_policy,
    status_code,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def uas(tmp_path: Path) -> Iterator[SippUas]:
    peer = SippUas(tmp_path).start()
    yield peer
    peer.stop()


@pytest.fixture
def gateway(redis_url: str, tmp_path: Path, uas: SippUas) -> Iterator[GatewayProc]:
    standard_policy(redis_url, callees=1)  # /readyz wants reference data loaded
    gw = GatewayProc(redis_url, tmp_path / "gw", [uas.hop])
    gw.state_dir.mkdir()
    gw.start()
    yield gw
    gw.stop()


def test_thousand_calls_through_two_workers(redis_url: str, gateway: GatewayProc, uas: SippUas, tmp_path: Path) -> None:
    rows = standard_policy(redis_url, callees=50)
    result = run_uac(tmp_path, gateway.port, rows, calls=1000, rate=250, limit=300)
    assert result.failed == 0, result.stdout
    assert result.successful == 1000, result.stdout
    time.sleep(1.2)  # counters reach /metrics once a second (the workers' Meter)
    assert gateway.metric("cag_decisions_total", decision="admit") == 1000
    # One SIPp caller is one source address: the kernel hands all of it to one worker, which
    # steers each request to the worker owning its Call-ID (gateway/proxy/steer.py).
    steered_out = gateway.metric("cag_proxy_events_total", event="steered_out")
    steered_in = gateway.metric("cag_proxy_events_total", event="steered_in")
    requests = 3000  # INVITE, ACK, BYE per call
    assert steered_out == steered_in, (steered_out, steered_in)
    assert 0.3 * requests < steered_in < 0.7 * requests, steered_in
    assert gateway.metric("cag_proxy_events_total", event="steer_dropped") == 0


def test_no_steer_leaves_each_source_on_the_worker_the_kernel_picked(
    redis_url: str, uas: SippUas, tmp_path: Path
) -> None:
    rows = standard_policy(redis_url, callees=20)
    gw = GatewayProc(redis_url, tmp_path / "gw", [uas.hop], extra=("--no-steer",))
    gw.state_dir.mkdir()
    try:
        gw.start()
        result = run_uac(tmp_path, gw.port, rows, calls=100, rate=100)
        assert result.failed == 0 and result.successful == 100, result.stdout
        time.sleep(1.2)
        assert gw.metric("cag_proxy_events_total", event="steered_out") == 0
        assert gw.metric("cag_proxy_events_total", event="steered_in") == 0
    finally:
        gw.stop()


def test_rejection_retransmissions_get_same_answer_and_one_decision(
    redis_url: str, gateway: GatewayProc, tmp_path: Path
) -> None:
    standard_policy(redis_url, callees=1)
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))
        msg = raw_invite(port, gateway.port, caller="95500", callee="+8613800000000", token="no-such-token",
                      call_id="rej-1@test", branch="z9hG4bK-rej-1")
        finals: list[bytes] = []
        for _ in range(4):  # the original and three retransmissions
            s.sendto(msg, ("127.0.0.1", gateway.port))
            finals += [m for m in recv_all(s, 0.4) if status_code(m) >= 200]
        assert len(finals) == 4
        assert all(f == finals[0] for f in finals), "retransmissions must get the identical final response"
        first = finals[0].decode()
        assert first.startswith("SIP/2.0 608 ")
        assert 'Reason: SIP;cause=608;text="consent_unknown"' in first
        # the ACK for the rejection is absorbed (no answer)
        to_line = re.search(r"^To: (.*)$", first, re.M)
        assert to_line
        ack = (
            f"ACK sip:+8613800000000@127.0.0.1:{gateway.port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-rej-1;rport\r\n"
            f"From: <sip:95500@127.0.0.1:{port};user=phone>;tag=abc123\r\n"
            f"To: {to_line.group(1).strip()}\r\nCall-ID: rej-1@test\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        s.sendto(ack, ("127.0.0.1", gateway.port))
        assert recv_all(s, 0.5) == []
    time.sleep(1.2)  # metrics flush once a second
    assert gateway.metric("cag_decisions_total", reason="consent_unknown") == 1


def test_forged_to_tag_never_reaches_next_hop(redis_url: str, gateway: GatewayProc, uas: SippUas) -> None:
    standard_policy(redis_url, callees=1)
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))
        for i, route in enumerate(["", f"<sip:127.0.0.1:{gateway.port};lr;cag=forged.0.T1.AAAA>"]):
            msg = raw_invite(port, gateway.port, caller="95500", callee="+8613800000000", token="tok-0",
                          call_id=f"forged-{i}@test", branch=f"z9hG4bK-forged-{i}", to_tag="xyz", route=route)
            s.sendto(msg, ("127.0.0.1", gateway.port))
            answers = recv_all(s, 0.5)
            assert [status_code(a) for a in answers if status_code(a) >= 200] == [481]
    time.sleep(1.2)
    assert uas.calls_seen() == 0


def test_cancel_during_ringing_ends_with_487(redis_url: str, tmp_path: Path) -> None:
    rows = standard_policy(redis_url, callees=5)
    peer = SippUas(tmp_path, scenario="uas_ring.xml").start()
    gw = GatewayProc(redis_url, tmp_path / "gw", [peer.hop])
    gw.state_dir.mkdir()
    try:
        gw.start()
        result = run_uac(tmp_path, gw.port, rows, calls=5, rate=5, scenario="uac_cancel.xml")
        assert result.failed == 0 and result.successful == 5, result.stdout
    finally:
        gw.stop()
        peer.stop()


def test_tcp_calls(redis_url: str, tmp_path: Path) -> None:
    rows = standard_policy(redis_url, callees=10)
    peer = SippUas(tmp_path, transport="t1").start()
    gw = GatewayProc(redis_url, tmp_path / "gw", [peer.hop])
    gw.state_dir.mkdir()
    try:
        gw.start()
        result = run_uac(tmp_path, gw.port, rows, calls=50, rate=25, transport="t1")
        assert result.failed == 0 and result.successful == 50, result.stdout
    finally:
        gw.stop()
        peer.stop()


def test_failover_and_recovery_of_next_hops(redis_url: str, tmp_path: Path) -> None:
    rows = standard_policy(redis_url, callees=20)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    hop_a = SippUas(tmp_path / "a").start()
    hop_b = SippUas(tmp_path / "b").start()
    gw = GatewayProc(redis_url, tmp_path / "gw", [hop_a.hop, hop_b.hop])
    gw.state_dir.mkdir()
    try:
        gw.start()
        first = run_uac(tmp_path, gw.port, rows, calls=40, rate=40)
        assert first.failed == 0, first.stdout
        hop_a.stop()
        time.sleep(2.0)
        # Calls placed 2 s after the loss: the first INVITE to the dead hop may
        # still cost a hop timeout, but no call fails.
        after = run_uac(tmp_path, gw.port, rows, calls=40, rate=20)
        assert after.failed == 0, after.stdout
        seen_b = hop_b.calls_seen()
        # Bring hop A back on the same port: OPTIONS probes mark it up again.
        revived = SippUas(tmp_path / "a", port=hop_a.port).start()
        time.sleep(2.5)
        again = run_uac(tmp_path, gw.port, rows, calls=60, rate=30)
        assert again.failed == 0, again.stdout
        time.sleep(1.5)
        assert revived.calls_seen() > 0, "the recovered hop is used again"
        assert hop_b.calls_seen() > seen_b
        revived.stop()
    finally:
        gw.stop()
        hop_b.stop()
        hop_a.stop()


def test_garbage_flood_leaves_calls_working(redis_url: str, gateway: GatewayProc, tmp_path: Path) -> None:
    rows = standard_policy(redis_url, callees=10)
    junk = [
        b"", b"\x00" * 100, b"INVITE", b"INVITE sip:x SIP/2.0\r\n\r\n", b"SIP/2.0 200\r\n\r\n",
        b"\xff\xfe" * 700, b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n" + b"A: b\r\n" * 400 + b"\r\n",
        b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 999999\r\n\r\nxx",
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(3000):
            s.sendto(junk[i % len(junk)], ("127.0.0.1", gateway.port))
    for payload in (b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP x\r\n", b"garbage\r\n\r\n",
                    b"INVITE sip:a@b SIP/2.0\r\nContent-Length: 10\r\n\r\nabc", b"\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=2) as c:
            c.sendall(payload)
    result = run_uac(tmp_path, gateway.port, rows, calls=100, rate=50)
    assert result.failed == 0 and result.successful == 100, result.stdout
    code, _ = gateway.http("/healthz")
    assert code == 200


def test_tcp_keepalive_is_answered(gateway: GatewayProc) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=2) as c:
        c.sendall(b"\r\n\r\n")
        assert c.recv(16) == b"\r\n"


def test_dead_worker_is_restarted_and_calls_continue(redis_url: str, gateway: GatewayProc, tmp_path: Path) -> None:
    rows = standard_policy(redis_url, callees=20)
    before = gateway.worker_pids()
    assert len(before) == 2
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = gateway.worker_pids()
        if len(now) == 2 and before[0] not in now:
            break
        time.sleep(0.1)
    after = gateway.worker_pids()
    assert len(after) == 2 and before[0] not in after and before[1] in after
    time.sleep(1.0)  # the new worker loads reference data
    result = run_uac(tmp_path, gateway.port, rows, calls=100, rate=50)
    assert result.failed == 0 and result.successful == 100, result.stdout


def test_health_ready_and_metrics(redis_url: str, gateway: GatewayProc, tmp_path: Path) -> None:
    rows = standard_policy(redis_url, callees=5)
    code, body = gateway.http("/healthz")
    assert code == 200 and json.loads(body)["workers"] == 2
    code, body = gateway.http("/readyz")
    detail = json.loads(body)
    assert code == 200 and detail["redis"] and detail["reference_data"] and detail["next_hop_up"]
    result = run_uac(tmp_path, gateway.port, rows, calls=20, rate=20)
    assert result.successful == 20, result.stdout
    time.sleep(1.2)
    assert gateway.metric("cag_invites_total") == 20
    assert gateway.metric("cag_decisions_total", decision="admit", reason="admitted") == 20
    assert gateway.metric("cag_decision_seconds_count") == 20
    assert gateway.metric("cag_proxy_events_total", event="forwarded_requests") >= 60  # INVITE, ACK, BYE
    assert gateway.metric("cag_next_hop_up") >= 1
    code, _ = gateway.http("/nope")
    assert code == 404


def test_demo_on_the_embedded_default(tmp_path: Path, uas: SippUas) -> None:
    """What the README's run command does: no Redis URL, --demo, admitted and rejected calls."""
    gw = GatewayProc(None, tmp_path / "state", [uas.hop], extra=["--demo"])
    gw.state_dir.mkdir()
    try:
        gw.start()
        sock = gw.state_dir / "redis" / "redis.sock"
        assert sock.exists()
        demo = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "demo_calls.py"), "--gateway", f"127.0.0.1:{gw.port}"],
            capture_output=True, text=True, timeout=60,
        )
        out = demo.stdout
        assert "200 OK (admitted" in out, out
        assert "(consent_missing)" in out and "(caller_not_filed)" in out, out
    finally:
        assert gw.stop() == 0
    assert not (tmp_path / "state" / "redis" / "redis.sock").exists() or not _answers(tmp_path)


def _answers(tmp_path: Path) -> bool:
    from gateway.embedded_redis import EmbeddedRedis

    return EmbeddedRedis(tmp_path / "state").running()
