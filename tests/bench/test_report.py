"""The sweep report's shape and the figures derived from raw counters (no peers needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import peers, report, sweep


def _step(target: str, rate: int, p50: float, passed: bool = True) -> dict[str, Any]:
    s: dict[str, Any] = {
        "target": target, "rate": rate, "achieved_cps": float(rate), "failed": 0, "passed": passed,
        "retransmissions": {"caller": 0, "callee": 0}, "in_flight": {"max": 3, "end_of_offer": 1, "series": [1, 3]},
        "latency_ms": {"count": 100, "p50": p50, "p90": 2 * p50, "p99": 3 * p50, "p99.9": 4 * p50},
    }
    if target == "gateway":
        s.update({
            "decisions": {"admitted": 90, "callee_dnc": 10}, "decision_ms": {"count": 100, "p99": 0.3},
            "cpu_per_1000_calls_s": {"gateway": 0.25, "redis": 0.02}, "gateway_cpu_us_per_call": 250.0,
            "workers": [{"pid": 1, "rss_start_kib": 1000, "rss_end_kib": 1100, "peak_kib": 2048}],
        })
    return s


STEPS = [_step("direct", 500, 0.1), _step("gateway", 500, 0.5),
         _step("direct", 1000, 0.12), _step("gateway", 1000, 0.9, passed=False)]


def test_summary_gives_rates_and_added_latency() -> None:
    s = sweep.summarise(STEPS)
    assert s["max_passing_rate"] == 500 and s["first_failing_rate"] == 1000
    assert s["added_latency_ms"]["500"]["p50"] == pytest.approx(0.4)
    assert s["added_latency_ms"]["1000"]["p99"] == pytest.approx(3 * 0.9 - 3 * 0.12)
    assert s["worker_peak_rss_kib"] == 2048
    json.dumps(s)


def test_table_has_a_row_per_step() -> None:
    t = sweep.table(STEPS).splitlines()
    assert len(t) == 2 + len(STEPS)
    assert all(line.count("|") == t[0].count("|") for line in t)
    assert "| gateway | 1000 |" in t[-1] and t[-1].endswith("| no |")


def test_backlog_detection() -> None:
    assert not sweep.backlog_growing([2, 3, 2, 3, 2, 3, 2, 3], 1000)
    assert sweep.backlog_growing([2, 3, 50, 120, 200, 300, 400, 500], 1000)
    assert not sweep.backlog_growing([5, 400], 1000)  # too few samples to judge


def test_histogram_delta_is_per_step_and_in_ms() -> None:
    def scrape(counts: list[float], total: float) -> sweep.Metrics:
        text = "\n".join(
            [f'cag_decision_seconds_bucket{{le="{le}"}} {c}' for le, c in zip(("0.0005", "0.001", "+Inf"), counts, strict=True)]
            + [f"cag_decision_seconds_sum {total}", "cag_decision_seconds_count 0"]
        )
        return peers.parse_metrics(text)

    before = scrape([10, 10, 10], 0.002)
    after = scrape([60, 110, 110], 0.077)  # +50 in (0, 0.5 ms], +50 in (0.5, 1 ms]
    d = sweep.histogram_delta(after, before, "cag_decision_seconds")
    assert d["count"] == 100
    assert d["p50"] == pytest.approx(0.5)
    assert d["p90"] == pytest.approx(0.5 + 0.5 * 0.8)
    assert d["mean"] == pytest.approx(0.75)
    assert d["buckets_ms"] == {"0.5": 50, "1": 100, "+Inf": 100}
    assert sweep.histogram_delta({}, {}, "cag_decision_seconds") == {"count": 0}


def test_parse_metrics_sums_labels() -> None:
    m = peers.parse_metrics(
        '# HELP x\ncag_decisions_total{decision="admit",reason="admitted"} 3.0\n'
        'cag_decisions_total{decision="reject",reason="callee_dnc"} 2.0\ncag_invites_total 5.0\n'
    )
    assert sweep._decisions(m) == {"admitted": 3.0, "callee_dnc": 2.0}
    assert m[("cag_invites_total", frozenset())] == 5.0


def test_machine_description_and_plots(tmp_path: Path) -> None:
    m = report.machine()
    for key in ("cpu_model", "cores", "python", "uvloop", "redis_py", "redis_server", "sipp"):
        assert key in m
    assert m["cores"] >= 1
    pytest.importorskip("matplotlib")
    written = report.plot_sweep(tmp_path, STEPS)
    assert written == ["latency.png", "decisions.png"]
    for name in written:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
