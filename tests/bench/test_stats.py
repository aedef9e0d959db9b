"""Percentiles from samples and from Prometheus buckets, as the benchmark reports compute them."""

from __future__ import annotations

import math
import random

import pytest

from bench import stats


def test_percentiles_match_linear_interpolation() -> None:
    xs = list(range(1, 101))  # 1..100
    p = stats.percentiles(xs)
    assert p["count"] == 100
    assert p["p50"] == pytest.approx(50.5)
    assert p["p90"] == pytest.approx(90.1)
    assert p["p99"] == pytest.approx(99.01)
    assert p["p99.9"] == pytest.approx(99.901)
    assert p["max"] == 100
    assert p["mean"] == pytest.approx(50.5)


def test_percentiles_ordered_and_order_independent() -> None:
    rng = random.Random(3)
    xs = [rng.expovariate(1.0) for _ in range(5000)]
    a = stats.percentiles(xs)
    b = stats.percentiles(sorted(xs, reverse=True))
    assert a == b
    assert a["p50"] <= a["p90"] <= a["p99"] <= a["p99.9"] <= a["max"]


def test_percentiles_of_nothing_has_no_made_up_figures() -> None:
    assert stats.percentiles([]) == {"count": 0}
    one = stats.percentiles([2.5])
    assert one["p50"] == one["p99.9"] == 2.5


def test_histogram_percentiles_interpolate_within_buckets() -> None:
    # 100 observations: 50 in (0, 1], 40 in (1, 2], 10 in (2, 4].
    buckets = {1.0: 50.0, 2.0: 90.0, 4.0: 100.0, math.inf: 100.0}
    p = stats.histogram_percentiles(buckets, total_sum=150.0)
    assert p["count"] == 100
    assert p["p50"] == pytest.approx(1.0)
    assert p["p90"] == pytest.approx(2.0)
    assert p["p99"] == pytest.approx(2.0 + 2.0 * 0.9)
    assert p["mean"] == pytest.approx(1.5)


def test_histogram_percentile_in_the_inf_bucket_is_the_last_bound() -> None:
    p = stats.histogram_percentiles({0.001: 1.0, 0.01: 1.0, math.inf: 10.0})
    assert p["p90"] == 0.01
    assert stats.histogram_percentiles({math.inf: 0.0}) == {"count": 0}


def test_proc_counters_of_this_process() -> None:
    import os

    busy = sum(i * i for i in range(200_000))
    assert busy > 0
    assert stats.cpu_seconds(os.getpid()) > 0
    mem = stats.memory_kib(os.getpid())
    assert 0 < mem["rss"] <= mem["peak"]
    assert stats.cpu_seconds(2**22 + 12345) == 0.0  # no such process
    assert stats.udp_drops([1]) >= 0
