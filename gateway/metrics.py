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

from collections.abc import Callable

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
