"""Real peers for integration tests: the gateway as a process, SIPp as caller and callee.

The peers themselves live in ``bench.peers`` (the benchmarks start the very
same processes); this module re-exports them and adds the tests' small
policy world. Everything runs on loopback with ports picked free per test;
every process started here is bounded in time and killed at the end.
"""

from __future__ import annotations

import json
import socket
import time

from bench.peers import (
    CAG,
    ROOT,
    SIPP_DIR,
    GatewayProc,
    SippResult,
    SippUas,
    free_port,
    load_policy,
    run_uac,
    write_inf,
)

__all__ = [
    "CAG",
    "ROOT",
    "SIPP_DIR",
    "GatewayProc",
    "SippResult",
    "SippUas",
    "json_lines",
    "load_policy",
    "run_uac",
    "standard_policy",
    "write_inf",
]


def standard_policy(
    redis_url: str, *, callees: int = 50, quiet_hours: str = "none", max_concurrent: int = 0
) -> list[list[str]]:
    """Trunk on loopback, one enterprise, filed caller 95500, consents; returns SIPp rows."""
    trunks = [{"trunk_id": "T1", "enterprise_id": "E1", "sources": "127.0.0.0/8", "max_cps": 0, "status": "active",
               "max_concurrent": max_concurrent}]
    enterprises = [{"enterprise_id": "E1", "name": "Demo", "status": "active", "quiet_hours": quiet_hours,
                    "callee_daily_cap": 0}]
    filings = [{"number": "95500", "enterprise_id": "E1", "carrier": "x", "usage": "callback", "inbound": True,
                "outbound": True, "status": "active"}]
    consents = []
    rows = []
    for i in range(callees):
        callee = f"+86138{i:08d}"
        token = f"tok-{i}"
        consents.append({"token": token, "callee": callee, "enterprise_id": "E1", "purpose": "callback",
                         "granted_at": "2026-01-01T00:00:00+00:00", "evidence_ref": f"rec://{i}"})
        rows.append(["95500", callee, token])
    load_policy(redis_url, trunks=trunks, enterprises=enterprises, filings=filings, consents=consents)
    return rows


def json_lines(text: str) -> list[dict[str, object]]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


# ---- raw SIP over UDP, for tests that need one exact message


def raw_invite(port: int, gw_port: int, *, caller: str, callee: str, token: str | None,
            call_id: str, branch: str, to_tag: str = "", route: str = "", extra: str = "") -> bytes:
    lines = [
        f"INVITE sip:{callee}@127.0.0.1:{gw_port};user=phone SIP/2.0",
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch={branch};rport",
        f"From: <sip:{caller}@127.0.0.1:{port};user=phone>;tag=abc123",
        f"To: <sip:{callee}@127.0.0.1:{gw_port};user=phone>{';tag=' + to_tag if to_tag else ''}",
        f"Call-ID: {call_id}",
        "CSeq: 1 INVITE",
        f"Contact: <sip:caller@127.0.0.1:{port}>",
        "Max-Forwards: 70",
    ]
    if route:
        lines.append(f"Route: {route}")
    if token:
        lines.append(f"X-Consent-Token: {token}")
    if extra:
        lines.append(extra)
    lines += ["Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def recv_all(sock: socket.socket, wait: float) -> list[bytes]:
    out = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            out.append(sock.recv(65535))
        except (TimeoutError, BlockingIOError):
            break
    return out


def status_code(msg: bytes) -> int:
    return int(msg.split(b" ", 2)[1])


def call_once(gw: GatewayProc, token: str, n: int, wait: float = 1.5) -> list[bytes]:
    """Send one INVITE; return the final responses, stopping at the first one."""
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", port))
        s.sendto(
            raw_invite(port, gw.port, caller="95500", callee="+8613800000000", token=token,
                    call_id=f"fault-{n}-{time.monotonic_ns()}@test", branch=f"z9hG4bK-fault-{n}"),
            ("127.0.0.1", gw.port),
        )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                msg = s.recv(65535)
            except TimeoutError:
                break
            if status_code(msg) >= 200:
                return [msg]
        return []
