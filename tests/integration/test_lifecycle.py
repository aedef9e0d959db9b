"""Lifecycle (issue 7): SIGTERM drains, SIGHUP reloads without dropping calls.

A worker killed outright is re-forked: ``test_gateway_sipp.py``
(``test_dead_worker_is_restarted_and_calls_continue``).
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from gateway.embedded_redis import EmbeddedRedis
from tests.conftest import free_port
from tests.integration.harness import (
    GatewayProc,
    SippResult,
    SippUas,
    raw_invite,
    run_uac,
    standard_policy,
    status_code,
)

pytestmark = pytest.mark.integration


def _finals(sock: socket.socket, wait: float) -> list[bytes]:
    """Final responses (≥ 200) received on ``sock`` within ``wait`` s."""
    out: list[bytes] = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            msg = sock.recv(65535)
        except TimeoutError:
            break
        if msg[:8] == b"SIP/2.0 " and status_code(msg) >= 200:
            out.append(msg)
    return out


def _cancel(port: int, gw_port: int, callee: str, call_id: str, branch: str) -> bytes:
    lines = [
        f"CANCEL sip:{callee}@127.0.0.1:{gw_port};user=phone SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch};rport",
        f"From: <sip:95500@127.0.0.1:{port};user=phone>;tag=abc123",
        f"To: <sip:{callee}@127.0.0.1:{gw_port};user=phone>",
        f"Call-ID: {call_id}",
        "CSeq: 1 CANCEL",
        "Max-Forwards: 70",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def test_sigterm_drains_in_flight_and_sheds_new_invites(own_redis: EmbeddedRedis, tmp_path: Path) -> None:
    """SIGTERM: a ringing call keeps its transaction (CANCEL → 487 still relayed), a new INVITE
    gets 503 overload + Retry-After at once, and the gateway exits cleanly soon after."""
    standard_policy(own_redis.url, callees=2)
    uas = SippUas(tmp_path, scenario="uas_ring.xml").start()
    gw = GatewayProc(own_redis.url, tmp_path / "gw", [uas.hop], workers=1, extra=["--drain-timeout", "3"])
    try:
        gw.start()
        callee = "+8613800000000"
        port_a, port_b = free_port(), free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
            a.bind(("127.0.0.1", port_a))
            b.bind(("127.0.0.1", port_b))
            a.sendto(raw_invite(port_a, gw.port, caller="95500", callee=callee, token="tok-0",
                             call_id="drain-a@test", branch="z9hG4bK-drain-a"), ("127.0.0.1", gw.port))
            assert _finals(a, 1.0) == [], "the call rings (no final yet)"
            assert gw.proc is not None
            t0 = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            b.sendto(raw_invite(port_b, gw.port, caller="95500", callee="+8613800000001", token="tok-1",
                             call_id="drain-b@test", branch="z9hG4bK-drain-b"), ("127.0.0.1", gw.port))
            shed = _finals(b, 1.0)
            assert shed, "a new INVITE during the drain is answered"
            text = shed[0].decode()
            assert text.startswith("SIP/2.0 503 ") and 'text="overload"' in text and "Retry-After: 1" in text
            a.sendto(_cancel(port_a, gw.port, callee, "drain-a@test", "z9hG4bK-drain-a"), ("127.0.0.1", gw.port))
            finals = _finals(a, 2.0)
            codes = sorted(status_code(m) for m in finals)
            assert 487 in codes and 200 in codes, f"the in-flight call completes during the drain: {codes}"
            code = gw.proc.wait(10)
            took = time.monotonic() - t0
        assert code == 0
        assert took < 3 + 3 + 2, f"exit within the drain bound, took {took:.1f}s"
        print(f"drain: exited {took:.2f} s after SIGTERM")
    finally:
        gw.stop()
        uas.stop()


def test_sigterm_with_a_call_stuck_ringing_exits_within_the_bound(own_redis: EmbeddedRedis, tmp_path: Path) -> None:
    standard_policy(own_redis.url, callees=1)
    uas = SippUas(tmp_path, scenario="uas_ring.xml").start()
    gw = GatewayProc(own_redis.url, tmp_path / "gw", [uas.hop], workers=1, extra=["--drain-timeout", "1"])
    try:
        gw.start()
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
            a.bind(("127.0.0.1", port))
            a.sendto(raw_invite(port, gw.port, caller="95500", callee="+8613800000000", token="tok-0",
                             call_id="stuck@test", branch="z9hG4bK-stuck"), ("127.0.0.1", gw.port))
            time.sleep(0.5)
            assert gw.proc is not None
            t0 = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)
            code = gw.proc.wait(15)
            took = time.monotonic() - t0
        assert code == 0
        assert 0.9 <= took < 1 + 3 + 2, f"drain_timeout 1 s (+ audit flush), took {took:.1f}s"
        print(f"drain with a call stuck ringing: exited {took:.2f} s after SIGTERM (drain_timeout 1 s)")
    finally:
        gw.stop()
        uas.stop()


def test_workers_exit_when_the_supervisor_is_killed(own_redis: EmbeddedRedis, tmp_path: Path) -> None:
    """SIGKILL leaves the supervisor no say: the workers must not live on holding the port."""
    standard_policy(own_redis.url, callees=1)
    uas = SippUas(tmp_path).start()
    gw = GatewayProc(own_redis.url, tmp_path / "gw", [uas.hop], workers=2)
    try:
        gw.start()
        workers = gw.worker_pids()
        assert len(workers) == 2
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGKILL)
        gw.proc.wait(5)
        deadline = time.monotonic() + 10
        alive = workers
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [p for p in workers if Path(f"/proc/{p}").exists()
                     and "Z" not in Path(f"/proc/{p}/stat").read_text().split(")")[-1].split()[:1]]
        assert not alive, f"workers {alive} outlived their supervisor"
    finally:
        gw.stop()
        uas.stop()


def _write_config(path: Path, **values: object) -> None:
    lines = []
    for k, v in values.items():
        if isinstance(v, str):
            lines.append(f'{k} = "{v}"')
        elif isinstance(v, list):
            lines.append(f"{k} = [" + ", ".join(f'"{x}"' for x in v) + "]")
        else:
            lines.append(f"{k} = {v}")
    path.write_text("\n".join(lines) + "\n")


def test_sighup_reloads_without_dropping_calls(own_redis: EmbeddedRedis, tmp_path: Path) -> None:
    """Under SIPp load: SIGHUP switches fail mode and next hop; no call fails; keys that need a
    restart are named and kept; a broken file changes nothing."""
    rows = standard_policy(own_redis.url, callees=20)
    uas1 = SippUas(tmp_path, trace_messages=True).start()
    uas2 = SippUas(tmp_path, trace_messages=True).start()
    conf = tmp_path / "gw.toml"
    _write_config(conf, fail_mode="closed", budget_ms=200, next_hop=[uas1.hop])
    gw = GatewayProc(own_redis.url, tmp_path / "gw", [], extra=["--config", str(conf)])
    try:
        gw.start()
        assert gw.proc is not None
        result: list[SippResult] = []
        load = threading.Thread(
            target=lambda: result.append(run_uac(tmp_path, gw.port, rows, calls=150, rate=50))
        )
        load.start()
        time.sleep(1.0)
        _write_config(conf, fail_mode="open", budget_ms=100, audit_max_stream=5000, next_hop=[uas2.hop],
                      log_level="info")
        gw.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        conf.write_text("fail_mode = [oops\n")  # broken: the running settings stay
        gw.proc.send_signal(signal.SIGHUP)
        load.join(60)
        assert result and result[0].failed == 0 and result[0].successful == 150, result[0].stdout
        seen1, seen2 = uas1.calls_seen(), uas2.calls_seen()
        assert seen1 > 0 and seen2 > 0 and seen1 + seen2 == 150, (seen1, seen2)
        log = gw.log_tail(200_000)
        assert "audit_max_stream changed but only take effect on restart" in log
        assert "configuration not reloaded" in log
        assert len(gw.worker_pids()) == 2
        # The reloaded fail mode, in every worker: Redis away, an unknown token is admitted.
        own_redis.stop()
        for n in range(6):
            port = free_port()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", port))
                s.sendto(raw_invite(port, gw.port, caller="95500", callee="+8613800000000", token="nope",
                                 call_id=f"hup-{n}@test", branch=f"z9hG4bK-hup-{n}"), ("127.0.0.1", gw.port))
                finals = _finals(s, 1.5)
            assert finals and status_code(finals[0]) == 200, f"fail-open after SIGHUP (call {n})"
        own_redis.start()
    finally:
        gw.stop()
        uas1.stop()
        uas2.stop()
