"""Prometheus metrics shared by the worker processes, and the metrics HTTP endpoint.

Workers are separate processes, so prometheus-client runs in multiprocess
mode: each worker writes its samples to memory-mapped files under
``PROMETHEUS_MULTIPROC_DIR`` and the parent aggregates them behind one
``/metrics`` (``gateway.metrics_export``). Only workers import this module:
an unlabelled gauge defined in the parent would add the parent's zero to
every "min" aggregate. Label sets are bounded by construction: reasons and events are
code-defined strings, never numbers or Call-IDs from a message.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

# Sub-millisecond work needs sub-millisecond buckets (issue 6).
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005,
    0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
)

INVITES = Counter("cag_invites_total", "Initial INVITEs handed to the admission decision")
DECISIONS = Counter(
    "cag_decisions_total", "Admission decisions by outcome and reason code", ["decision", "reason"]
)
DECISION_SECONDS = Histogram(
    "cag_decision_seconds", "Time from INVITE to admission decision", buckets=LATENCY_BUCKETS
)
REDIS_SECONDS = Histogram(
    "cag_redis_seconds", "Latency of the Redis batch per decision", buckets=LATENCY_BUCKETS
)
EVENTS = Counter(
    "cag_proxy_events_total",
    "Proxy and engine events (messages, drops, retransmissions, failovers, store errors...)",
    ["event"],
)
IN_FLIGHT = Gauge(
    "cag_transactions_in_flight", "INVITE transactions held in memory", multiprocess_mode="livesum"
)
HOP_UP = Gauge(
    "cag_next_hop_up", "1 when the next hop answers, 0 when marked down", ["hop"], multiprocess_mode="livemax"
)
REFDATA_VERSION = Gauge(
    "cag_refdata_version", "Reference data version held by each worker (pid label)", multiprocess_mode="liveall"
)
REFDATA_LOADED = Gauge(
    "cag_refdata_loaded", "1 when a worker holds reference data", multiprocess_mode="livemin"
)
REDIS_OK = Gauge("cag_redis_up", "1 when the worker's Redis calls succeed", multiprocess_mode="livemin")
WORKERS = Gauge("cag_workers", "Worker processes alive", multiprocess_mode="liveall")
HOP_RTT = Gauge(
    "cag_next_hop_rtt_seconds", "Last OPTIONS round trip to each next hop", ["hop"], multiprocess_mode="livemax"
)
REFDATA_AGE = Gauge(
    "cag_refdata_age_seconds",
    "Seconds since a worker last confirmed its reference data current (one series per worker pid)",
    multiprocess_mode="liveall",
)
MESSAGES = Counter(
    "cag_messages_total", "SIP messages received / sent by transport", ["direction", "transport"]
)
DROPPED = Counter(
    "cag_messages_dropped_total",
    "Messages dropped or refused before the proxy logic, by reason (malformed, unknown_source, pike, overload...)",
    ["reason"],
)
ENTERPRISE_DECISIONS = Counter(
    "cag_enterprise_decisions_total",
    "Decisions per enterprise (the first metrics_max_enterprises ids seen per worker; the rest as 'other')",
    ["enterprise", "decision"],
)
AUDIT_BUFFER = Gauge(
    "cag_audit_buffer_entries", "Audit entries waiting in worker memory for the next flush", multiprocess_mode="livesum"
)
AUDIT_SPOOL = Gauge(
    "cag_audit_spool_bytes", "Bytes in the workers' local audit spool (Redis away or stream full)",
    multiprocess_mode="livesum",
)
AUDIT_STREAM = Gauge(
    "cag_audit_stream_entries",
    "Entries in the Redis audit stream not yet archived, as last seen by a worker (archiver lag)",
    multiprocess_mode="livemax",
)


ReadyCheck = Callable[[], tuple[bool, dict[str, object]]]


class Meter:
    """Counters as plain integers and histograms as bucket arrays, flushed once a second (issue 13).

    Why: a prometheus-client call in multiprocess mode is a lock and an
    mmap write (a histogram observation two), tens of µs per decision at
    the rates we aim for. The hot path does a dict update here instead, and
    ``flush()`` adds the sums to the prometheus metrics: the exported
    series, names and labels are the ones the direct calls produced.

    Histograms are written through prometheus-client's per-bucket values
    (``_buckets``, ``_sum``; the same writes ``Histogram.observe`` makes),
    because the public API has no "add n observations to bucket i" call;
    ``tests/unit/test_meter.py`` pins that against the exposition, so a
    prometheus-client upgrade that moves them fails a test, not a graph.
    """

    __slots__ = ("_counts", "_hists", "_timer")

    def __init__(self) -> None:
        self._counts: dict[tuple[Any, tuple[str, ...]], int] = {}
        self._hists: dict[Histogram, _HistAcc] = {}
        self._timer: asyncio.TimerHandle | None = None

    def count(self, metric: Counter, *labels: str, n: int = 1) -> None:
        """``metric.labels(*labels).inc(n)``, deferred to the next flush."""
        key = (metric, labels)
        self._counts[key] = self._counts.get(key, 0) + n

    def observe(self, hist: Histogram, seconds: float) -> None:
        """``hist.observe(seconds)`` (an unlabelled histogram), deferred to the next flush."""
        acc = self._hists.get(hist)
        if acc is None:
            acc = self._hists[hist] = _HistAcc(hist)
        acc.counts[bisect.bisect_left(acc.bounds, seconds)] += 1
        acc.total += seconds

    def flush(self) -> None:
        """Add what was recorded since the last flush to the prometheus metrics."""
        counts, self._counts = self._counts, {}
        for (metric, labels), n in counts.items():
            (metric.labels(*labels) if labels else metric).inc(n)
        for acc in self._hists.values():
            acc.flush()

    def start(self, loop: asyncio.AbstractEventLoop, interval: float = 1.0) -> None:
        """Flush every ``interval`` s on ``loop`` until ``stop()``."""

        def tick() -> None:
            self.flush()
            self._timer = loop.call_later(interval, tick)

        self._timer = loop.call_later(interval, tick)

    def stop(self) -> None:
        """Stop the periodic flush and flush what is left (worker exit)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()


class _HistAcc:
    """One histogram's observations since the last flush: per-bucket counts and the sum."""

    __slots__ = ("bounds", "counts", "hist", "total")

    def __init__(self, hist: Histogram) -> None:
        self.hist = hist
        # prometheus-client's bounds end with +Inf; bisect_left gives the first bound >= x,
        # which is the bucket ``observe`` picks (``amount <= bound``).
        self.bounds: list[float] = list(hist._upper_bounds)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def flush(self) -> None:
        if not any(self.counts):
            return
        buckets = self.hist._buckets
        for i, c in enumerate(self.counts):
            if c:
                buckets[i].inc(c)
        self.hist._sum.inc(self.total)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
