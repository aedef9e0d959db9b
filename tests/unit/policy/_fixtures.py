"""Builders for the pure rule tests: a small reference-data world and call attempts."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from policy.model import CallAttempt, Consent, Enterprise, NumberFiling, Trunk
from policy.rules import RefData

SHANGHAI = ZoneInfo("Asia/Shanghai")

# A caller number filed to ent-a for outbound, and the callee used throughout.
CALLER = "+861058001234"  # Beijing fixed line, filed
CALLEE = "+8613800138000"  # mobile
TOKEN = "tok-1"


def at(
    y: int, mo: int, d: int, h: int = 12, mi: int = 0, s: int = 0, tz: ZoneInfo = SHANGHAI
) -> datetime:
    """A wall-clock instant in ``tz`` (Shanghai by default)."""
    return datetime(y, mo, d, h, mi, s, tzinfo=tz)


NOON = at(2026, 3, 10, 12, 0)


def trunks() -> list[Trunk]:
    return [
        Trunk(
            trunk_id="t-a",
            enterprise_id="ent-a",
            sources=("192.0.2.0/24", "2001:db8:a::/48"),
            max_cps=10,
        ),
        Trunk(trunk_id="t-a-host", enterprise_id="ent-a", sources=("192.0.2.77",)),
        Trunk(trunk_id="t-wide", enterprise_id="ent-b", sources=("192.0.0.0/16", "2001:db8::/32")),
        Trunk(trunk_id="t-b", enterprise_id="ent-b", sources=("198.51.100.10",), max_concurrent=5),
        Trunk(
            trunk_id="t-off", enterprise_id="ent-a", sources=("198.51.100.20",), status="suspended"
        ),
        Trunk(trunk_id="t-susp-ent", enterprise_id="ent-susp", sources=("198.51.100.30",)),
        Trunk(trunk_id="t-black", enterprise_id="ent-black", sources=("198.51.100.40",)),
        Trunk(trunk_id="t-orphan", enterprise_id="ent-missing", sources=("198.51.100.50",)),
        Trunk(trunk_id="t-old", enterprise_id="ent-old", sources=("198.51.100.60",)),
    ]


def enterprises() -> list[Enterprise]:
    return [
        Enterprise(enterprise_id="ent-a", name="A", licence_expires=date(2030, 1, 1)),
        Enterprise(enterprise_id="ent-b", name="B", purposes=("callback",), callee_daily_cap=1),
        Enterprise(
            enterprise_id="ent-susp", status="suspended", suspended_cause="unconsented attempts"
        ),
        Enterprise(enterprise_id="ent-black", status="blacklisted"),
        Enterprise(enterprise_id="ent-old", licence_expires=date(2026, 3, 10)),
    ]


def filings() -> list[NumberFiling]:
    return [
        NumberFiling(number=CALLER, enterprise_id="ent-a", outbound=True),
        NumberFiling(number="95588", enterprise_id="ent-a", outbound=True),
        NumberFiling(number="4001234567", enterprise_id="ent-a", outbound=True),
        NumberFiling(number="+861058009999", enterprise_id="ent-a", outbound=False),
        NumberFiling(
            number="+861058008888", enterprise_id="ent-a", outbound=True, status="suspended"
        ),
        NumberFiling(number="+861058007777", enterprise_id="ent-b", outbound=True),
        NumberFiling(number="96123", enterprise_id="ent-b", outbound=True),
    ]


def ref() -> RefData:
    return RefData.build(trunks(), enterprises(), filings(), version=7)


REF = ref()


def call(**overrides: Any) -> CallAttempt:
    """An INVITE from trunk t-a (192.0.2.10) with a filed caller and a consent token."""
    fields: dict[str, Any] = {
        "call_id": "c1",
        "branch": "z9hG4bK1",
        "source_ip": "192.0.2.10",
        "source_port": 5060,
        "callee": "13800138000",
        "from_user": "01058001234",
        "pai_user": None,
        "consent_token": TOKEN,
    }
    fields.update(overrides)
    return CallAttempt(**fields)


def consent(**overrides: Any) -> Consent:
    fields: dict[str, Any] = {
        "token": TOKEN,
        "callee": CALLEE,
        "enterprise_id": "ent-a",
        "purpose": "callback",
        "granted_at": datetime(2026, 3, 1, tzinfo=UTC),
        "evidence_ref": "ev-1",
    }
    fields.update(overrides)
    return Consent(**fields)
