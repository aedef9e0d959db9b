"""Trunk lookup (CIDR, SPEC §3) and check_trunk (R6/R9/R10)."""

from __future__ import annotations

from datetime import date

import pytest

from policy.model import Enterprise, Trunk
from policy.rules import RefData
from policy.rules.trunk import check_trunk
from tests.unit.policy._fixtures import NOON, REF, at


@pytest.mark.parametrize(
    ("ip", "trunk_id"),
    [
        ("192.0.2.77", "t-a-host"),  # /32 beats /24 beats /16
        ("192.0.2.10", "t-a"),  # /24 beats /16
        ("192.0.3.1", "t-wide"),
        ("198.51.100.10", "t-b"),
        ("2001:db8:a::1", "t-a"),  # /48 beats /32
        ("2001:0db8:000a:0000::0001", "t-a"),  # any spelling of the address
        ("[2001:db8:a::1]", "t-a"),
        ("2001:db8:b::1", "t-wide"),
        ("::ffff:192.0.2.10", "t-a"),  # IPv4 peer seen through a dual-stack socket
    ],
)
def test_most_specific_trunk_wins(ip: str, trunk_id: str) -> None:
    trunk = REF.trunk_for(ip)
    assert trunk is not None and trunk.trunk_id == trunk_id
    assert REF.source_known(ip)


@pytest.mark.parametrize("ip", ["10.0.0.1", "198.51.100.11", "2001:db9::1", "not-an-ip", ""])
def test_unknown_sources(ip: str) -> None:
    assert REF.trunk_for(ip) is None
    assert not REF.source_known(ip)


def test_trunk_order_does_not_change_most_specific_match() -> None:
    wide = Trunk(trunk_id="wide", enterprise_id="e", sources=("10.0.0.0/8",))
    narrow = Trunk(trunk_id="narrow", enterprise_id="e", sources=("10.1.0.0/16",))
    for order in ([wide, narrow], [narrow, wide]):
        ref = RefData.build(order, [], [])
        assert ref.trunk_for("10.1.2.3").trunk_id == "narrow"  # type: ignore[union-attr]
        assert ref.trunk_for("10.2.2.3").trunk_id == "wide"  # type: ignore[union-attr]


def test_refdata_holds_records_and_version() -> None:
    assert REF.version == 7
    assert set(REF.trunks) >= {"t-a", "t-b"}
    assert "ent-a" in REF.enterprises
    assert "+861058001234" in REF.filings and "95588" in REF.filings


def _trunk_check(ip: str, now: object = NOON) -> tuple[str, str | None]:
    trunk = REF.trunk_for(ip)
    ent = REF.enterprises.get(trunk.enterprise_id) if trunk else None
    c = check_trunk(trunk, ent, now, "Asia/Shanghai")  # type: ignore[arg-type]
    assert c.name == "trunk"
    return c.outcome, c.reason


@pytest.mark.parametrize(
    ("ip", "reason"),
    [
        ("10.9.9.9", "unknown_source"),
        ("198.51.100.20", "trunk_suspended"),
        ("198.51.100.30", "enterprise_suspended"),
        ("198.51.100.50", "enterprise_suspended"),  # enterprise record missing
        ("198.51.100.40", "enterprise_blacklisted"),
    ],
)
def test_trunk_rejections(ip: str, reason: str) -> None:
    assert _trunk_check(ip) == ("fail", reason)


def test_active_trunk_passes() -> None:
    assert _trunk_check("192.0.2.10") == ("pass", None)


def test_licence_valid_through_its_expiry_day() -> None:
    # ent-old's licence expires 2026-03-10 (Shanghai day).
    assert _trunk_check("198.51.100.60", at(2026, 3, 10, 23, 59, 59)) == ("pass", None)
    assert _trunk_check("198.51.100.60", at(2026, 3, 11, 0, 0, 0)) == ("fail", "licence_expired")


def test_licence_day_is_the_carriers_local_day() -> None:
    # 2026-03-10 17:00 UTC is already 2026-03-11 01:00 in Shanghai: expired yesterday.
    from datetime import UTC, datetime

    assert _trunk_check("198.51.100.60", datetime(2026, 3, 10, 17, 0, tzinfo=UTC)) == (
        "fail",
        "licence_expired",
    )


def test_suspended_trunk_reported_before_enterprise_status() -> None:
    trunk = Trunk(trunk_id="x", enterprise_id="e", sources=("10.0.0.1",), status="suspended")
    ent = Enterprise(enterprise_id="e", status="blacklisted", licence_expires=date(2000, 1, 1))
    assert check_trunk(trunk, ent, NOON).reason == "trunk_suspended"
