"""The provisioning API end to end: ``cag serve --api`` with SIPp peers and a real redis-server.

What a CRM and the complaint desk do over HTTP must change what the running
gateway does to the very next INVITE (SPEC §10, R11, R12).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.integration.harness import (
    CAG,
    SIPP_DIR,
    GatewayProc,
    SippUas,
    load_policy,
    standard_policy,
    write_inf,
)
from tests.integration.test_reasons_sipp import received_finals

pytestmark = pytest.mark.integration

CALLER = "95500"  # standard_policy's filed access number of E1


class Http:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def __call__(self, method: str, path: str, key: str | None = None, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, json.loads(raw) if raw else None

    def wait(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the API did not come up")


@pytest.fixture
def uas(tmp_path: Path) -> Iterator[SippUas]:
    peer = SippUas(tmp_path).start()
    yield peer
    peer.stop()


@pytest.fixture
def gateway(redis_url: str, tmp_path: Path, uas: SippUas) -> Iterator[tuple[GatewayProc, Http]]:
    standard_policy(redis_url, callees=1)
    load_policy(redis_url, enterprises=[{"enterprise_id": "E1", "name": "Demo", "status": "active",
                                         "quiet_hours": "none", "callee_daily_cap": 0, "complaint_threshold": 1}])
    api_port = free_port(socket.SOCK_STREAM)
    gw = GatewayProc(redis_url, tmp_path / "gw", [uas.hop], extra=("--api", f"127.0.0.1:{api_port}"))
    gw.state_dir.mkdir()
    gw.start()
    http = Http(api_port)
    try:
        http.wait()
        yield gw, http
    finally:
        gw.stop()


def key(redis_url: str, *who: str) -> str:
    r = subprocess.run([CAG, "api", "key", "create", *who, "--redis-url", redis_url],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def call(tmp: Path, gw_port: int, callee: str, token: str, expect: int) -> str:
    """One SIPp call; returns the Reason text of the final response (``""`` when admitted)."""
    tag = f"c{time.monotonic_ns()}"
    inf = write_inf(tmp / f"{tag}.csv", [[CALLER, callee, token]])
    if expect == 200:
        scenario = SIPP_DIR / "uac.xml"
    else:
        scenario = tmp / f"{tag}.xml"
        scenario.write_text((SIPP_DIR / "uac_reject.xml").read_text().replace("__CODE__", str(expect)))
    messages = tmp / f"{tag}-messages.log"
    proc = subprocess.run(
        ["sipp", f"127.0.0.1:{gw_port}", "-sf", str(scenario), "-inf", str(inf), "-i", "127.0.0.1",
         "-p", str(free_port()), "-t", "u1", "-m", "1", "-r", "1", "-l", "1", "-timeout", "15s",
         "-timeout_error", "-recv_timeout", "5000", "-nostdin", "-default_behaviors", "all,-abortunexp",
         "-trace_msg", "-message_file", str(messages)],
        capture_output=True, timeout=30, cwd=tmp,
    )
    finals = received_finals(messages)
    assert proc.returncode == 0, (expect, finals, proc.stdout[-1500:])
    assert finals and finals[-1].startswith(f"SIP/2.0 {expect} "), finals
    for line in finals[-1].splitlines():
        if line.startswith("Reason:"):
            return line.split('text="', 1)[1].rstrip('"\r')
    return ""


def test_consents_and_complaints_over_http_steer_the_running_gateway(
    redis_url: str, gateway: tuple[GatewayProc, Http], tmp_path: Path
) -> None:
    gw, http = gateway
    ent_key, admin = key(redis_url, "--enterprise", "E1"), key(redis_url, "--admin")
    callee = "+8613800000099"

    # A CRM registers a consent: the next call with its token is admitted.
    status, c = http("POST", "/v1/consents", ent_key, {
        "callee": callee, "purpose": "callback", "expires_at": "2031-01-01T00:00:00+08:00",
        "evidence_ref": "crm://ticket/7"})
    assert status == 201, c
    assert call(tmp_path, gw.port, callee, c["token"], 200) == ""

    # Revoked over HTTP: the next call gets 608 consent_revoked.
    assert http("DELETE", f"/v1/consents/{c['token']}", ent_key)[0] == 204
    assert call(tmp_path, gw.port, callee, c["token"], 608) == "consent_revoked"

    # Complaints trace the admitted call; the second is over E1's threshold of 1.
    time.sleep(0.5)  # the workers' audit flush (50 ms) puts the decision in the stream
    report = {"callee": callee, "caller": CALLER, "reported_at": datetime.now(UTC).isoformat(),
              "channel": "12321", "ref": "12321-0001"}
    status, first = http("POST", "/v1/complaints", admin, report)
    assert status == 201, first
    assert first["enterprise_id"] == "E1"
    traced = [r for r in first["records"] if r["decision"] == "admit"]
    assert traced and traced[0]["consent_token"] == c["token"] and traced[0]["evidence_ref"] == "crm://ticket/7"
    assert first["actions"] == []  # the consent was already revoked; one complaint is not over 1
    status, second = http("POST", "/v1/complaints", admin, {**report, "ref": "12321-0002"})
    assert second["actions"] == ["enterprise_suspended"], second

    # The next call from E1, with a valid consent, is refused: 403 enterprise_suspended.
    time.sleep(1.0)  # suspensions reach the workers within 1 s; the API's own engine says when it has
    deadline = time.monotonic() + 5
    while http("POST", "/v1/explain", admin, {"source": "127.0.0.1", "caller": CALLER, "callee": "+8613800000000",
                                              "token": "tok-0"})[1]["reason"] != "enterprise_suspended":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(0.5)
    assert call(tmp_path, gw.port, "+8613800000000", "tok-0", 403) == "enterprise_suspended"

    shown = subprocess.run([CAG, "policy", "show", "enterprises", "E1", "--redis-url", redis_url],
                           capture_output=True, text=True, timeout=60)
    ent = json.loads(shown.stdout)
    assert ent["status"] == "suspended" and ent["suspended_cause"] == "complaints"
    # The API process runs beside the workers: its metrics join the gateway's.
    assert gw.metric("cag_api_complaint_suspensions_total") == 1
    assert gw.metric("cag_api_requests_total", route="/v1/consents", status="201") == 1
    # Every API change is in the audit export (who, what, when).
    exported = subprocess.run([CAG, "audit", "export", "--callee", callee, "--redis-url", redis_url],
                              capture_output=True, text=True, timeout=60)
    rows = [json.loads(x) for x in exported.stdout.splitlines()]
    api_rows = [r["reason"] for r in rows if r["decision"] == "api"]
    assert api_rows[:2] == ["consent_grant", "consent_revoke"] and api_rows.count("complaint") == 2, rows
    assert [r["decision"] for r in rows if r["decision"] != "api"] == ["admit", "reject"]


def test_the_api_child_is_restarted_when_it_dies(gateway: tuple[GatewayProc, Http]) -> None:
    gw, http = gateway
    assert gw.proc is not None
    out = subprocess.run(["pgrep", "-P", str(gw.proc.pid), "-f", "gateway.cli api"],
                         capture_output=True, text=True).stdout.split()
    assert len(out) == 1, out
    os.kill(int(out[0]), signal.SIGKILL)
    time.sleep(0.3)
    http.wait(timeout=20)  # the supervisor starts a new one after its back-off
    again = subprocess.run(["pgrep", "-P", str(gw.proc.pid), "-f", "gateway.cli api"],
                           capture_output=True, text=True).stdout.split()
    assert again and again != out
    assert gw.http("/readyz")[0] == 200  # the workers never noticed
