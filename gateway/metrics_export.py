"""The parent's side of multiprocess metrics: aggregate the workers' files for /metrics.

Kept apart from ``gateway.metrics`` so the parent never defines a metric of
its own (see there). ``PROMETHEUS_MULTIPROC_DIR`` must be set before
``prometheus_client`` is first imported; ``check_mode`` asserts it.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, generate_latest, multiprocess

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def check_mode() -> None:
    from prometheus_client import values

    if os.environ.get(MULTIPROC_ENV) and values.ValueClass is values.MutexValue:
        raise RuntimeError("prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set")


def aggregate_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def render() -> bytes:
    return generate_latest(aggregate_registry())


def sample_values(name: str) -> list[float]:
    """Aggregated sample values of one metric family (for /readyz)."""
    out: list[float] = []
    for family in aggregate_registry().collect():
        if family.name == name:
            out.extend(s.value for s in family.samples)
    return out


def mark_dead(pid: int) -> None:
    multiprocess.mark_process_dead(pid)
