"""Frequency caps (R6: the carrier sets the frequency of outbound calls).

The counters live in Redis; this module decides the limits for one call,
the callee-local day the daily counters are keyed by, and how a count
compares with a limit (the store's script mirrors ``check_cap``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from policy.decision import Check
from policy.model import Enterprise, FrequencyCap, Trunk
from policy.rules._util import aware, ceil_seconds, failed, passed, skipped, zone

# SPEC §5 order; each cap's check name is also its reason code.
CAP_NAMES: tuple[str, ...] = (
    "callee_daily_cap",
    "callee_total_daily_cap",
    "caller_rate",
    "trunk_rate",
    "trunk_concurrent",
)

PER_SECOND_RETRY = 1  # Retry-After for the per-second caps


def callee_day(callee_tz: str, now: datetime) -> tuple[str, int]:
    """The callee-local date "YYYYMMDD" and whole seconds (ceil, ≥ 1) until its local midnight.

    "3 calls a day" means the callee's day (R6/R8): the date is the daily
    counters' key suffix, and the seconds are their TTL and the Retry-After
    of a daily-cap rejection. Computed on UTC instants, so DST days are right.
    """
    zi = zone(callee_tz)
    now_utc = aware(now).astimezone(UTC)
    local = now_utc.astimezone(zi)
    midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), tzinfo=zi)
    return local.strftime("%Y%m%d"), ceil_seconds(midnight.astimezone(UTC) - now_utc)


@dataclass(frozen=True, slots=True)
class CapLimits:
    """The caps that apply to one call; 0 means no limit."""

    callee_daily: int = 3
    callee_total_daily: int = 0
    caller_per_second: int = 0
    trunk_max_cps: int = 0
    trunk_max_concurrent: int = 0

    @classmethod
    def for_call(
        cls, enterprise: Enterprise | None, trunk: Trunk | None, caps: FrequencyCap
    ) -> CapLimits:
        """Enterprise cap overrides the configured default (R6); trunk limits come from the trunk."""
        daily = caps.callee_daily
        if enterprise is not None and enterprise.callee_daily_cap is not None:
            daily = enterprise.callee_daily_cap
        return cls(
            callee_daily=daily,
            callee_total_daily=caps.callee_total_daily,
            caller_per_second=caps.caller_per_second,
            trunk_max_cps=trunk.max_cps if trunk is not None else 0,
            trunk_max_concurrent=trunk.max_concurrent if trunk is not None else 0,
        )

    def limit_for(self, name: str) -> int:
        """The limit of the cap named ``name`` (one of CAP_NAMES)."""
        return {
            "callee_daily_cap": self.callee_daily,
            "callee_total_daily_cap": self.callee_total_daily,
            "caller_rate": self.caller_per_second,
            "trunk_rate": self.trunk_max_cps,
            "trunk_concurrent": self.trunk_max_concurrent,
        }[name]


def check_cap(name: str, count: int, limit: int, retry_after: int) -> Check:
    """Would one more call exceed this cap (R6)?

    ``count`` is what the window already holds, not counting this call.

    Reason codes (= ``name``): ``callee_daily_cap``, ``callee_total_daily_cap``,
    ``caller_rate``, ``trunk_rate``, ``trunk_concurrent``; ``retry_after`` is
    carried on the failing check (seconds to local midnight for the daily
    caps, 1 for the per-second ones).
    """
    if limit <= 0:
        return passed(name, "no limit")
    if count >= limit:
        return failed(name, name, f"{count} of {limit} used", max(1, retry_after))
    return passed(name, f"{count} of {limit} used")


def check_caps(
    counts: Mapping[str, int | None],
    limits: CapLimits,
    day_ttl: int,
    *,
    all_checks: bool = False,
) -> tuple[Check, ...]:
    """Every cap in SPEC order; after the first that fails the rest are "skip" (R6).

    ``counts`` maps a cap name to what its window holds; a missing or None
    count was not evaluated (skipped). The store's script stops counting at
    the first refusal too; ``all_checks`` (explain) evaluates every cap with
    a count anyway. ``day_ttl`` is the Retry-After of the daily caps.
    """
    caps: list[Check] = []
    stopped = False
    for name in CAP_NAMES:
        count = counts.get(name)
        if (stopped and not all_checks) or count is None:
            caps.append(skipped(name, "not evaluated"))
            continue
        retry = day_ttl if name.endswith("daily_cap") else PER_SECOND_RETRY
        check = check_cap(name, count, limits.limit_for(name), retry)
        caps.append(check)
        stopped = stopped or check.outcome == "fail"
    return tuple(caps)
