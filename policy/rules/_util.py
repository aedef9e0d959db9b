"""Small helpers shared by the rule modules (time handling, Check builders)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from policy.decision import Check


def aware(now: datetime) -> datetime:
    """Rules compare instants; a naive ``now`` is taken as UTC rather than local wall time."""
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def ceil_seconds(delta: timedelta) -> int:
    """SPEC §5: Retry-After is whole seconds, rounded up, at least 1."""
    return max(1, math.ceil(delta.total_seconds()))


def passed(name: str, detail: str = "") -> Check:
    return Check(name, "pass", None, detail)


def failed(name: str, reason: str, detail: str = "", retry_after: int | None = None) -> Check:
    return Check(name, "fail", reason, detail, retry_after)


def skipped(name: str, detail: str = "") -> Check:
    return Check(name, "skip", None, detail)
