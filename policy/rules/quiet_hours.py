"""Quiet hours in the callee's local time (R8: avoid users' rest time; R6: per-enterprise windows).

Windows are wall-clock times in the callee's zone (from the number, see
``policy.numbers.number_timezone``), so a call to New York at 22:00 New
York time is refused whatever the time in Beijing. Arithmetic is done on
UTC instants so DST days are 23 or 25 hours long, as they are.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from policy.decision import Check
from policy.model import QuietHours, TimeWindow
from policy.rules._util import aware, ceil_seconds, failed, passed, zone

NAME = "quiet_hours"


def _inside(w: TimeWindow, t: time) -> bool:
    """Start inclusive, end exclusive; ``start > end`` wraps past midnight (21:00-08:00)."""
    if w.start < w.end:
        return w.start <= t < w.end
    return t >= w.start or t < w.end


def _window_end(w: TimeWindow, local: datetime) -> datetime:
    """The UTC instant at which ``w``, which contains ``local``, next ends."""
    day = local.date()
    if local.time().replace(tzinfo=None) >= w.end:
        day += timedelta(days=1)
    end = datetime.combine(day, w.end, tzinfo=local.tzinfo)
    return end.astimezone(UTC)


def quiet_retry_after(windows: QuietHours, now: datetime, tz: str) -> int | None:
    """Seconds until the quiet period containing ``now`` ends (ceil, ≥ 1), or None outside one.

    Adjacent or overlapping windows chain: "21:00-23:00 23:00-08:00" at 22:00
    waits until 08:00, not 23:00, since calling at 23:00 would be refused too.
    """
    if not windows.windows:
        return None
    zi = zone(tz)
    now_utc = aware(now).astimezone(UTC)
    local = now_utc.astimezone(zi)
    containing = [w for w in windows.windows if _inside(w, local.time())]
    if not containing:
        return None
    end = max(_window_end(w, local) for w in containing)
    # Chain through windows that contain the end instant; bounded so windows
    # covering the whole day cannot loop forever (the wait is then ≥ a day).
    for _ in range(len(windows.windows)):
        local_end = end.astimezone(zi)
        nxt = [w for w in windows.windows if _inside(w, local_end.time())]
        if not nxt:
            break
        end = max(_window_end(w, local_end) for w in nxt)
    return ceil_seconds(end - now_utc)


def check_quiet_hours(callee: str, windows: QuietHours, now: datetime, tz: str) -> Check:
    """Is it the callee's rest time (R8)?

    ``windows`` is the enterprise's own quiet hours when set (they replace the
    default, R6) or the configured default (21:00-08:00).

    Reason code:
      ``quiet_hours``  inside a window; ``retry_after`` = seconds until it ends
    """
    retry = quiet_retry_after(windows, now, tz)
    local = aware(now).astimezone(zone(tz))
    stamp = f"{local:%H:%M} {tz}"
    if retry is None:
        return passed(NAME, f"{stamp} outside quiet hours")
    return failed(
        NAME, "quiet_hours", f"{stamp} for {callee} is inside quiet hours {windows}", retry
    )
