"""``cag policy …`` and ``cag explain`` against a real redis-server (SPEC §8, §9).

Most tests run the CLI in-process through ``gateway.cli.main`` (fast, and
pytest sees the tracebacks); a few run the installed ``.venv/bin/cag`` as a
subprocess, because exit codes and "stdout is only JSON" are what outside
scripts rely on.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from gateway.cli import main
from gateway.embedded_redis import socket_path
from policy.demo import DEMO_DIR, load_demo
from policy.store import PolicyStore

pytestmark = pytest.mark.integration

T = TypeVar("T")
CAG = Path(sys.executable).parent / "cag"


def with_store(url: str, fn: Callable[[PolicyStore], Awaitable[T]]) -> T:
    async def run() -> T:
        store = await PolicyStore.connect(url)
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(run())


def refdata(url: str) -> dict[str, dict[str, Any]]:
    """{kind: {id: record as JSON}} of the reference data in Redis."""
    trunks, ents, filings, _ = with_store(url, lambda s: s.load_refdata())
    return {
        "trunks": {t.trunk_id: t.model_dump(mode="json") for t in trunks},
        "enterprises": {e.enterprise_id: e.model_dump(mode="json") for e in ents},
        "filings": {f.number: f.model_dump(mode="json") for f in filings},
    }


def cag(*argv: str) -> int:
    return main(list(argv))


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


TRUNKS = "trunk_id,enterprise_id,sources,max_cps,status\nT1,E1,10.0.0.1,0,active\nT2,E1,10.0.0.2,5,active\n"
CONSENT_HEADER = "token,callee,enterprise_id,purpose,granted_at,expires_at,max_calls,evidence_ref\n"


def snapshot(url: str) -> dict[bytes, Any]:
    """Every key and its value (TTL aside): what explain must leave untouched."""
    path = url.removeprefix("unix://")
    r = redis.Redis(unix_socket_path=path)
    try:
        out: dict[bytes, Any] = {}
        for key in r.scan_iter(count=1000):
            kind = r.type(key)
            if kind == b"string":
                out[key] = r.get(key)
            elif kind == b"hash":
                out[key] = r.hgetall(key)
            elif kind == b"set":
                out[key] = sorted(r.smembers(key))
            elif kind == b"zset":
                out[key] = r.zrange(key, 0, -1, withscores=True)
            elif kind == b"list":
                out[key] = r.lrange(key, 0, -1)
            else:
                out[key] = kind
        out[b"__dbsize__"] = r.dbsize()
        return out
    finally:
        r.close()


# ------------------------------------------------------------------ load


def test_load_every_kind(redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = write(tmp_path, "trunks.csv", TRUNKS)
    e = write(tmp_path, "ent.csv", "enterprise_id,name,status,purposes\nE1,Acme,active,callback\n")
    f = write(tmp_path, "filings.csv", "number,enterprise_id,inbound,outbound,status\n95500,E1,true,true,active\n")
    c = write(
        tmp_path,
        "consents.jsonl",
        json.dumps({"token": "tok1", "callee": "13800138000", "enterprise_id": "E1", "granted_at": "2026-01-01T00:00:00Z", "max_calls": 2})
        + "\n",
    )
    d = write(tmp_path, "dnc.csv", "number,scope,registered_at\n13900139000,commercial,\n")
    assert cag("policy", "load", "trunks", str(t), "--redis-url", redis_url) == 0
    assert capsys.readouterr().out == f"loaded 2 trunks from {t}\n"
    for kind, path in (("enterprises", e), ("filings", f), ("consents", c), ("dnc", d)):
        assert cag("policy", "load", kind, str(path), "--redis-url", redis_url) == 0
    assert cag("policy", "load", "--redis-url", redis_url, "trunks", str(t), "--replace") == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"loaded 2 trunks from {t} (replace)"

    data = refdata(redis_url)
    assert set(data["trunks"]) == {"T1", "T2"} and data["trunks"]["T2"]["max_cps"] == 5
    assert data["enterprises"]["E1"]["purposes"] == ["callback"]
    assert data["filings"]["95500"]["outbound"] is True
    consent = with_store(redis_url, lambda s: s.get_consent("tok1"))
    assert consent is not None and consent.callee == "+8613800138000" and consent.max_calls == 2
    dnc = with_store(redis_url, lambda s: s.get_dnc("+8613900139000"))
    assert dnc is not None and dnc.scope == "commercial"


def test_bad_row_writes_nothing(redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, "trunks.csv", TRUNKS)
    assert cag("policy", "load", "trunks", str(good), "--redis-url", redis_url) == 0
    before = refdata(redis_url)
    capsys.readouterr()

    bad = write(
        tmp_path,
        "trunks2.csv",
        "trunk_id,enterprise_id,sources,max_cps,status\n"
        "T3,E1,10.0.0.3,0,active\n"
        "T1,E1,10.0.0.99,nope,active\n"
        "T2,E1,10.0.0.2,0,suspended\n"
        "T4,E1,300.0.0.1,0,active\n",
    )
    for replace in ((), ("--replace",)):
        assert cag("policy", "load", "trunks", str(bad), *replace, "--redis-url", redis_url) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert all(line.startswith(f"{bad}:") for line in err.splitlines())
        assert f"{bad}:3: max_cps: Input should be a valid integer" in err
        assert f"{bad}:5: sources: bad source address '300.0.0.1'" in err
        assert refdata(redis_url) == before  # T3 absent, T1/T2 unchanged, nothing removed

    consents = write(
        tmp_path,
        "c.csv",
        CONSENT_HEADER + "ok1,+8613800138000,E1,callback,2026-01-01T00:00:00Z,,,\nbad,+8613800138001,E1,callback,soon,,,\n",
    )
    assert cag("policy", "load", "consents", str(consents), "--redis-url", redis_url) == 1
    assert f"{consents}:3: granted_at:" in capsys.readouterr().err
    assert with_store(redis_url, lambda s: s.get_consent("ok1")) is None


def test_upsert_keeps_others_and_replace_removes(redis_url: str, tmp_path: Path) -> None:
    assert cag("policy", "load", "trunks", str(write(tmp_path, "a.csv", TRUNKS)), "--redis-url", redis_url) == 0
    upd = write(tmp_path, "b.csv", "trunk_id,enterprise_id,sources\nT2,E2,10.0.0.22\nT3,E1,10.0.0.3\n")
    assert cag("policy", "load", "trunks", str(upd), "--redis-url", redis_url) == 0
    trunks = refdata(redis_url)["trunks"]
    assert set(trunks) == {"T1", "T2", "T3"} and trunks["T2"]["enterprise_id"] == "E2"
    only = write(tmp_path, "c.csv", "trunk_id,enterprise_id,sources\nT3,E1,10.0.0.3\n")
    assert cag("policy", "load", "trunks", str(only), "--replace", "--redis-url", redis_url) == 0
    assert set(refdata(redis_url)["trunks"]) == {"T3"}

    c1 = write(
        tmp_path,
        "c1.csv",
        CONSENT_HEADER + "a,+8613800138000,E1,,2026-01-01T00:00:00Z,,,\nb,+8613800138001,E1,,2026-01-01T00:00:00Z,,,\n",
    )
    c2 = write(tmp_path, "c2.csv", CONSENT_HEADER + "c,+8613800138002,E1,,2026-01-01T00:00:00Z,,,\n")
    assert cag("policy", "load", "consents", str(c1), "--redis-url", redis_url) == 0
    assert cag("policy", "load", "consents", str(c2), "--redis-url", redis_url) == 0
    got = with_store(redis_url, lambda s: asyncio.gather(*(s.get_consent(t) for t in "abc")))
    assert all(c is not None for c in got)
    assert cag("policy", "load", "consents", str(c2), "--replace", "--redis-url", redis_url) == 0
    a, b, c = with_store(redis_url, lambda s: asyncio.gather(*(s.get_consent(t) for t in "abc")))
    assert a is None and b is None and c is not None

    d1 = write(tmp_path, "d1.csv", "number,scope\n+8613900139000,all\n+8613900139001,all\n")
    d2 = write(tmp_path, "d2.jsonl", '{"number": "+8613900139001", "scope": "commercial"}\n')
    assert cag("policy", "load", "dnc", str(d1), "--redis-url", redis_url) == 0
    assert cag("policy", "load", "dnc", str(d2), "--replace", "--redis-url", redis_url) == 0
    gone, kept = with_store(
        redis_url, lambda s: asyncio.gather(s.get_dnc("+8613900139000"), s.get_dnc("+8613900139001"))
    )
    assert gone is None and kept is not None and kept.scope == "commercial"


def test_header_only_file(redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cag("policy", "load", "trunks", str(write(tmp_path, "a.csv", TRUNKS)), "--redis-url", redis_url) == 0
    empty = write(tmp_path, "empty.csv", "trunk_id,enterprise_id,sources\n")
    capsys.readouterr()
    assert cag("policy", "load", "trunks", str(empty), "--redis-url", redis_url) == 0
    out, err = capsys.readouterr()
    assert "no data rows" in err and out == f"loaded 0 trunks from {empty}\n"
    assert set(refdata(redis_url)["trunks"]) == {"T1", "T2"}  # upsert of nothing changes nothing
    # A header-only file with --replace would delete every record: refused unless asked for.
    assert cag("policy", "load", "trunks", str(empty), "--replace", "--redis-url", redis_url) == 1
    out, err = capsys.readouterr()
    assert "no data rows" in err and "--allow-empty" in err and out == ""
    assert set(refdata(redis_url)["trunks"]) == {"T1", "T2"}
    assert cag("policy", "load", "trunks", str(empty), "--replace", "--allow-empty", "--redis-url", redis_url) == 0
    out, err = capsys.readouterr()
    assert "no data rows" in err and out == f"loaded 0 trunks from {empty} (replace)\n"
    assert refdata(redis_url)["trunks"] == {}


def test_show_round_trips_through_load(redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with_store(redis_url, load_demo)
    capsys.readouterr()
    for kind in ("trunks", "enterprises", "filings"):
        assert cag("policy", "show", kind, "--redis-url", redis_url) == 0
        dumped = write(tmp_path, f"{kind}.jsonl", capsys.readouterr().out)
        before = refdata(redis_url)[kind]
        assert len(dumped.read_text().splitlines()) == len(before)
        assert cag("policy", "load", kind, str(dumped), "--replace", "--redis-url", redis_url) == 0
        assert refdata(redis_url)[kind] == before
        capsys.readouterr()
    assert cag("policy", "show", "consents", "demo-consent-0", "--redis-url", redis_url) == 0
    assert json.loads(capsys.readouterr().out)["evidence_ref"] == "rec://demo/0"
    assert cag("policy", "show", "filings", "95599", "--redis-url", redis_url) == 0
    assert json.loads(capsys.readouterr().out)["enterprise_id"] == "E-BAD"
    assert cag("policy", "show", "dnc", "+8613800138000", "--redis-url", redis_url) == 1


# ------------------------------------------------------------------ one-off changes


def test_consent_grant_and_revoke(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cag(
        "policy", "consent", "grant", "--token", "T1", "--callee", "138 0013 8000", "--enterprise-id", "E1",
        "--purpose", "consultation", "--expires-at", "2099-01-01T00:00:00+08:00", "--max-calls", "5",
        "--evidence-ref", "rec://1", "--redis-url", redis_url,
    )
    assert rc == 0
    c = with_store(redis_url, lambda s: s.get_consent("T1"))
    assert c is not None
    assert (c.callee, c.enterprise_id, c.purpose, c.max_calls, c.evidence_ref) == ("+8613800138000", "E1", "consultation", 5, "rec://1")
    assert c.expires_at == datetime(2098, 12, 31, 16, tzinfo=UTC)
    assert abs((datetime.now(UTC) - c.granted_at).total_seconds()) < 60  # default: now
    assert c.revoked_at is None

    assert cag("policy", "consent", "revoke", "T1", "--at", "2026-03-01T00:00:00Z", "--redis-url", redis_url) == 0
    c = with_store(redis_url, lambda s: s.get_consent("T1"))
    assert c is not None and c.revoked_at == datetime(2026, 3, 1, tzinfo=UTC)
    # Re-granting the token (CLI or a file load) lifts the revocation.
    assert cag("policy", "consent", "grant", "--token", "T1", "--callee", "13800138000", "--enterprise-id", "E1",
               "--redis-url", redis_url) == 0
    c = with_store(redis_url, lambda s: s.get_consent("T1"))
    assert c is not None and c.revoked_at is None and c.purpose == "callback" and c.max_calls is None
    capsys.readouterr()
    assert cag("policy", "consent", "revoke", "nope", "--redis-url", redis_url) == 1
    assert "unknown consent token" in capsys.readouterr().err
    assert cag("policy", "consent", "grant", "--token", "T2", "--callee", "abc", "--enterprise-id", "E1", "--redis-url", redis_url) == 2
    assert "callee: not a phone number" in capsys.readouterr().err
    rc = cag("policy", "consent", "grant", "--token", "T2", "--callee", "13800138000", "--enterprise-id", "E1",
             "--granted-at", "yesterday", "--redis-url", redis_url)
    assert rc == 2
    assert with_store(redis_url, lambda s: s.get_consent("T2")) is None


def test_dnc_add_and_remove(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cag("policy", "dnc", "add", "139 0013 9000", "--scope", "commercial", "--redis-url", redis_url) == 0
    d = with_store(redis_url, lambda s: s.get_dnc("+8613900139000"))
    assert d is not None and d.scope == "commercial"
    assert cag("policy", "dnc", "remove", "+8613900139000", "--redis-url", redis_url) == 0
    assert with_store(redis_url, lambda s: s.get_dnc("+8613900139000")) is None
    capsys.readouterr()
    assert cag("policy", "dnc", "remove", "+8613900139000", "--redis-url", redis_url) == 1
    assert "not on the do-not-call list" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cag("policy", "dnc", "add", "+8613900139000", "--scope", "sometimes", "--redis-url", redis_url)
    assert exc.value.code == 2


def test_suspend_and_resume(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with_store(redis_url, load_demo)
    assert cag("policy", "suspend", "enterprise", "E-DEMO", "--cause", "complaints", "--redis-url", redis_url) == 0
    ent = refdata(redis_url)["enterprises"]["E-DEMO"]
    assert ent["status"] == "suspended" and ent["suspended_cause"] == "complaints"
    capsys.readouterr()
    rc = cag("explain", "--source", "127.0.0.1", "--caller", "95500", "--callee", "+8613800138000",
             "--token", "demo-consent-0", "--redis-url", redis_url)
    assert rc == 1
    assert json.loads(capsys.readouterr().out)["reason"] == "enterprise_suspended"
    assert cag("policy", "resume", "enterprise", "E-DEMO", "--redis-url", redis_url) == 0
    ent = refdata(redis_url)["enterprises"]["E-DEMO"]
    assert ent["status"] == "active" and ent["suspended_cause"] is None

    assert cag("policy", "suspend", "trunk", "T-DEMO", "--redis-url", redis_url) == 0
    assert refdata(redis_url)["trunks"]["T-DEMO"]["status"] == "suspended"
    assert cag("policy", "resume", "trunk", "T-DEMO", "--redis-url", redis_url) == 0
    assert refdata(redis_url)["trunks"]["T-DEMO"]["status"] == "active"

    capsys.readouterr()
    assert cag("policy", "suspend", "trunk", "T-NOPE", "--redis-url", redis_url) == 1
    assert cag("policy", "resume", "enterprise", "E-NOPE", "--redis-url", redis_url) == 1
    # A blacklisted enterprise is carrier data (R10), not undone by a resume.
    assert cag("policy", "resume", "enterprise", "E-BAD", "--redis-url", redis_url) == 1
    assert cag("policy", "suspend", "enterprise", "E-BAD", "--redis-url", redis_url) == 0
    assert refdata(redis_url)["enterprises"]["E-BAD"]["status"] == "blacklisted"


# ------------------------------------------------------------------ explain


def explain(redis_url: str, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    rc = cag("explain", *argv, "--redis-url", redis_url)
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1, out  # one JSON document, nothing else
    report: dict[str, Any] = json.loads(out)
    return rc, report


def test_explain_decisions(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with_store(redis_url, load_demo)
    rc, rep = explain(redis_url, capsys, "--source", "127.0.0.1", "--caller", "95500",
                      "--callee", "+8613800138000", "--token", "demo-consent-0")
    assert rc == 0 and rep["decision"] == "admit" and rep["reason"] == "admitted" and rep["sip_code"] == 0
    names = [c["name"] for c in rep["checks"]]
    assert names[:3] == ["trunk", "callee", "caller_id"] and "consent" in names and "quiet_hours" in names
    assert all(c["outcome"] == "pass" for c in rep["checks"])

    cases = [
        (("--caller", "95500", "--callee", "+8613800138002"), "consent_missing", 608),
        (("--caller", "95501", "--callee", "+8613800138007", "--token", "demo-consent-7"), "caller_outbound_disabled", 403),
        (("--caller", "95500", "--callee", "+8613900139000", "--token", "demo-consent-dnc"), "callee_dnc", 608),
        (("--caller", "95500", "--callee", "+8613800138009", "--token", "demo-consent-9"), "consent_expired", 608),
        (("--caller", "95500", "--callee", "+8613800138000", "--token", "demo-consent-0", "--privacy"), "caller_anonymous", 433),
        (("--caller", "95500", "--pai", "4001234567", "--callee", "+8613800138000", "--token", "demo-consent-0"),
         "caller_identity_mismatch", 403),
        (("--caller", "95500", "--callee", "+8613800138003", "--token", "demo-consent-3", "--purpose", "marketing"),
         "purpose_marketing", 608),
    ]
    for argv, reason, code in cases:
        rc, rep = explain(redis_url, capsys, "--source", "127.0.0.1", *argv)
        assert (rc, rep["decision"], rep["reason"], rep["sip_code"]) == (1, "reject", reason, code), argv
        failing = [c for c in rep["checks"] if c["outcome"] == "fail"]
        assert failing and failing[0]["reason"] == reason
    rc, rep = explain(redis_url, capsys, "--source", "192.0.2.10", "--caller", "95599", "--callee", "+8613800138000")
    assert (rc, rep["reason"]) == (1, "enterprise_blacklisted")


def test_settings_engine_config_and_explain_config(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.config import load_settings
    from policy.model import QuietHours

    cfg = load_settings(
        None, consent_reject_code=603, time_reject_code=480, quiet_hours="22:00-07:00",
        callee_daily_cap=2, callee_total_daily_cap=5, caller_per_second=7, region="CN",
        fail_mode="open", budget_ms=20, stir_shaken="require",
    ).engine_config()
    rules = cfg.rules
    assert (rules.responses.consent_code, rules.responses.time_code) == (603, 480)
    assert rules.default_quiet_hours == QuietHours.parse("22:00-07:00")
    assert (rules.caps.callee_daily, rules.caps.callee_total_daily, rules.caps.caller_per_second) == (2, 5, 7)
    assert (cfg.fail_mode, cfg.budget_ms, rules.stir_shaken) == ("open", 20, "require")

    with_store(redis_url, load_demo)
    toml = write(tmp_path, "gw.toml", f'redis_url = "{redis_url}"\nconsent_reject_code = 603\nshadow = true\n')
    capsys.readouterr()
    rc = cag("explain", "--source", "127.0.0.1", "--caller", "95500", "--callee", "+8613800138002", "--config", str(toml))
    rep = json.loads(capsys.readouterr().out)
    assert (rc, rep["reason"], rep["sip_code"]) == (1, "consent_missing", 603)  # shadow never hides a rejection


def test_explain_usage_errors(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = ("--caller", "95500", "--callee", "+8613800138000", "--redis-url", redis_url)
    capsys.readouterr()
    assert cag("explain", "--source", "127.0.0.1", "--at", "tomorrow", *base) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--at" in err
    assert cag("explain", "--source", "not-an-ip", *base) == 2
    out, err = capsys.readouterr()
    assert out == "" and "--source" in err
    with pytest.raises(SystemExit) as exc:
        cag("explain", "--source", "127.0.0.1", "--caller", "95500", "--redis-url", redis_url)
    assert exc.value.code == 2


def test_explain_changes_no_counter(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with_store(redis_url, load_demo)
    # A real admission first, so counters and the consent's use count exist.
    from gateway.config import load_settings
    from policy.engine import AdmissionEngine
    from policy.model import CallAttempt

    async def admit_one(store: PolicyStore) -> bool:
        engine = AdmissionEngine(store, load_settings().engine_config())
        await engine.start()
        try:
            call = CallAttempt(
                call_id="c1@test", branch="z9hG4bK1", source_ip="127.0.0.1", source_port=5060,
                callee="+8613800138000", from_user="95500", pai_user=None, consent_token="demo-consent-0",
            )
            return (await engine.admit(call)).admit
        finally:
            await engine.stop()

    assert with_store(redis_url, admit_one)
    used_before = with_store(redis_url, lambda s: s.consent_used("demo-consent-0"))
    before = snapshot(redis_url)
    argvs = [
        ("--caller", "95500", "--callee", "+8613800138000", "--token", "demo-consent-0"),
        ("--caller", "95500", "--callee", "+8613800138000", "--token", "demo-consent-0", "--at", "2026-12-01T23:00:00+08:00"),
        ("--caller", "95500", "--callee", "+8613800138002"),
        ("--caller", "95500", "--callee", "+8613800138001", "--token", "demo-consent-1"),
    ]
    for argv in argvs:
        explain(redis_url, capsys, "--source", "127.0.0.1", *argv)
    assert snapshot(redis_url) == before
    assert with_store(redis_url, lambda s: s.consent_used("demo-consent-0")) == used_before == 1


# ------------------------------------------------------------------ the installed command


def run_cag(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert CAG.exists(), f"{CAG} missing: install the project (pip install -e .)"
    return subprocess.run([str(CAG), *argv], capture_output=True, text=True, timeout=60, env=env, check=False)


def test_installed_cag(redis_url: str, tmp_path: Path) -> None:
    for kind in ("enterprises", "trunks", "filings", "consents", "dnc"):
        p = run_cag("policy", "load", kind, str(DEMO_DIR / f"{kind}.csv"), "--replace", "--redis-url", redis_url)
        assert p.returncode == 0, p.stderr
        assert p.stdout.startswith("loaded ") and p.stdout.endswith(" (replace)\n")
    p = run_cag("explain", "--source", "127.0.0.1", "--caller", "95500", "--callee", "+8613800138000",
                "--token", "demo-consent-0", "--redis-url", redis_url)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["decision"] == "admit"
    p = run_cag("explain", "--source", "127.0.0.1", "--caller", "95577", "--callee", "+8613800138006",
                "--token", "demo-consent-6", "--redis-url", redis_url)
    assert p.returncode == 1
    assert json.loads(p.stdout)["reason"] == "caller_not_filed"
    p = run_cag("explain", "--source", "127.0.0.1", "--callee", "+8613800138006", "--redis-url", redis_url)
    assert p.returncode == 2 and p.stdout == ""

    bad = write(tmp_path, "f.csv", "number,enterprise_id,outbound\n95500,E-DEMO,true\nxyz,E-DEMO,true\n")
    p = run_cag("policy", "load", "filings", str(bad), "--replace", "--redis-url", redis_url)
    assert p.returncode == 1 and p.stdout == ""
    assert f"{bad}:3: number: not a phone number 'xyz'" in p.stderr.splitlines()
    assert len(refdata(redis_url)["filings"]) == 5  # the demo filings are intact


def test_unreachable_redis(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    # Redis down is not bad data: exit 3, as for explain (issue 14: distinct exit codes).
    assert cag("policy", "load", "trunks", str(write(tmp_path, "t.csv", TRUNKS)), "--redis-url", url) == 3
    out, err = capsys.readouterr()
    assert out == "" and "cannot reach redis" in err
    rc = cag("explain", "--source", "127.0.0.1", "--caller", "95500", "--callee", "+8613800138000", "--redis-url", url)
    out, err = capsys.readouterr()
    assert rc == 3 and out == "" and "cannot reach redis" in err  # an outage is never a "reject"


def test_embedded_server_when_no_url(state_dir: Path, tmp_path: Path) -> None:
    """No --redis-url and a fresh state dir: the command starts the embedded server itself."""
    env = {k: v for k, v in os.environ.items() if k not in ("CAG_REDIS_URL", "CAG_STATE_DIR")}
    sock = socket_path(state_dir.resolve())
    try:
        p = run_cag("policy", "load", "trunks", str(DEMO_DIR / "trunks.csv"), "--state-dir", str(state_dir), env=env)
        assert p.returncode == 0, p.stderr
        assert sock.exists()
        p = run_cag("policy", "show", "trunks", "T-DEMO", "--state-dir", str(state_dir), env=env)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["enterprise_id"] == "E-DEMO"
        assert "T-DEMO" in refdata(f"unix://{sock}")["trunks"]
    finally:
        if sock.exists():
            client = redis.Redis(unix_socket_path=str(sock))
            try:
                client.shutdown(nosave=True)
            except redis.ConnectionError:
                pass
            finally:
                client.close()
