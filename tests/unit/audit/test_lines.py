"""Export output, byte for byte: DuckDB-built lines (small spans) and Arrow-built lines (large ones)
against Python's json / csv of record.join's rows, on values that need escaping or quoting."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from gateway.audit import export as export_mod
from gateway.audit import segments
from gateway.audit.export import Query, export, find
from tests.unit.audit._builders import T0, Errors, H, csv_text, dec, jsonl, out, reference

TRICKY = [
    "plain", 'quote"d', "back\\slash", "comma,here", "new\nline", "cr\rhere", "tab\there",
    "".join(chr(c) for c in range(0x20)), "ünïcødé 中文 😀", "\u2028\u2029", "\x7f", "", " lead", "'single'",
    ";semi", "\\u000B literal", "\x0b\x1b", "/slash/",
]

TIMES = [0, 951_782_400_000_000, 1_709_164_800_123_456, 4_102_444_800_000_001, T0 + 59 * 60 * 1_000_000 + 999_999]


def entries() -> list[dict]:
    es = []
    for i, v in enumerate(TRICKY):
        t = T0 + i * 1000
        es.append(dec(f"r{i:02d}", t, caller=v, call_id=v, reason=v or None, consent_token=v, evidence_ref=v,
                      trunk_id=v if i % 2 else None, node=v))
        es.append(out(f"r{i:02d}", t, t + 5, final_code=200 + i, answered_at=t + 5))
        es.append(out(f"r{i:02d}", t, t + 9, ended_at=-1 if i == 3 else t + 9))
    for j, t in enumerate(TIMES):  # other days, years, a leap day, the epoch
        es.append(dec(f"y{j}", t, callee="+8613800000000"))
        es.append(out(f"y{j}", t, t + 1, final_code=486, ended_at=t + 86_400_000_000 * 400 + 7))
    return es


def archive(root: Path) -> list[dict]:
    es = entries()
    by_hour: dict[int, list[dict]] = {}
    for e in es:
        by_hour.setdefault(segments.hour_of(e.get("dt", e["t"])), []).append(e)
    for h, part in by_hour.items():
        segments.write_segment(root, h, part, "t")
    return es


@pytest.mark.parametrize("path", ["duckdb", "arrow"])
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_bytes_equal_pythons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str, fmt: str) -> None:
    es = archive(tmp_path)
    monkeypatch.setattr(export_mod, "SMALL_BYTES", 1 << 40 if path == "duckdb" else 0)
    buf = io.StringIO()
    errs = Errors()
    n = export([tmp_path], Query(), buf, fmt, on_error=errs)
    want = reference(es)
    assert not errs and n == len(want) == len(TRICKY) + len(TIMES)
    assert buf.getvalue() == (jsonl(want) if fmt == "jsonl" else csv_text(want))


def test_compacted_archive_exports_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    es = archive(tmp_path)
    for _, part in segments.partitions(tmp_path):
        assert segments.compact(part, Errors(), min_segments=1) is not None
    monkeypatch.setattr(export_mod, "SMALL_BYTES", 0)
    for fmt in ("jsonl", "csv"):
        buf = io.StringIO()
        export([tmp_path], Query(), buf, fmt, on_error=Errors())
        assert buf.getvalue() == (jsonl(reference(es)) if fmt == "jsonl" else csv_text(reference(es)))


def test_find_and_filters_with_awkward_values(tmp_path: Path) -> None:
    es = archive(tmp_path)
    for v in TRICKY:
        q = Query(caller=frozenset({v}))
        assert find([tmp_path], q) == reference(es, q), v
        q = Query(call_id=v, since_us=T0, until_us=T0 + H)
        assert find([tmp_path], q) == reference(es, q), v
