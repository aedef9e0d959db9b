"""``gateway.metrics.Meter``: what is flushed equals what direct prometheus-client calls give."""

from __future__ import annotations

import asyncio
import random

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from gateway.metrics import DECISION_SECONDS, LATENCY_BUCKETS, Meter


def _samples(reg: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in reg.collect()
        for s in m.samples
        if not s.name.endswith("_created")
    }


def _pair() -> tuple[CollectorRegistry, Counter, Histogram]:
    reg = CollectorRegistry()
    c = Counter("cag_decisions_total", "d", ["decision", "reason"], registry=reg)
    h = Histogram("cag_decision_seconds", "s", buckets=LATENCY_BUCKETS, registry=reg)
    return reg, c, h


def test_flushed_values_equal_direct_calls() -> None:
    rnd = random.Random(13)
    direct_reg, dc, dh = _pair()
    meter_reg, mc, mh = _pair()
    meter = Meter()
    bounds = [*LATENCY_BUCKETS, 2.0]
    for _ in range(5000):
        # bucket bounds exactly, just around them, and beyond the last (+Inf)
        x = (
            rnd.choice(bounds) * rnd.choice([1.0, 0.999, 1.001])
            if rnd.random() < 0.5
            else rnd.expovariate(500)
        )
        dh.observe(x)
        meter.observe(mh, x)
        labels = rnd.choice(
            [("admit", "admitted"), ("reject", "callee_dnc"), ("reject", "store_unavailable")]
        )
        dc.labels(*labels).inc()
        meter.count(mc, *labels)
        if rnd.random() < 0.001:
            meter.flush()  # flushes in between add up
    assert _samples(meter_reg) != _samples(direct_reg)  # nothing is lost before the last flush...
    meter.flush()
    want, got = _samples(direct_reg), _samples(meter_reg)
    assert want.keys() == got.keys()
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-9), k


def test_an_empty_flush_writes_nothing() -> None:
    reg, _, h = _pair()
    before = _samples(reg)
    Meter().flush()
    m = Meter()
    m.observe(h, 0.001)
    m.flush()
    m.flush()
    after = _samples(reg)
    assert after[("cag_decision_seconds_count", ())] == 1
    assert before[("cag_decision_seconds_count", ())] == 0


def test_the_gateway_histograms_have_the_bucket_values_the_meter_writes() -> None:
    """Pins prometheus-client's per-bucket values (``_buckets``, ``_sum``) the flush relies on."""
    assert len(DECISION_SECONDS._buckets) == len(LATENCY_BUCKETS) + 1
    assert hasattr(DECISION_SECONDS._sum, "inc")


async def test_start_flushes_every_interval_and_stop_flushes_the_rest() -> None:
    reg, c, _ = _pair()
    m = Meter()
    m.start(asyncio.get_running_loop(), interval=0.01)
    m.count(c, "admit", "admitted", n=3)
    await asyncio.sleep(0.05)
    assert (
        _samples(reg)[("cag_decisions_total", (("decision", "admit"), ("reason", "admitted")))] == 3
    )
    m.count(c, "admit", "admitted")
    m.stop()
    assert (
        _samples(reg)[("cag_decisions_total", (("decision", "admit"), ("reason", "admitted")))] == 4
    )
