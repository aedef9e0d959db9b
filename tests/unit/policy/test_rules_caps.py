"""Caps (R6): callee-local day, limits per call, check_cap."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from policy.model import FrequencyCap
from policy.rules.caps import CAP_NAMES, CapLimits, callee_day, check_cap
from tests.unit.policy._fixtures import REF, at

NY = ZoneInfo("America/New_York")


def test_callee_day_and_seconds_to_midnight() -> None:
    assert callee_day("Asia/Shanghai", at(2026, 3, 10, 12, 0)) == ("20260310", 12 * 3600)
    assert callee_day("Asia/Shanghai", at(2026, 3, 10, 0, 0)) == ("20260310", 24 * 3600)
    assert callee_day("Asia/Shanghai", at(2026, 3, 10, 23, 59, 59)) == ("20260310", 1)
    half = datetime(2026, 3, 10, 23, 59, 59, 500_000, tzinfo=ZoneInfo("Asia/Shanghai"))
    assert callee_day("Asia/Shanghai", half) == ("20260310", 1)


def test_callee_day_is_the_callees_date() -> None:
    # 10:00 on 10 March in Shanghai is still 9 March in New York (22:00 EDT).
    assert callee_day("America/New_York", at(2026, 3, 10, 10, 0)) == ("20260309", 2 * 3600)


def test_callee_day_on_a_dst_day() -> None:
    # 2026-03-08 in New York has 23 hours.
    assert callee_day("America/New_York", datetime(2026, 3, 8, 0, 0, tzinfo=NY)) == (
        "20260308",
        23 * 3600,
    )


def test_limits_for_a_call() -> None:
    caps = FrequencyCap(callee_daily=3, callee_total_daily=5, caller_per_second=2)
    a = CapLimits.for_call(REF.enterprises["ent-a"], REF.trunks["t-a"], caps)
    assert a == CapLimits(
        callee_daily=3, callee_total_daily=5, caller_per_second=2, trunk_max_cps=10
    )
    b = CapLimits.for_call(REF.enterprises["ent-b"], REF.trunks["t-b"], caps)
    assert (b.callee_daily, b.trunk_max_concurrent) == (1, 5)  # enterprise override, trunk limit
    assert CapLimits.for_call(None, None, FrequencyCap.model_validate({})) == CapLimits()
    assert CapLimits().callee_daily == 3  # SPEC §4 default
    assert [a.limit_for(n) for n in CAP_NAMES] == [3, 5, 2, 10, 0]


def test_zero_limit_is_no_limit() -> None:
    c = check_cap("caller_rate", 1_000_000, 0, 1)
    assert (c.outcome, c.detail) == ("pass", "no limit")


@pytest.mark.parametrize("name", CAP_NAMES)
def test_cap_reached(name: str) -> None:
    assert check_cap(name, 2, 3, 77).outcome == "pass"
    c = check_cap(name, 3, 3, 77)
    assert (c.name, c.outcome, c.reason, c.retry_after) == (name, "fail", name, 77)
    assert check_cap(name, 4, 3, 0).retry_after == 1  # never below 1
