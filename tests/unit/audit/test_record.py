"""Audit entries: building, sort order, the export join, the msgpack form."""

from __future__ import annotations

import pytest

from gateway.audit.record import (
    COLUMNS,
    decision_entry,
    is_end,
    join,
    outcome_entry,
    pack,
    sort_key,
    unpack,
)
from policy.decision import admitted, reject
from policy.model import CallAttempt

CALL = CallAttempt(
    call_id="c-1", branch="z9hG4bK-1", source_ip="192.0.2.1", source_port=5060,
    callee="13800138000", from_user="01058001234", pai_user=None, consent_token="tok-1",
)
T = 1_773_115_200_000_000  # 2026-03-10T04:00:00Z in µs


def test_admitted_decision_entry_carries_consent_evidence_and_context() -> None:
    d = admitted(trunk_id="t-a", enterprise_id="ent-a", caller="+861058001234", callee="+8613800138000",
                 consent_token="tok-1", evidence_ref="rec://1")
    e = decision_entry("gw-0-1-ab", CALL, d, 0.000412, "gw", 3, T)
    assert e == {
        "k": "d", "rid": "gw-0-1-ab", "t": T, "call_id": "c-1", "decision": "admit", "reason": "admitted",
        "sip_code": 0, "latency_us": 412, "node": "gw", "worker": 3, "trunk_id": "t-a",
        "enterprise_id": "ent-a", "caller": "+861058001234", "callee": "+8613800138000",
        "consent_token": "tok-1", "evidence_ref": "rec://1",
    }


def test_rejection_without_normalised_numbers_falls_back_to_the_invite() -> None:
    e = decision_entry("r", CALL, reject("consent_unknown"), 0.001, "gw", 0, T)
    assert (e["decision"], e["reason"], e["sip_code"]) == ("reject", "consent_unknown", 608)
    assert e["caller"] == "01058001234" and e["callee"] == "13800138000"
    assert "evidence_ref" not in e and "trunk_id" not in e  # None fields are left out


def test_shadow_mode_records_would_reject_with_the_reason() -> None:
    import dataclasses

    d = dataclasses.replace(admitted(), shadow_reject="quiet_hours")
    e = decision_entry("r", CALL, d, 0.0, "gw", 0, T)
    assert (e["decision"], e["reason"]) == ("would_reject", "quiet_hours")


def test_outcome_sorts_right_after_its_decision() -> None:
    d = decision_entry("r1", CALL, admitted(), 0.0, "gw", 0, T)
    answered = outcome_entry("r1", "c-1", T, T + 2_000_000, 200, (T + 2_000_000) / 1e6, None)
    ended = outcome_entry("r1", "c-1", T, T + 60_000_000, None, None, (T + 60_000_000) / 1e6)
    later = decision_entry("r2", CALL, admitted(), 0.0, "gw", 0, T + 1)
    ordered = sorted([later, ended, answered, d], key=sort_key)
    assert ordered == [d, answered, ended, later]
    assert is_end(ended) and not is_end(answered) and not is_end(d)


def test_join_fills_outcome_fields_once_and_ignores_duplicates() -> None:
    d = decision_entry("r1", CALL, admitted(), 0.0, "gw", 0, T)
    answered = outcome_entry("r1", "c-1", T, T + 2_000_000, 200, (T + 2_000_000) / 1e6, None)
    ended = outcome_entry("r1", "c-1", T, T + 60_000_000, None, None, (T + 60_000_000) / 1e6)
    row = join([d, d, ended, answered, answered])
    assert row is not None
    assert list(row) == list(COLUMNS)
    assert row["time"] == "2026-03-10T04:00:00.000000+00:00"
    assert row["final_code"] == 200
    assert row["answered_at"] == "2026-03-10T04:00:02.000000+00:00"
    assert row["ended_at"] == "2026-03-10T04:01:00.000000+00:00"


def test_outcomes_without_their_decision_make_no_row() -> None:
    assert join([outcome_entry("r1", "c-1", T, T, 486, None, T / 1e6)]) is None


def test_pack_round_trip_and_garbage_refused() -> None:
    e = decision_entry("r", CALL, reject("quiet_hours"), 0.0, "gw", 0, T)
    assert unpack(pack(e)) == e
    with pytest.raises(ValueError):
        unpack(pack({"x": 1}))


def test_an_export_row_is_a_valid_audit_record() -> None:
    from policy.model import AuditRecord

    d = decision_entry("r1", CALL, admitted(trunk_id="t-a"), 0.0002, "gw", 1, T)
    row = join([d, outcome_entry("r1", "c-1", T, T + 5, 486, None, (T + 5) / 1e6)])
    rec = AuditRecord.model_validate(row)
    assert rec.decision == "admit" and rec.final_code == 486 and rec.ended_at is not None
    assert rec.latency_us == 200 and rec.worker == 1
