"""policy.loader: files → records, and FILE:LINE errors an operator can act on (SPEC §9)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from policy.demo import DEMO_DIR, DEMO_KINDS
from policy.loader import MAX_ERRORS, LoadError, RowError, load_file, required_columns, validate_row
from policy.model import Consent, DncEntry, Enterprise, NumberFiling, QuietHours, Trunk


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return p


def errors_of(kind: str, path: Path) -> list[str]:
    with pytest.raises(LoadError) as exc:
        load_file(kind, path)
    return exc.value.errors


# ------------------------------------------------------------------ every kind, CSV and JSONL


def test_trunks_csv(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "trunks.csv",
        "trunk_id,enterprise_id,sources,max_cps,status,max_concurrent\n"
        "T1,E1,10.0.0.0/24 10.0.1.5,20,active,100\n"
        "T2,E2,2001:db8::/32,,suspended,\n",
    )
    t1, t2 = load_file("trunks", p)
    assert t1 == Trunk(trunk_id="T1", enterprise_id="E1", sources=("10.0.0.0/24", "10.0.1.5"), max_cps=20, max_concurrent=100)
    assert isinstance(t2, Trunk)
    assert t2.status == "suspended" and t2.max_cps == 0 and t2.max_concurrent == 0


def test_trunks_jsonl_lists_or_strings(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "trunks.jsonl",
        json.dumps({"trunk_id": "T1", "enterprise_id": "E1", "sources": ["10.0.0.1", "10.0.0.2/31"]})
        + "\n\n"
        + json.dumps({"trunk_id": "T2", "enterprise_id": "E1", "sources": "10.0.0.9", "max_cps": 5, "max_concurrent": None})
        + "\n",
    )
    t1, t2 = load_file("trunks", p)
    assert isinstance(t1, Trunk) and isinstance(t2, Trunk)
    assert t1.sources == ("10.0.0.1", "10.0.0.2/31")
    assert t2.sources == ("10.0.0.9",) and t2.max_cps == 5 and t2.max_concurrent == 0


def test_enterprises_csv_defaults_and_quiet_hours(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "ent.csv",
        "enterprise_id,name,licence_no,licence_expires,status,purposes,quiet_hours,callee_daily_cap\n"
        "E1,Acme,B2-1,2030-12-31,active,callback,21:00-08:00 12:00-13:30,5\n"
        "E2,,,,,,,\n"
        "E3,Night desk,,,blacklisted,callback consultation,none,\n",
    )
    e1, e2, e3 = load_file("enterprises", p)
    assert isinstance(e1, Enterprise) and isinstance(e2, Enterprise) and isinstance(e3, Enterprise)
    assert e1.licence_expires == date(2030, 12, 31)
    assert e1.purposes == ("callback",)
    assert e1.quiet_hours == QuietHours.parse("21:00-08:00 12:00-13:30")
    assert e1.callee_daily_cap == 5
    # empty cells mean the defaults
    assert e2.status == "active" and e2.purposes == ("callback", "consultation")
    assert e2.quiet_hours is None and e2.callee_daily_cap is None and e2.licence_expires is None
    assert e3.status == "blacklisted" and e3.quiet_hours == QuietHours(windows=())


def test_enterprises_jsonl(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "ent.ndjson",
        '{"enterprise_id": "E1", "purposes": ["callback"], "quiet_hours": "22:00-07:00", "status": "suspended"}\n',
    )
    (e,) = load_file("enterprises", p)
    assert isinstance(e, Enterprise)
    assert e.status == "suspended" and e.quiet_hours == QuietHours.parse("22:00-07:00")


def test_filings_csv_booleans_and_numbers(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "filings.csv",
        "number,enterprise_id,carrier,usage,inbound,outbound,status\n"
        "95500,E1,CT,callback,true,TRUE,active\n"
        "+86 400-123-4567,E1,,,No,yes,\n"
        "010 8888 9999,E1,,,0,1,suspended\n"
        "95501,E1,,,,,\n",
    )
    f1, f2, f3, f4 = load_file("filings", p)
    assert all(isinstance(f, NumberFiling) for f in (f1, f2, f3, f4))
    assert (f1.number, f1.inbound, f1.outbound) == ("95500", True, True)  # type: ignore[attr-defined]
    assert (f2.number, f2.inbound, f2.outbound) == ("4001234567", False, True)  # type: ignore[attr-defined]
    assert (f3.number, f3.outbound, f3.status) == ("+861088889999", True, "suspended")  # type: ignore[attr-defined]
    assert (f4.inbound, f4.outbound, f4.status) == (True, False, "active")  # type: ignore[attr-defined]


def test_filings_jsonl_numeric_number(tmp_path: Path) -> None:
    p = write(tmp_path, "f.jsonl", '{"number": 95500, "enterprise_id": "E1", "outbound": true}\n')
    (f,) = load_file("filings", p)
    assert isinstance(f, NumberFiling) and f.number == "95500" and f.outbound is True


def test_consents_csv(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "consents.csv",
        "token,callee,enterprise_id,purpose,granted_at,expires_at,max_calls,evidence_ref\n"
        "tok1,13800138000,E1,callback,2026-01-01T09:00:00+08:00,2026-02-01T00:00:00Z,3,rec://1\n"
        "tok2,+86 138 0013 8001,E1,,2026-01-01 09:00,,,\n",
    )
    c1, c2 = load_file("consents", p)
    assert isinstance(c1, Consent) and isinstance(c2, Consent)
    assert c1.callee == "+8613800138000"
    assert c1.granted_at == datetime(2026, 1, 1, 1, 0, tzinfo=UTC)
    assert c1.expires_at == datetime(2026, 2, 1, tzinfo=UTC)
    assert c1.max_calls == 3 and c1.evidence_ref == "rec://1"
    assert c2.callee == "+8613800138001" and c2.purpose == "callback"
    assert c2.granted_at == datetime(2026, 1, 1, 9, 0, tzinfo=UTC)  # naive = UTC
    assert c2.expires_at is None and c2.max_calls is None and c2.evidence_ref == ""


def test_consents_jsonl(tmp_path: Path) -> None:
    rows = [
        {"token": "a", "callee": "+8613800138000", "enterprise_id": "E1", "granted_at": "2026-01-01T00:00:00Z"},
        {"token": "b", "callee": "13800138001", "enterprise_id": "E1", "granted_at": "2026-01-01T00:00:00Z", "max_calls": 2},
    ]
    p = write(tmp_path, "c.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    a, b = load_file("consents", p)
    assert isinstance(a, Consent) and isinstance(b, Consent)
    assert a.token == "a" and b.callee == "+8613800138001" and b.max_calls == 2


def test_dnc_csv_and_jsonl(tmp_path: Path) -> None:
    p = write(tmp_path, "dnc.csv", "number,scope,registered_at\n13900139000,all,2025-03-15T10:00:00+08:00\n+8613900139001,,\n")
    d1, d2 = load_file("dnc", p)
    assert isinstance(d1, DncEntry) and isinstance(d2, DncEntry)
    assert d1.number == "+8613900139000" and d1.registered_at is not None
    assert d2.scope == "all" and d2.registered_at is None
    q = write(tmp_path, "dnc.jsonl", '{"number": "13900139002", "scope": "commercial"}\n')
    (d3,) = load_file("dnc", q)
    assert isinstance(d3, DncEntry) and d3.number == "+8613900139002" and d3.scope == "commercial"


def test_demo_files_load() -> None:
    for kind in DEMO_KINDS:
        assert load_file(kind, DEMO_DIR / f"{kind}.csv"), kind


# ------------------------------------------------------------------ format details


def test_extra_columns_ignored_and_columns_in_any_order(tmp_path: Path) -> None:
    p = write(tmp_path, "t.csv", "Comment,sources, TRUNK_ID ,enterprise_id\nhello,10.0.0.1,T1,E1\n")
    (t,) = load_file("trunks", p)
    assert isinstance(t, Trunk) and t.trunk_id == "T1" and t.sources == ("10.0.0.1",)


def test_utf8_bom_and_quotes(tmp_path: Path) -> None:
    text = (
        "enterprise_id,name,purposes\r\n"
        'E1,"Acme, Inc. ""East""",callback\r\n'
        'E2,"两行\n名称",\r\n'
        "E3,北京客服,callback consultation\r\n"
    )
    p = write(tmp_path, "e.csv", b"\xef\xbb\xbf" + text.encode())
    e1, e2, e3 = load_file("enterprises", p)
    assert isinstance(e1, Enterprise) and isinstance(e2, Enterprise) and isinstance(e3, Enterprise)
    assert e1.name == 'Acme, Inc. "East"'
    assert e2.name == "两行\n名称"
    assert e3.name == "北京客服"


def test_bom_on_jsonl(tmp_path: Path) -> None:
    p = write(tmp_path, "d.jsonl", b'\xef\xbb\xbf{"number": "+8613900139000"}\n')
    (d,) = load_file("dnc", p)
    assert isinstance(d, DncEntry) and d.number == "+8613900139000"


def test_header_only_is_an_empty_load(tmp_path: Path) -> None:
    assert load_file("trunks", write(tmp_path, "t.csv", "trunk_id,enterprise_id,sources\n")) == []
    assert load_file("dnc", write(tmp_path, "d.jsonl", "\n")) == []


# ------------------------------------------------------------------ errors


def test_bad_row_in_the_middle_has_its_physical_line(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "trunks.csv",
        "trunk_id,enterprise_id,sources,max_cps,status\n"  # line 1
        "T1,E1,10.0.0.1,0,active\n"  # 2
        "\n"  # 3 (blank, skipped but counted)
        "T2,E1,10.0.0.2,ten,active\n"  # 4
        "T3,E1,10.0.0.3,0,active\n",  # 5
    )
    assert errors_of("trunks", p) == [
        f"{p}:4: max_cps: Input should be a valid integer, unable to parse string as an integer (got 'ten')"
    ]


def test_line_numbers_count_multiline_quoted_cells(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "e.csv",
        'enterprise_id,name,status\nE1,"two\nlines",active\nE2,x,closed\n',
    )
    (err,) = errors_of("enterprises", p)
    assert err.startswith(f"{p}:4: status: Input should be 'active', 'suspended' or 'blacklisted'")


def test_every_bad_row_is_reported(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "trunks.csv",
        "trunk_id,enterprise_id,sources,max_cps,status\n"
        "T1,E1,10.0.0.300,0,active\n"  # bad CIDR
        "T2,E1,10.0.0.2,0,paused\n"  # bad enum
        "T3,E1,10.0.0.3,0,active\n"
        "T4,,10.0.0.4,-1,active\n",  # missing required + negative
    )
    errs = errors_of("trunks", p)
    assert len(errs) == 3
    assert errs[0] == f"{p}:2: sources: bad source address '10.0.0.300': expected an IP or CIDR"
    assert errs[1] == f"{p}:3: status: Input should be 'active' or 'suspended' (got 'paused')"
    assert errs[2].startswith(f"{p}:5: enterprise_id: Field required; max_cps: Input should be greater than or equal to 0")


def test_bad_cidr_network(tmp_path: Path) -> None:
    p = write(tmp_path, "t.csv", "trunk_id,enterprise_id,sources\nT1,E1,10.0.0.0/33\n")
    assert errors_of("trunks", p) == [f"{p}:2: sources: bad source address '10.0.0.0/33': expected an IP or CIDR"]


def test_bad_enum(tmp_path: Path) -> None:
    p = write(tmp_path, "d.csv", "number,scope\n+8613900139000,marketing\n")
    assert errors_of("dnc", p) == [f"{p}:2: scope: Input should be 'all' or 'commercial' (got 'marketing')"]


def test_bad_iso_time(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "c.csv",
        "token,callee,enterprise_id,granted_at,expires_at\n"
        "t1,+8613800138000,E1,yesterday,\n"
        "t2,+8613800138001,E1,2026-02-01T00:00:00Z,2026-01-01T00:00:00Z\n",
    )
    errs = errors_of("consents", p)
    assert errs[0].startswith(f"{p}:2: granted_at: not a time 'yesterday' (use ISO 8601")
    assert errs[1] == f"{p}:3: expires_at must be after granted_at"


def test_bad_boolean_and_quiet_hours(tmp_path: Path) -> None:
    p = write(tmp_path, "f.csv", "number,enterprise_id,outbound\n95500,E1,maybe\n")
    (err,) = errors_of("filings", p)
    assert err.startswith(f"{p}:2: outbound: Input should be a valid boolean")
    q = write(tmp_path, "e.csv", "enterprise_id,quiet_hours\nE1,21:00-25:00\n")
    (err,) = errors_of("enterprises", q)
    assert err.startswith(f"{q}:2: quiet_hours: bad time window")


def test_unparseable_number(tmp_path: Path) -> None:
    p = write(tmp_path, "d.csv", "number,scope\nnot-a-number,all\n")
    assert errors_of("dnc", p) == [f"{p}:2: number: not a phone number 'not-a-number'"]


def test_missing_required_columns_one_error(tmp_path: Path) -> None:
    p = write(tmp_path, "t.csv", "trunk_id,max_cps\nT1,0\nT2,x\n")
    errs = errors_of("trunks", p)
    assert len(errs) == 1
    assert errs[0].startswith(f"{p}:1: missing required column(s) for trunks: enterprise_id, sources")
    assert required_columns("consents") == ["token", "callee", "enterprise_id", "granted_at"]


def test_jsonl_missing_field_and_bad_json(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "t.jsonl",
        '{"trunk_id": "T1", "enterprise_id": "E1", "sources": "10.0.0.1"}\n'
        '{"trunk_id": "T2", "enterprise_id": "E1"}\n'
        "{not json}\n"
        "[1, 2]\n",
    )
    errs = errors_of("trunks", p)
    assert errs[0] == f"{p}:2: sources: Field required"
    assert errs[1].startswith(f"{p}:3: invalid JSON")
    assert errs[2] == f"{p}:4: expected a JSON object, got list"


def test_duplicate_keys_reported_on_the_later_line(tmp_path: Path) -> None:
    p = write(tmp_path, "t.csv", "trunk_id,enterprise_id,sources\nT1,E1,10.0.0.1\nT2,E1,10.0.0.2\nT1,E1,10.0.0.3\n")
    assert errors_of("trunks", p) == [f"{p}:4: duplicate trunk_id 'T1' (first on line 2)"]


def test_duplicate_numbers_after_normalisation(tmp_path: Path) -> None:
    p = write(tmp_path, "d.csv", "number,scope\n13900139000,all\n+86 139 0013 9000,commercial\n")
    assert errors_of("dnc", p) == [f"{p}:3: duplicate number '+8613900139000' (first on line 2)"]


def test_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    p = write(tmp_path, "t.txt", "trunk_id,enterprise_id,sources\n")
    (err,) = errors_of("trunks", p)
    assert err.startswith(f"{p}:1: unknown file type '.txt'")
    missing = tmp_path / "nope.csv"
    assert errors_of("trunks", missing) == [f"{missing}:1: no such file"]


def test_cell_count_mismatch_and_empty_file(tmp_path: Path) -> None:
    p = write(tmp_path, "t.csv", "trunk_id,enterprise_id,sources\nT1,E1,10.0.0.1,extra\n")
    (err,) = errors_of("trunks", p)
    assert err.startswith(f"{p}:2: 4 cells but the header has 3 columns")
    empty = write(tmp_path, "e.csv", "")
    (err,) = errors_of("trunks", empty)
    assert err.startswith(f"{empty}:1: no header row")


def test_invalid_utf8_is_reported(tmp_path: Path) -> None:
    p = write(tmp_path, "e.csv", b"enterprise_id,name\nE1,ok\nE2,\xff\xfe\n")
    (err,) = errors_of("enterprises", p)
    assert err.startswith(f"{p}:3: not valid UTF-8")


def test_error_list_is_capped_with_a_count(tmp_path: Path) -> None:
    rows = "".join(f"T{i},E1,bad-{i}\n" for i in range(MAX_ERRORS + 25))
    p = write(tmp_path, "t.csv", "trunk_id,enterprise_id,sources\n" + rows)
    errs = errors_of("trunks", p)
    assert len(errs) == MAX_ERRORS + 1
    assert errs[-1] == f"{p}:{MAX_ERRORS + 2}: ... and 25 more errors from this line on"


def test_validate_row_for_cli_values() -> None:
    c = validate_row(
        "consents",
        {"token": "t", "callee": "138 0013 8000", "enterprise_id": "E1", "granted_at": datetime(2026, 1, 1, tzinfo=UTC), "purpose": None},
    )
    assert isinstance(c, Consent) and c.callee == "+8613800138000" and c.purpose == "callback"
    with pytest.raises(RowError) as exc:
        validate_row("consents", {"token": "t", "callee": "x", "enterprise_id": "E1"})
    assert exc.value.reasons == ["callee: not a phone number 'x'"]


def test_large_file_streams(tmp_path: Path) -> None:
    """50,000 consents load in well under the time a quadratic step would take."""
    import time

    n = 50_000
    p = tmp_path / "big.csv"
    with open(p, "w", encoding="utf-8") as f:
        f.write("token,callee,enterprise_id,purpose,granted_at,expires_at,max_calls,evidence_ref\n")
        for i in range(n):
            f.write(f"tok{i},+86138{i:08d},E1,callback,2026-01-01T00:00:00Z,,,rec://{i}\n")
    t0 = time.perf_counter()
    recs = load_file("consents", p)
    assert len(recs) == n
    assert time.perf_counter() - t0 < 30
