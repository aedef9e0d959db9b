"""check_quiet_hours (R8 the callee's rest time, in the callee's local time; R6 per-enterprise windows)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from policy.model import QuietHours
from policy.rules.quiet_hours import check_quiet_hours, quiet_retry_after
from tests.unit.policy._fixtures import at

DEFAULT = QuietHours.parse("21:00-08:00")
SH = "Asia/Shanghai"
NY = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("h", "m", "s", "retry"),
    [
        (23, 30, 0, 8 * 3600 + 30 * 60),
        (21, 0, 0, 11 * 3600),  # start is inside
        (0, 0, 0, 8 * 3600),
        (7, 59, 0, 60),
        (7, 59, 59, 1),
    ],
)
def test_inside_window_crossing_midnight(h: int, m: int, s: int, retry: int) -> None:
    now = at(2026, 3, 10, h, m, s)
    assert quiet_retry_after(DEFAULT, now, SH) == retry
    c = check_quiet_hours("+8613800138000", DEFAULT, now, SH)
    assert (c.name, c.outcome, c.reason, c.retry_after) == (
        "quiet_hours",
        "fail",
        "quiet_hours",
        retry,
    )


@pytest.mark.parametrize(("h", "m", "s"), [(8, 0, 0), (12, 0, 0), (20, 59, 59)])
def test_outside_window(h: int, m: int, s: int) -> None:
    now = at(2026, 3, 10, h, m, s)
    assert quiet_retry_after(DEFAULT, now, SH) is None
    c = check_quiet_hours("+8613800138000", DEFAULT, now, SH)
    assert (c.outcome, c.reason, c.retry_after) == ("pass", None, None)


def test_fraction_of_a_second_rounds_up() -> None:
    now = datetime(2026, 3, 10, 7, 59, 59, 500_000, tzinfo=ZoneInfo(SH))
    assert quiet_retry_after(DEFAULT, now, SH) == 1
    now = datetime(2026, 3, 10, 7, 59, 58, 1, tzinfo=ZoneInfo(SH))
    assert quiet_retry_after(DEFAULT, now, SH) == 2


def test_callee_in_new_york_uses_new_york_time() -> None:
    # 10:00 in Shanghai is 22:00 the evening before in New York (EDT, UTC-4).
    now = at(2026, 3, 10, 10, 0)
    assert quiet_retry_after(DEFAULT, now, SH) is None
    assert quiet_retry_after(DEFAULT, now, "America/New_York") == 10 * 3600
    # and 22:00 in Shanghai is 10:00 in New York: fine there, quiet here.
    evening = at(2026, 3, 10, 22, 0)
    assert quiet_retry_after(DEFAULT, evening, "America/New_York") is None
    assert quiet_retry_after(DEFAULT, evening, SH) == 10 * 3600


def test_callee_in_london() -> None:
    # 12:00 Shanghai = 04:00 GMT: quiet in London until 08:00.
    assert quiet_retry_after(DEFAULT, at(2026, 3, 10, 12, 0), "Europe/London") == 4 * 3600


def test_dst_night_is_an_hour_shorter() -> None:
    # New York springs forward at 02:00 on 2026-03-08: 22:00 → 08:00 is 9 real hours.
    now = datetime(2026, 3, 7, 22, 0, tzinfo=NY)
    assert quiet_retry_after(DEFAULT, now, "America/New_York") == 9 * 3600
    # and falls back on 2026-11-01: that night is 11 hours.
    now = datetime(2026, 10, 31, 22, 0, tzinfo=NY)
    assert quiet_retry_after(DEFAULT, now, "America/New_York") == 11 * 3600


def test_several_windows() -> None:
    windows = QuietHours.parse("21:00-08:00 12:00-13:30")
    assert quiet_retry_after(windows, at(2026, 3, 10, 12, 30), SH) == 3600
    assert quiet_retry_after(windows, at(2026, 3, 10, 13, 30), SH) is None
    assert quiet_retry_after(windows, at(2026, 3, 10, 11, 59), SH) is None


def test_adjacent_windows_chain() -> None:
    windows = QuietHours.parse("21:00-23:00 23:00-08:00")
    assert quiet_retry_after(windows, at(2026, 3, 10, 22, 0), SH) == 10 * 3600


def test_overlapping_windows_wait_for_the_last_end() -> None:
    windows = QuietHours.parse("20:00-22:00 21:00-08:00")
    assert quiet_retry_after(windows, at(2026, 3, 10, 20, 30), SH) == 11 * 3600 + 30 * 60
    assert quiet_retry_after(windows, at(2026, 3, 10, 21, 30), SH) == 10 * 3600 + 30 * 60


def test_window_ending_at_midnight() -> None:
    windows = QuietHours.parse("22:00-24:00")
    assert quiet_retry_after(windows, at(2026, 3, 10, 23, 0), SH) == 3600
    assert quiet_retry_after(windows, at(2026, 3, 10, 0, 0), SH) is None


def test_no_windows_never_quiet() -> None:
    assert quiet_retry_after(QuietHours.parse("none"), at(2026, 3, 10, 3, 0), SH) is None


def test_windows_covering_the_whole_day_terminate() -> None:
    windows = QuietHours.parse("08:00-21:00 21:00-08:00")
    retry = quiet_retry_after(windows, at(2026, 3, 10, 12, 0), SH)
    assert retry is not None and retry >= 1


def test_utc_and_local_now_agree() -> None:
    local = at(2026, 3, 10, 23, 30)
    assert quiet_retry_after(DEFAULT, local.astimezone(UTC), SH) == quiet_retry_after(
        DEFAULT, local, SH
    )
