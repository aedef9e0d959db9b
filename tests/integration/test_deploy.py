"""deploy/ against the real tools: promtool, a real Prometheus scraping a real gateway, systemd-analyze.

The dashboard and the alert rules may only name metrics the gateway really
exports: every expression is evaluated by Prometheus (a syntax error fails)
and its metric names are compared with a live scrape.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.peers import ROOT, free_port
from tests.integration.harness import SIPP_DIR, GatewayProc, SippUas, run_uac, standard_policy

pytestmark = pytest.mark.integration

DEPLOY = ROOT / "deploy"
PROM_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "cag.json"
METRIC = re.compile(r"\b(cag_[a-z0-9_]+|up)\b")


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed (scripts/setup.sh installs Debian's prometheus)")
    return path


def test_promtool_accepts_the_shipped_config_and_rules() -> None:
    promtool = _need("promtool")
    for args in (["check", "config", str(PROM_DIR / "prometheus.yml")],
                 ["check", "config", str(PROM_DIR / "compose.yml")],
                 ["check", "rules", str(PROM_DIR / "alerts.yml")]):
        r = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr


def test_systemd_unit_verifies() -> None:
    tool = _need("systemd-analyze")
    unit = (DEPLOY / "systemd" / "cag.service").read_text()
    assert "NoNewPrivileges=yes" in unit and "ProtectSystem=strict" in unit
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in unit
    # The unit names /opt/cag/.venv/bin/cag, absent here: verify a copy with an existing binary.
    work = Path(subprocess.run(["mktemp", "-d"], capture_output=True, text=True).stdout.strip())
    (work / "cag.service").write_text(unit.replace("/opt/cag/.venv/bin/cag", "/bin/true"))
    r = subprocess.run([tool, "verify", str(work / "cag.service")], capture_output=True, text=True, timeout=60)
    shutil.rmtree(work)
    if r.returncode != 0 and "not booted" in (r.stdout + r.stderr):
        pytest.skip("systemd-analyze cannot run in this container")
    assert r.returncode == 0, r.stdout + r.stderr


def _expressions() -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        out += [(f"panel {panel['title']!r}", t["expr"]) for t in panel.get("targets", [])]  # rows have none
    for group in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]:
        out += [(f"alert {rule['alert']}", rule["expr"]) for rule in group["rules"]]
    return out


def _api_request(port: int, path: str, timeout: float = 20.0) -> int:
    """Status of one unauthenticated GET, once the API (a child of cag serve) answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _query(port: int, expr: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            body: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        body = json.loads(e.read())
    return body


def test_real_prometheus_scrapes_the_gateway_and_reads_the_reject_ratio(tmp_path: Path, redis_url: str) -> None:
    prometheus = _need("prometheus")
    rows = standard_policy(redis_url, callees=20)
    uas = SippUas(tmp_path).start()
    api_port = free_port(__import__("socket").SOCK_STREAM)  # the provisioning API's metrics join the scrape
    gw = GatewayProc(redis_url, tmp_path / "gw", [uas.hop], workers=2,
                     extra=("--log-keep-digits", "4", "--api", f"127.0.0.1:{api_port}"))
    prom: subprocess.Popen[bytes] | None = None
    try:
        gw.start()
        ok = run_uac(tmp_path, gw.port, rows, calls=60, rate=100)
        assert ok.successful == 60, ok.stdout
        xml = tmp_path / "uac_608.xml"
        xml.write_text((SIPP_DIR / "uac_reject.xml").read_text().replace("__CODE__", "608"))
        bad = run_uac(tmp_path, gw.port, [["95500", "+8613800000001", "no-such-token"]], calls=40, rate=100,
                      scenario=str(xml))
        assert bad.successful == 40, bad.stdout
        time.sleep(1.5)  # the workers copy their counters into the metrics once a second

        # Counters across the two workers match the calls made, per reason.
        assert gw.metric("cag_decisions_total", decision="admit", reason="admitted") == 60
        assert gw.metric("cag_decisions_total", decision="reject", reason="consent_unknown") == 40
        assert gw.metric("cag_invites_total") == 100
        assert gw.metric("cag_enterprise_decisions_total", enterprise="E1", decision="admit") == 60
        assert gw.metric("cag_enterprise_decisions_total", decision="reject") == 40
        assert gw.metric("cag_messages_total", direction="in", transport="udp") >= 100 * 4
        assert gw.metric("cag_messages_total", direction="out", transport="udp") >= 100 * 4
        assert gw.metric("cag_refdata_age_seconds") < 30
        assert _api_request(api_port, "/v1/consents/x") == 401  # a request: the API's series exist
        time.sleep(0.2)
        assert gw.metric("cag_api_requests_total", route="/v1/consents/{token}", status="401") == 1
        exported = {name for (name, _labels) in gw.metrics()}

        port = free_port(__import__("socket").SOCK_STREAM)
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(PROM_DIR / "alerts.yml")],
            "scrape_configs": [{"job_name": "cag",
                                "static_configs": [{"targets": [f"127.0.0.1:{gw.metrics_port}"]}]}],
        }))
        prom = subprocess.Popen(
            [prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"), start_new_session=True,
        )
        ratio_expr = 'sum(cag_decisions_total{decision="reject"}) / sum(cag_decisions_total)'
        deadline = time.monotonic() + 30
        ratio = None
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                res = _query(port, ratio_expr)
            except OSError:
                continue
            if res.get("status") == "success" and res["data"]["result"]:
                ratio = float(res["data"]["result"][0]["value"][1])
                break
        assert ratio is not None, (tmp_path / "prometheus.log").read_text()[-2000:]
        assert ratio == pytest.approx(0.4)

        # Every dashboard panel and alert expression: parsed and evaluated by Prometheus,
        # and naming only metrics the gateway exports.
        for where, expr in _expressions():
            res = _query(port, expr)
            assert res.get("status") == "success", f"{where}: {expr}: {res}"
            for name in METRIC.findall(expr):
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                assert name == "up" or name in exported or base + "_bucket" in exported, \
                    f"{where} names {name}, which the gateway does not export"
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(10)
        gw.stop()
        uas.stop()
    # One JSON line per rejection, the callee masked to its last 4 digits.
    lines = [json.loads(x) for x in gw.log_path.read_text().splitlines() if x.startswith("{")]
    rejects = [x for x in lines if x["msg"] == "reject"]
    assert len(rejects) == 40 and {x["reason"] for x in rejects} == {"consent_unknown"}
    assert all(x["callee"] == "+*********0001" and x["sip_code"] == 608 for x in rejects), rejects[0]


def test_compose_file_mounts_files_that_exist() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"redis", "gateway", "prometheus", "grafana"}
    for svc in compose["services"].values():
        for vol in svc.get("volumes", []):
            src = vol.split(":", 1)[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), vol
    assert (ROOT / compose["services"]["gateway"]["build"]["dockerfile"]).exists()
