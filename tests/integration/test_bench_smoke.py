"""CI smoke of the benchmarks: a quick sweep and a replay of a generated capture, real peers.

Asserts the report's structure and that the figures are plausible (non-zero
rates, ordered percentiles, decisions by reason), not that a rate passes:
the real figures come from the full sweep on a quiet machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench.peers import ROOT

pytestmark = pytest.mark.integration

PCTS = ("p50", "p90", "p99", "p99.9")


def _bench(*args: str, timeout: float) -> tuple[str, float]:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return r.stdout, time.monotonic() - t0


def _ordered(lat: dict[str, Any]) -> None:
    assert lat["count"] > 0
    values = [lat[p] for p in PCTS]
    assert all(v >= 0 for v in values) and values == sorted(values), lat


def test_quick_sweep_writes_a_full_report(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    relay = f"relay={sys.executable} -m bench.relay --listen {{port}} --next-hop {{next_hop}}"
    stdout, took = _bench("sweep", "--quick", "--out", str(out), "--consents", "2000", "--filed", "200",
                          "--proxy", relay, timeout=120)
    assert took < 55, f"quick sweep took {took:.0f} s"  # 6 steps of 3 s: direct, relay, gateway at 2 rates
    assert f"bench: report {out / 'report.json'}" in stdout
    assert "gateway" in stdout and "/s" in stdout  # progress lines
    rep = json.loads((out / "report.json").read_text())
    assert rep["schema"] == "cag-bench-sweep/1"
    for key in ("cpu_model", "cores", "python", "uvloop", "redis_py", "redis_server", "sipp"):
        assert rep["machine"][key], key
    steps = rep["steps"]
    assert [s["target"] for s in steps] == ["direct", "relay", "gateway"] * 2
    for s in steps:
        assert s["calls"] > 0 and s["achieved_cps"] > 0.5 * s["rate"]
        assert s["successful"] + s["failed"] >= s["created"] > 0
        _ordered(s["latency_ms"])
        assert {"caller", "callee"} <= set(s["retransmissions"])
        assert "max" in s["in_flight"]
    for s in (x for x in steps if x["target"] == "gateway"):
        assert s["decisions"].get("admitted", 0) > 0
        assert len(s["decisions"]) >= 3  # rejection families too
        _ordered(s["decision_ms"])
        assert s["cpu_per_1000_calls_s"]["gateway"] > 0
        assert "redis" in s["cpu_per_1000_calls_s"]
        assert s["cpu_per_1000_calls_s"]["audit_archiver"] > 0  # the archiver runs beside it, as in production
        assert len(s["workers"]) == 2 and all(w["peak_kib"] > 0 for w in s["workers"])
    assert rep["summary"]["added_latency_ms"]
    # The other proxy (--proxy): every call went through it, with its own CPU and latency figures.
    for s in (x for x in steps if x["target"] == "relay"):
        assert s["failed"] == 0 and s["proxy_cpu_us_per_call"] > 0
    assert set(rep["summary"]["other_proxies_added_latency_ms"]["relay"]) == {"50", "100"}
    assert set(rep["plots"]) == {"latency.png", "decisions.png"}
    assert all((out / p).stat().st_size > 0 for p in rep["plots"])


def test_replay_of_a_generated_capture(tmp_path: Path) -> None:
    cap = tmp_path / "calls.pcap"
    _bench("gen-pcap", str(cap), "--calls", "200", "--cps", "40", "--consents", "2000", "--filed", "200",
           timeout=30)
    out = tmp_path / "replay"
    stdout, took = _bench("replay", str(cap), "--speed", "4", "--out", str(out), "--consents", "2000",
                          "--filed", "200", timeout=60)
    assert took < 20, f"replay took {took:.0f} s"
    assert f"bench: report {out / 'report.json'}" in stdout
    rep = json.loads((out / "report.json").read_text())
    assert rep["schema"] == "cag-bench-replay/1"
    assert rep["invites"] == 200 and rep["failed"] == 0
    wire = rep["decisions_on_wire"]
    assert wire.get("admitted", 0) > 150  # the default mix is 90 % admitted
    assert {"consent_unknown", "callee_dnc", "caller_not_filed", "purpose_marketing"} <= set(wire)
    assert rep["decisions"] == wire  # the gateway's own counters agree with what came back
    _ordered(rep["latency_ms"])
    assert rep["replay_s"] < rep["capture_span_s"]  # --speed 4


def test_audit_e2e_compares_the_same_run_with_and_without_audit(tmp_path: Path) -> None:
    from bench import capture

    if capture.available():
        pytest.skip(f"no capture: {capture.available()}")
    out = tmp_path / "audit.json"
    r = subprocess.run([sys.executable, "-m", "bench.audit_e2e", "--rate", "50", "--seconds", "1", "--rounds", "1",
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    report = json.loads(out.read_text())
    for mode in ("on", "off"):
        _ordered(report["latency_ms"][mode])
        assert report["calls"][mode]["successful"] >= 45
    assert report["archive_segments"] > 0, "the audited gateway's archiver wrote segments"
    assert "p99 difference" in r.stdout
