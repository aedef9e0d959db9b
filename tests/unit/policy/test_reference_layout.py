"""policy.layout (keys and encodings) and the loader's input handling (issue 14), no Redis."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime
from pathlib import Path

import pytest

from policy import layout
from policy.decode import _fast_consent, _fast_dnc
from policy.loader import (
    FileStream,
    RowError,
    _row_of,
    detect_encoding,
    excel_number,
    parse_time,
    validate_row,
)

SH = zoneinfo.ZoneInfo("Asia/Shanghai")


def test_bucket_and_tags() -> None:
    assert layout.split("+8613800138000") == ("+8613800138", "000")
    assert layout.callee_tag("+8613800138000") == "{c:+8613800138}000"
    assert layout.split("110") == ("110", "")  # short numbers are a bucket of their own
    assert layout.consent_field("+8613800138000", "tok") == "000:tok"
    assert layout.dnc_layer_key("+8613800138", 7) == "{c:+8613800138}:dnc:7"
    assert 0 <= layout.token_shard("tok") < layout.TOKEN_SHARDS


def test_layers_round_trip() -> None:
    assert layout.parse_layers(b"9,7") == (9, 7) and layout.parse_layers(None) == ()
    assert layout.format_layers((9, 7)) == "9,7"


@pytest.mark.parametrize(
    ("scope", "at"),
    [("all", None), ("commercial", None), ("all", datetime(2025, 3, 15, 2, tzinfo=UTC)),
     ("commercial", datetime(2025, 3, 15, 2, tzinfo=UTC))],
)
def test_dnc_value_round_trip(scope: str, at: datetime | None) -> None:
    assert layout.dnc_decode(layout.dnc_value(scope, at)) == (scope, at)


def test_consent_pack_round_trip() -> None:
    gr = datetime(2026, 1, 1, tzinfo=UTC)
    d = layout.unpack_consent(layout.pack_consent("E1", "Callback", gr, None, 3, "ev", None))
    assert d["ent"] == "E1" and d["np"] == "callback" and d["pur"] == "Callback"
    assert layout.from_ms(d["gr"]) == gr and d["ex"] == "" and d["max"] == 3 and d["rv"] == ""


# ------------------------------------------------------------------ the fast path is the model


ROWS_DNC = [
    {"number": "+8613800138000", "scope": "", "registered_at": ""},
    {"number": "+8613800138000", "scope": "commercial", "registered_at": "2025-03-15T10:00:00+08:00"},
    {"number": " +8613800138000 ", "scope": "all", "registered_at": "2025-03-15 10:00:00"},
]
ROWS_CONSENT = [
    {"token": "t", "callee": "+8613800138000", "enterprise_id": "E1", "purpose": "", "granted_at": "2026-01-01T00:00:00Z",
     "expires_at": "", "max_calls": "", "evidence_ref": ""},
    {"token": "t", "callee": "+8613800138000", "enterprise_id": "E1", "purpose": "Consultation",
     "granted_at": "2026-01-01 09:00:00", "expires_at": "2026-02-01T00:00:00+08:00", "max_calls": "4",
     "evidence_ref": "crm:1", "revoked_at": "2026-01-15T00:00:00Z"},
]


@pytest.mark.parametrize("row", ROWS_DNC)
def test_fast_dnc_equals_model(row: dict[str, str]) -> None:
    assert _fast_dnc(row, "CN", SH) == _row_of(validate_row("dnc", row, tz=SH))


@pytest.mark.parametrize("row", ROWS_CONSENT)
def test_fast_consent_equals_model(row: dict[str, str]) -> None:
    assert _fast_consent(row, "CN", SH) == _row_of(validate_row("consents", row, tz=SH))


@pytest.mark.parametrize(
    "row",
    [
        {"number": "13800138000", "scope": "all"},  # not E.164: the model normalises it
        {"number": "+8613800138000", "scope": "ALL"},
        {"number": "+8613800138000", "scope": "all", "registered_at": "20250315"},
    ],
)
def test_unusual_rows_go_to_the_model(row: dict[str, str]) -> None:
    assert _fast_dnc(row, "CN", SH) is None


# ------------------------------------------------------------------ times, numbers, encodings


def test_parse_time_forms() -> None:
    assert parse_time("20261207", "t", SH) == datetime(2026, 12, 7, tzinfo=SH)
    assert parse_time("20261207093000", "t", SH) == datetime(2026, 12, 7, 9, 30, tzinfo=SH)
    assert parse_time("2026/12/07 09:00", "t", SH) == datetime(2026, 12, 7, 9, 0, tzinfo=SH)
    assert parse_time("2026-12-07T09:00:00+00:00", "t", SH) == datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    assert parse_time("1765000000", "t", SH) == datetime.fromtimestamp(1765000000, UTC)
    assert parse_time("", "t", SH) is None
    with pytest.raises(RowError, match="no UTC offset"):
        parse_time("2026-12-07 09:00", "granted_at", None)
    with pytest.raises(RowError, match="digits only"):
        parse_time("2026120", "granted_at", SH)
    with pytest.raises(RowError, match="not a valid date"):
        parse_time("20261341", "granted_at", SH)


def test_excel_numbers() -> None:
    assert excel_number("13800138000.0", "n") == "13800138000"
    assert excel_number("1.3800138000E+10", "n") == "13800138000"
    assert excel_number("+8613800138000", "n") == "+8613800138000"
    with pytest.raises(RowError, match="only 6 of 11 digits"):
        excel_number("1.38001E+10", "number")


def test_detect_encoding(tmp_path: Path) -> None:
    text = "enterprise_id,name\nE1,北京\n"
    cases: dict[str, tuple[str, str | None]] = {
        "u8.csv": ("utf-8", None), "gbk.csv": ("gb18030", "GB18030"), "u16.csv": ("utf-16", "UTF-16")
    }
    (tmp_path / "u8.csv").write_bytes(text.encode())
    (tmp_path / "gbk.csv").write_bytes(text.encode("gbk"))
    (tmp_path / "u16.csv").write_bytes(text.encode("utf-16"))
    (tmp_path / "u16le.csv").write_bytes(text.encode("utf-16-le"))
    for name, (enc, note) in cases.items():
        got_enc, got_note = detect_encoding(tmp_path / name)
        assert got_enc == enc, name
        assert (got_note is None) == (note is None) and (note is None or note in str(got_note)), name
    assert detect_encoding(tmp_path / "u16le.csv")[0] == "utf-16-le"
    assert detect_encoding(tmp_path / "gbk.csv", "GBK") == ("gbk", None)
    for name in ("gbk.csv", "u16.csv", "u16le.csv"):
        recs = list(FileStream("enterprises", tmp_path / name))
        assert [r.name for _, r in recs] == ["北京"], name  # type: ignore[attr-defined]


def test_unknown_encoding_is_a_file_error(tmp_path: Path) -> None:
    p = tmp_path / "e.csv"
    p.write_text("enterprise_id\nE1\n")
    s = FileStream("enterprises", p, encoding="klingon")
    assert list(s) == [] and "unknown encoding" in s.errors.shown[0]
