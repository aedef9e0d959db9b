"""Declared call purpose (R1: no commercial-marketing outbound; R6: per-enterprise purposes)."""

from __future__ import annotations

from policy.decision import Check
from policy.model import Enterprise
from policy.rules._util import failed, passed

NAME = "purpose"


def normalize_purpose(purpose: str | None) -> str | None:
    """Purposes compare case-insensitively; an empty header is the same as none."""
    if purpose is None:
        return None
    p = purpose.strip().lower()
    return p or None


def check_purpose(declared: str | None, enterprise: Enterprise) -> Check:
    """The local half of R1: the declared ``X-Call-Purpose`` against the enterprise's purposes.

    Reason codes:
      ``purpose_marketing``    declared purpose is marketing: never allowed (R1, 81号 一(二))
      ``purpose_not_allowed``  not one of the purposes the carrier granted this enterprise (R6)

    No declared purpose passes here: the consent's purpose is then the call's
    effective purpose, and it is judged by ``check_consent`` (never marketing,
    one of the enterprise's purposes), as is the "declared purpose must match
    the consent's" half. ``finish`` reports such a failure under this check,
    so the SPEC order (purpose before consent) holds either way.
    """
    p = normalize_purpose(declared)
    if p is None:
        return passed(NAME, "no declared purpose; the consent's purpose applies")
    if p == "marketing":
        return failed(NAME, "purpose_marketing", "commercial-marketing outbound is not allowed")
    allowed = {x.strip().lower() for x in enterprise.purposes}
    if p not in allowed:
        return failed(
            NAME,
            "purpose_not_allowed",
            f"purpose {p!r} not among {' '.join(sorted(allowed)) or 'none'}",
        )
    return passed(NAME, f"purpose {p}")
