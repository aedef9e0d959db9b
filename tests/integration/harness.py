"""Real peers for integration tests: the gateway as a process, SIPp as caller and callee.

The peers themselves live in ``bench.peers`` (the benchmarks start the very
same processes); this module re-exports them and adds the tests' small
policy world. Everything runs on loopback with ports picked free per test;
every process started here is bounded in time and killed at the end.
"""

from __future__ import annotations

import json

from bench.peers import (
    CAG,
    ROOT,
    SIPP_DIR,
    GatewayProc,
    SippResult,
    SippUas,
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
