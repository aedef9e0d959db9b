"""Trunk and enterprise standing (R9 seat-rental suspension, R10 bad-actor lists, R6 licence)."""

from __future__ import annotations

from datetime import datetime

from policy.decision import Check
from policy.model import Enterprise, Trunk
from policy.rules._util import aware, failed, passed, zone

NAME = "trunk"


def check_trunk(
    trunk: Trunk | None, enterprise: Enterprise | None, now: datetime, tz: str = "Asia/Shanghai"
) -> Check:
    """May this trunk place calls at all right now?

    Reason codes:
      ``unknown_source``          the source address is in no trunk's sources (SPEC §3)
      ``trunk_suspended``         the trunk is suspended, manually or automatically (R9)
      ``enterprise_suspended``    the trunk's enterprise is suspended or unknown (R6/R9):
                                  a trunk without a known owner cannot be held to account
      ``enterprise_blacklisted``  the enterprise is on a bad-actor / dishonest list (R10)
      ``licence_expired``         the call-centre licence expired before today's date in
                                  ``tz`` (the carrier's local day); valid through its expiry day
    """
    if trunk is None:
        return failed(NAME, "unknown_source", "source address matches no trunk")
    if trunk.status == "suspended":
        return failed(NAME, "trunk_suspended", f"trunk {trunk.trunk_id} is suspended")
    if enterprise is None:
        return failed(
            NAME,
            "enterprise_suspended",
            f"enterprise {trunk.enterprise_id} of trunk {trunk.trunk_id} is unknown",
        )
    if enterprise.status == "suspended":
        cause = f" ({enterprise.suspended_cause})" if enterprise.suspended_cause else ""
        return failed(
            NAME,
            "enterprise_suspended",
            f"enterprise {enterprise.enterprise_id} is suspended{cause}",
        )
    if enterprise.status == "blacklisted":
        return failed(
            NAME, "enterprise_blacklisted", f"enterprise {enterprise.enterprise_id} is blacklisted"
        )
    if enterprise.licence_expires is not None:
        today = aware(now).astimezone(zone(tz)).date()
        if enterprise.licence_expires < today:
            return failed(
                NAME,
                "licence_expired",
                f"licence {enterprise.licence_no or '?'} expired {enterprise.licence_expires.isoformat()}",
            )
    return passed(NAME, f"trunk {trunk.trunk_id}, enterprise {enterprise.enterprise_id}")
