"""Writes deploy/grafana/dashboards/cag.json (run: python deploy/grafana/make_dashboard.py).

Generated rather than hand-edited so every panel is one line here and the
queries stay checkable: tests/integration/test_deploy.py parses each panel's
expression with a real Prometheus and checks its metric names against a live
gateway scrape.
"""

from __future__ import annotations

import json
from pathlib import Path

DS = {"type": "prometheus", "uid": "${datasource}"}

PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    # (title, unit, [(legend, expr)])
    ("Calls/s by decision", "reqps", [("{{decision}}", 'sum by (decision) (rate(cag_decisions_total[1m]))')]),
    ("Rejections/s by reason", "reqps",
     [("{{reason}}", 'sum by (reason) (rate(cag_decisions_total{decision="reject"}[1m]))')]),
    ("Decision latency vs budget", "s", [
        ("p50", 'histogram_quantile(0.5, sum by (le) (rate(cag_decision_seconds_bucket[1m])))'),
        ("p99", 'histogram_quantile(0.99, sum by (le) (rate(cag_decision_seconds_bucket[1m])))'),
        ("p99.9", 'histogram_quantile(0.999, sum by (le) (rate(cag_decision_seconds_bucket[1m])))'),
        ("budget", 'vector(0.05)'),
    ]),
    ("Redis: up (min over workers) and p99 batch latency", "short", [
        ("redis up", 'min(cag_redis_up)'),
        ("p99 s", 'histogram_quantile(0.99, sum by (le) (rate(cag_redis_seconds_bucket[1m])))'),
    ]),
    ("Redis errors and breaker", "ops", [
        ("{{event}}", 'sum by (event) (rate(cag_proxy_events_total{event=~"store_errors|store_timeouts|'
                      'breaker_opened|loop_stall_timeouts|late_answers"}[1m]))'),
    ]),
    ("Fail-mode and shadow events", "ops", [
        ("{{event}}", 'sum by (event) (rate(cag_proxy_events_total{event=~"fail_open|fail_closed|'
                      'shadow_would_reject|auto_suspended"}[1m]))'),
    ]),
    ("Next hops up", "short", [("{{hop}}", 'max by (hop) (cag_next_hop_up)')]),
    ("Next hop OPTIONS round trip", "s", [("{{hop}}", 'max by (hop) (cag_next_hop_rtt_seconds)')]),
    ("Transactions in flight", "short", [("in flight", 'sum(cag_transactions_in_flight)')]),
    ("Dropped messages/s by reason", "pps",
     [("{{event}}", 'sum by (event) (rate(cag_proxy_events_total{event=~"dropped_.*|shed_.*"}[1m]))')]),
    ("Audit trail", "ops", [
        ("{{event}}", 'sum by (event) (rate(cag_proxy_events_total{event=~"audit_.*"}[1m]))'),
    ]),
    ("Decisions/s by enterprise (top 10)", "reqps", [
        ("{{enterprise}} {{decision}}",
         'topk(10, sum by (enterprise, decision) (rate(cag_enterprise_decisions_total[5m])))'),
    ]),
    ("SIP messages/s by transport", "pps", [
        ("{{direction}} {{transport}}", 'sum by (direction, transport) (rate(cag_messages_total[1m]))'),
    ]),
    ("Refused / dropped messages/s", "pps",
     [("{{reason}}", 'sum by (reason) (rate(cag_messages_dropped_total[1m]))')]),
    ("Audit lag: stream, buffer, spool", "short", [
        ("stream entries (archiver lag)", 'max(cag_audit_stream_entries)'),
        ("buffered entries", 'sum(cag_audit_buffer_entries)'),
        ("spool bytes", 'sum(cag_audit_spool_bytes)'),
    ]),
    ("Reference data age (s)", "s", [("oldest worker", 'max(cag_refdata_age_seconds)')]),
    ("Workers and reference data", "short", [
        ("workers", 'sum(cag_workers)'),
        ("refdata loaded (min)", 'min(cag_refdata_loaded)'),
        ("refdata version (min)", 'min(cag_refdata_version)'),
    ]),
]


# A row of its own: the provisioning API (cag api, SPEC §10), its metrics in the same scrape
# when `cag serve --api` runs it beside the workers.
API_ROW = "Provisioning API"
API_PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("API requests/s by route and status", "reqps", [
        ("{{method}} {{route}} {{status}}",
         'sum by (method, route, status) (rate(cag_api_requests_total[1m]))'),
    ]),
    ("API latency p99 by route", "s", [
        ("{{route}}", 'histogram_quantile(0.99, sum by (route, le) (rate(cag_api_request_seconds_bucket[1m])))'),
    ]),
    ("Complaints/h by channel and complaint suspensions", "short", [
        ("{{channel}}", 'sum by (channel) (increase(cag_api_complaints_total[1h]))'),
        ("suspended (complaints)", 'sum(increase(cag_api_complaint_suspensions_total[1h]))'),
    ]),
    ("API errors/s: 401, 403, 422, 429, 5xx", "reqps", [
        ("{{status}}", 'sum by (status) (rate(cag_api_requests_total{status=~"401|403|422|429|5.."}[1m]))'),
    ]),
]


def _panel(pid: int, title: str, unit: str, targets: list[tuple[str, str]], x: int, y: int) -> dict[str, object]:
    return {
        "id": pid,
        "type": "timeseries",
        "title": title,
        "datasource": DS,
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(65 + j), "datasource": DS, "expr": expr, "legendFormat": legend}
            for j, (legend, expr) in enumerate(targets)
        ],
    }


def dashboard() -> dict[str, object]:
    panels: list[dict[str, object]] = []
    for i, (title, unit, targets) in enumerate(PANELS):
        panels.append(_panel(i + 1, title, unit, targets, 12 * (i % 2), 8 * (i // 2)))
    y = 8 * ((len(PANELS) + 1) // 2)
    panels.append({"id": len(panels) + 1, "type": "row", "title": API_ROW, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
    for i, (title, unit, targets) in enumerate(API_PANELS):
        panels.append(_panel(len(panels) + 1, title, unit, targets, 12 * (i % 2), y + 1 + 8 * (i // 2)))
    return {
        "uid": "cag-gateway",
        "title": "cag — call admission gateway",
        "tags": ["cag", "sip"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [{
            "name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus",
        }]},
        "panels": panels,
    }


if __name__ == "__main__":
    out = Path(__file__).parent / "dashboards" / "cag.json"
    out.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(out)
