"""The API's Prometheus metrics (``cag_api_*``), same conventions as ``gateway.metrics``.

Started beside the workers by ``cag serve --api``, the API process inherits
``PROMETHEUS_MULTIPROC_DIR`` and its samples join the gateway's /metrics;
run alone (``cag api``) it serves them on its own ``/metrics``. Labels are
bounded: ``route`` is the route template (``/v1/consents/{token}``, never a
token), ``channel`` one of three values.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

REQUESTS = Counter("cag_api_requests_total", "API requests by route template, method and status",
                   ["route", "method", "status"])
SECONDS = Histogram("cag_api_request_seconds", "API request latency by route template", ["route"],
                    buckets=BUCKETS)
COMPLAINTS = Counter("cag_api_complaints_total", "Complaints filed (R12) by channel", ["channel"])
SUSPENSIONS = Counter(
    "cag_api_complaint_suspensions_total",
    "Enterprises suspended automatically for complaints over their threshold (cause complaints)",
)
for _channel in ("12321", "carrier", "other"):  # known label values start at 0, so rate() sees the first one
    COMPLAINTS.labels(_channel)
AUDIT_FAILED = Counter("cag_api_audit_failed_total", "API changes whose audit record could not be written")

CONTENT_TYPE = CONTENT_TYPE_LATEST


def render() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)
