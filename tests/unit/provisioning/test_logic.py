"""Pure logic of the provisioning API: keys, problems, complaint attribution, change records."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from gateway.audit.export import Query, records
from gateway.audit.record import COLUMNS, change_entry, pack, sort_key, unpack
from gateway.config import load_settings
from provisioning import problems
from provisioning.app import ApiState, Problem, _take
from provisioning.complaints import channel_label, responsible, spellings
from provisioning.service import SETTINGS_ENV, env_of
from provisioning.store import ApiKey, _hash, split_key


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("cag_abc123_s3cr_et-x", ("abc123", "s3cr_et-x")),  # the secret may hold underscores
        ("cag_abc123_", None),
        ("cag__secret", None),
        ("xyz_abc_secret", None),
        ("", None),
        ("cag_" + "a" * 300 + "_s", None),
    ],
)
def test_split_key(text: str, want: tuple[str, str] | None) -> None:
    assert split_key(text) == want


def _key(rate: float = 2.0) -> ApiKey:
    return ApiKey("k1", "E1", False, rate, "", datetime(2026, 1, 1, tzinfo=UTC), None, _hash("secret"))


def test_key_matches_only_its_secret() -> None:
    k = _key()
    assert k.matches("secret") and not k.matches("secreT") and not k.matches("")
    assert "secret" not in json.dumps(k.to_json())


def test_token_bucket_allows_a_second_of_burst_then_429_with_retry_after() -> None:
    st = ApiState(load_settings(None), "unix:///nowhere", [])
    k = _key(rate=2.0)
    _take(st, k, 100.0)
    _take(st, k, 100.0)
    with pytest.raises(Problem) as e:
        _take(st, k, 100.0)
    assert e.value.status == 429 and e.value.headers["Retry-After"] == "1"
    _take(st, k, 100.5)  # half a second refills one request at 2/s


def test_token_bucket_never_runs_time_backwards() -> None:
    """A request that awaited Redis for its key arrives with an older clock reading."""
    st = ApiState(load_settings(None), "unix:///nowhere", [])
    k = _key(rate=1e9)
    _take(st, k, 100.0)
    _take(st, k, 99.0)  # before the fix: tokens fell by 1e9 and this was a 429


def test_problem_fields_name_what_the_client_sent() -> None:
    errs = problems.validation_errors([
        {"loc": ("body", "callee"), "msg": "Field required"},
        {"loc": ("query", "since"), "msg": "Value error, must be between 2000 and 2200"},
        {"loc": (), "msg": "x"},
    ])
    assert errs == [
        {"field": "callee", "message": "Field required"},
        {"field": "query.since", "message": "must be between 2000 and 2200"},
        {"field": "body", "message": "x"},
    ]
    assert problems.row_errors(["callee: not a phone number 'x'", "expires_at must be after granted_at"]) == [
        {"field": "callee", "message": "not a phone number 'x'"},
        {"field": "expires_at", "message": "expires_at must be after granted_at"},
    ]
    body = problems.body(429, "slow down", instance="/v1/consents")
    assert body == {"type": "about:blank", "title": "Too Many Requests", "status": 429,
                    "detail": "slow down", "instance": "/v1/consents"}


def _row(ent: str | None, decision: str) -> dict[str, object]:
    return {"enterprise_id": ent, "decision": decision}


def test_responsible_enterprise_prefers_the_latest_admitted_call() -> None:
    rows = [_row("A", "admit"), _row("B", "reject"), _row("C", "admit"), _row("D", "reject")]
    assert responsible(rows, "Z") == ("C", "admitted_call")
    assert responsible([_row("B", "reject"), _row(None, "reject")], "Z") == ("B", "traced_call")
    assert responsible([], "Z") == ("Z", "number_filing")
    assert responsible([_row(None, "reject")], None) == (None, "not_found")


def test_channel_label_is_bounded_and_spellings_cover_raw_and_normalised() -> None:
    assert [channel_label(c) for c in ("12321", "carrier", "fax", "")] == ["12321", "carrier", "other", "other"]
    assert spellings("13800138000", "CN") == {"13800138000", "+8613800138000"}
    assert spellings("95500", "CN") == {"95500"}


def test_change_entries_travel_and_export_as_rows_of_the_same_columns() -> None:
    t = 1_770_000_000_000_000
    change = change_entry("api-1", t + 5, "k1", "consent_grant", enterprise_id="E1", callee="+8613800138000",
                          consent_token="tok", evidence_ref="crm://1", caller=None)
    assert unpack(pack(change)) == change
    decision = {"k": "d", "rid": "r-1", "t": t, "call_id": "c1", "decision": "admit", "reason": "admitted",
                "sip_code": 200, "callee": "+8613800138000"}
    outcome = {"k": "o", "rid": "r-1", "t": t + 9, "dt": t, "call_id": "c1", "final_code": 200}
    merged = sorted([change, outcome, decision], key=sort_key)
    rows = list(records([merged], Query(callee=frozenset({"+8613800138000"}))))
    assert [r["record_id"] for r in rows] == ["r-1", "api-1"]
    assert rows[0]["final_code"] == 200
    api = rows[1]
    assert list(api) == list(COLUMNS)
    assert (api["decision"], api["reason"], api["node"], api["consent_token"]) == (
        "api", "consent_grant", "api:k1", "tok")
    assert api["call_id"] is None and api["caller"] is None
    assert list(records([merged], Query(call_id="c1"))) == [rows[0]]  # a change has no call


def test_the_api_child_gets_the_parents_settings_with_their_types() -> None:
    parent = load_settings(None, consent_reject_code=603, region="HK", complaint_threshold=4,
                           listen=["udp:127.0.0.1:5999"], api="127.0.0.1:8088")
    env = env_of(parent)
    assert list(env) == [SETTINGS_ENV]
    child = load_settings(None, **json.loads(env[SETTINGS_ENV]))
    assert child == parent
