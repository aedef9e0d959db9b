"""Packed records files (identifiers as bytes): every value's text comes back exactly, look-ups
by Call-ID still skip row groups, and files of the layout before sit beside them."""

from __future__ import annotations

import io
import random
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gateway.audit import columnar, engine, segments
from gateway.audit.export import Query, export, find
from tests.unit.audit._builders import T0, Errors, H, csv_text, dec, jsonl, out, reference

ODD_CALL_IDS = [
    "0f8fad5b-d9cb-469f-a165-70867728950e@10.20.1.7",  # the common shape: UUID@host
    "0f8fad5b-d9cb-469f-a165-70867728950e",  # UUID alone
    "0F8FAD5B-D9CB-469F-A165-70867728950E@h",  # uppercase: kept as text
    "0f8fad5b-d9cb-469f-a165-70867728950e\n@x",  # a newline after the UUID
    "0f8fad5b-d9cb-469f-a165-70867728950",  # one digit short
    "0f8fad5bd9cb469fa16570867728950e",  # hex without dashes
    "a84b4c76e66710@pc33.atlanta.example.com",
    "appel-été-☎-" + "x" * 3000,  # unicode, very long
    "",
    " 0f8fad5b-d9cb-469f-a165-70867728950e",  # a leading space
    "'quoted\",comma;",
]
ODD_RIDS = ["gw-node-01-3-1000000-deadbeef", "gw-1-12-ab-00000000", "weird", "n-a-1-0-12345678",
            "gw-node-01-3-01-deadbeef", "x-0-0-ffffffff", "gw-1-2-abc-DEADBEEF", "gw-1-2-1234567890abcdef0-00000001",
            "gw-node-01-3-1000000-deadbeef\n", "gẘ-e\u0301-1-2-abc-deadbeef", "é-1-ab-0000000a",
            "-1-00000001", "1-00000001", "gw--1-00000001"]
ODD_HEX = ["0123456789abcdef", "ABCDEF0123456789", "0123456789abcde", "", "x0123456789abcdef0y",
           "s3://consent-evidence/ent-0007/0123456789abcdef0123456789abcdef.wav", "bench://1", "é" * 5,
           "aa" * 8 + "\n", "0123456789abcdef0", "é-ø/0123456789abcdef0123456789abcdef.wav",
           "e\u0301\u0301/" + "ab" * 20 + "é", "0123456789abcdefg0123456789abcdef0123", None]


def _entries() -> list[dict]:
    rng = random.Random(3)
    es = []
    i = 0
    for cid in ODD_CALL_IDS:
        for rid in ODD_RIDS:
            t = T0 + i * 997
            tok = ODD_HEX[i % len(ODD_HEX)]
            ev = ODD_HEX[(i * 7 + 3) % len(ODD_HEX)]
            node = "gw-node-01" if i % 3 else None
            es.append(dec(f"{rid}" if i < len(ODD_RIDS) else f"{rid}{i}", t, call_id=cid, consent_token=tok,
                          evidence_ref=ev, node=node, worker=3 if i % 4 else None))
            if rng.random() < 0.6:
                es.append(out(es[-1]["rid"], t, t + 50, call_id=cid, final_code=200, answered_at=t + 50))
            i += 1
    return es


def _export(root: Path, fmt: str, q: Query | None = None) -> str:
    buf = io.StringIO()
    errs = Errors()
    export([root], q or Query(), buf, fmt, on_error=errs)
    assert not errs
    return buf.getvalue()


def test_pack_and_unpack_give_every_text_back() -> None:
    es = [e for e in _entries() if e["k"] == "d"]
    rows = {f: [e.get(f) for e in es] for f in columnar.RECORD_FIELDS}
    table = pa.Table.from_pydict(rows, schema=columnar.RECORD_SCHEMA)
    packed = columnar.packed_table(table)
    assert packed.schema == columnar.PACKED_SCHEMA
    assert columnar.unpacked_table(packed).equals(table)
    # the common shapes are really packed
    assert packed.column("cid_u").null_count < len(es)
    assert packed.column("rid_s").null_count < len(es)
    assert packed.column("tok_b").null_count < len(es)


def test_fields_agree_between_engine_and_columnar() -> None:
    assert engine.PACKED_FIELDS == columnar.PACKED_FIELDS


def test_export_of_a_packed_hour_is_byte_identical_to_before(tmp_path: Path) -> None:
    es = _entries()
    segments.write_segment(tmp_path, T0, es, "a")
    before = {fmt: _export(tmp_path, fmt) for fmt in ("jsonl", "csv")}
    ref = reference(es)
    assert before["jsonl"] == jsonl(ref) and before["csv"] == csv_text(ref)
    new = segments.compact(segments.partition_dir(tmp_path, T0), Errors(), min_segments=1)
    assert new is not None and segments.is_packed(new)
    assert not segments.Files().add(segments.segments(new.parent)).entries
    for fmt in ("jsonl", "csv"):
        assert _export(tmp_path, fmt) == before[fmt]
    assert find([tmp_path], Query()) == ref
    # the Python entry-level reader too
    assert [e for e in segments.read_segment(new, Errors())] != []


@pytest.mark.parametrize("cid", ODD_CALL_IDS)
def test_a_lookup_by_any_call_id_finds_it_in_a_packed_file(tmp_path: Path, cid: str) -> None:
    es = _entries()
    segments.write_segment(tmp_path, T0, es, "a")
    assert segments.compact(segments.partition_dir(tmp_path, T0), Errors(), min_segments=1) is not None
    q = Query(call_id=cid, since_us=T0, until_us=T0 + H)
    assert find([tmp_path], q) == reference(es, q)
    assert _export(tmp_path, "jsonl", q) == jsonl(reference(es, q))


def test_uuid_call_id_lookup_reads_one_row_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(columnar, "ROW_GROUP", 1000)
    monkeypatch.setitem(columnar._BLOOM, "call_id", {"ndv": 1000, "fpp": 0.01})
    rng = random.Random(11)
    es = [dec(f"gw-{i % 3}-{i % 8}-{i + 4096:x}-{rng.getrandbits(32):08x}", T0 + i * 100,
              call_id=f"{uuid.UUID(int=rng.getrandbits(128))}@10.0.0.{i % 4}", node=f"gw-{i % 3}", worker=i % 8)
          for i in range(20_000)]
    segments.write_segment(tmp_path, T0, es, "a")
    path = segments.compact(segments.partition_dir(tmp_path, T0), Errors(), min_segments=1)
    assert path is not None and pq.read_metadata(path).num_row_groups == 20
    md = pq.read_metadata(path)
    names = [md.schema.column(i).name for i in range(md.num_columns)]
    assert "cid_u" in names and "rid" not in names and "call_id" not in names
    target = es[7_777]
    if not columnar.HAVE_BLOOM:
        pytest.skip("this pyarrow writes no Bloom filters")
    row = columnar.read_records(path).column("rid").to_pylist().index(target["rid"])
    from tests.unit.audit.test_archive import _corrupt_other_row_groups

    _corrupt_other_row_groups(path, row // 1000)
    errs = Errors()
    rows = find([tmp_path], Query(call_id=target["call_id"], since_us=T0, until_us=T0 + H), on_error=errs)
    assert not errs, "no other row group was read"
    assert [r["record_id"] for r in rows] == [target["rid"]]


def test_files_of_the_layout_before_are_read_beside_packed_ones(tmp_path: Path) -> None:
    """An hour compacted before packing (``compact-*.records.parquet``, text columns) in one root,
    the same records packed in another, late outcomes in a third: one answer, each record once."""
    es = _entries()
    decs = [e for e in es if e["k"] == "d"]
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    segments.write_segment(a, T0, es, "x")
    segments.write_segment(b, T0, es[: len(es) // 2], "y")
    part_a = segments.partition_dir(a, T0)
    # the plain layout, as compaction wrote it before packing
    from gateway.audit.engine import Engine, arrow_table

    with Engine(segments.Files().add(segments.segments(part_a)).records,
                segments.Files().add(segments.segments(part_a)).entries) as eng:
        table = arrow_table(eng.con, "SELECT * FROM audit_raw ORDER BY t, rid")
    old = columnar.write_file(part_a, segments.file_name("compact", "records"),
                              pa.Table.from_arrays([columnar.conform(table.column(f), columnar.RECORD_SCHEMA.field(f).type)
                                                    for f in columnar.RECORD_FIELDS], schema=columnar.RECORD_SCHEMA),
                              "records")
    for p in segments.Files().add(segments.segments(part_a)).entries:
        p.unlink()
    assert not segments.is_packed(old)
    assert segments.compact(segments.partition_dir(b, T0), Errors(), min_segments=1) is not None
    late = [out(d["rid"], d["t"], d["t"] + 9 * H, call_id=d["call_id"], ended_at=d["t"] + 9 * H) for d in decs[::5]]
    segments.write_segment(c, T0, late, "z")
    ref = reference(es + late)
    assert find([a, b, c], Query()) == ref
    buf = io.StringIO()
    export([a, b, c], Query(), buf, "csv", on_error=Errors())
    assert buf.getvalue() == csv_text(ref)
    some = decs[17]
    q = Query(call_id=some["call_id"], since_us=T0, until_us=T0 + H)
    assert find([a, b, c], q) == reference(es + late, q)
    # compacting the old-layout hour with the packed one turns it into one packed file
    for root in (a, b):
        segments.compact(segments.partition_dir(root, T0), Errors(), min_segments=1)
    assert find([a, b, c], Query()) == ref



def _rid_r_encodings(path: Path) -> set[str]:
    md = pq.read_metadata(path)
    col = [md.schema.column(i).name for i in range(md.num_columns)].index("rid_r")
    return {e for g in range(md.num_row_groups) for e in md.row_group(g).column(col).encodings}


def test_record_ids_of_one_run_per_worker_and_of_one_per_record_both_come_back(tmp_path: Path) -> None:
    """Record ids as the proxy makes them since 2026-12-07 (one random part per worker life) are
    kept by dictionary; ids of the shape before (a random part per record: archives written
    before, compacted again or converted) plain. Either way, alone or side by side in two
    roots, the export is the Python join's, byte for byte, and a look-up finds each."""
    rng = random.Random(5)
    runs = {(n, w): rng.getrandbits(32) for n in range(2) for w in range(4)}
    new, old = tmp_path / "new", tmp_path / "old"
    es_new, es_old = [], []
    for i in range(3000):
        n, w = i % 2, (i // 2) % 4
        t = T0 + i * 1000
        es_new.append(dec(f"gw-{n}-{w}-{i // 8 + 1:x}-{runs[n, w]:08x}", t, node=f"gw-{n}", worker=w))
        es_old.append(dec(f"gw-{n}-{w}-{i // 8 + 1:x}-{rng.getrandbits(32):08x}", t + 1, node=f"gw-{n}", worker=w))
    es_new.append(out(es_new[5]["rid"], es_new[5]["t"], es_new[5]["t"] + 9, final_code=200, answered_at=es_new[5]["t"] + 9))
    for root, es in ((new, es_new), (old, es_old)):
        segments.write_segment(root, T0, es, "a")
        path = segments.compact(segments.partition_dir(root, T0), Errors(), min_segments=1)
        assert path is not None and segments.is_packed(path)
        assert _export(root, "jsonl") == jsonl(reference(es))
    enc_new = _rid_r_encodings(next(segments.partition_dir(new, T0).glob(segments.PACKED + "-*.records.parquet")))
    enc_old = _rid_r_encodings(next(segments.partition_dir(old, T0).glob(segments.PACKED + "-*.records.parquet")))
    assert "RLE_DICTIONARY" in enc_new or "PLAIN_DICTIONARY" in enc_new
    assert "RLE_DICTIONARY" not in enc_old and "PLAIN_DICTIONARY" not in enc_old
    both = es_new + es_old
    assert find([new, old], Query()) == reference(both)
    buf = io.StringIO()
    export([old, new], Query(), buf, "csv", on_error=Errors())
    assert buf.getvalue() == csv_text(reference(both))
    for e in (es_new[5], es_old[2999]):
        q = Query(call_id=e["call_id"], since_us=T0, until_us=T0 + H)
        assert [r["record_id"] for r in find([new, old], q)] == [e["rid"]]
    # the bench's generator writes what the compaction writes
    table = pa.Table.from_pydict({f: [e.get(f) for e in es_new[:3000]] for f in columnar.RECORD_FIELDS},
                                 schema=columnar.RECORD_SCHEMA)
    gen = columnar.write_file(tmp_path, segments.file_name(segments.PACKED, "records"),
                              columnar.packed_table(table), "packed")
    assert _rid_r_encodings(gen) & {"RLE_DICTIONARY", "PLAIN_DICTIONARY"}
    assert columnar.read_records(gen).equals(table)


def _write_layout_1(part: Path, records: pa.Table) -> Path:
    """A records file and its index as compaction wrote them in layout 1 (``packed-*``: the
    callee as text, the index (callee, t) sorted by callee)."""
    import duckdb

    con = duckdb.connect(":memory:")
    con.register("r", columnar.packed_table(records))
    v1 = con.sql(f"SELECT * EXCLUDE (ce_n, ce_x), {engine._CALLEE_TEXT} AS callee FROM r").to_arrow_table()
    cols = [f if f not in ("ce_n", "ce_x") else "callee" for f in columnar.PACKED_FIELDS if f != "ce_x"]
    name = segments.file_name("packed", "records")
    path = part / name
    part.mkdir(parents=True, exist_ok=True)
    pq.write_table(v1.select(cols), path, row_group_size=1000)
    index = records.select(["callee", "t"]).sort_by([("callee", "ascending"), ("t", "ascending")])
    pq.write_table(index, segments.index_of(path), row_group_size=1000)
    assert segments.layout(path) == 1 and segments.layout(segments.index_of(path)) == 1
    return path


CALLEES = ["+8613800000001", "+8613800000002", "8613800000002", "+08613800000003", "+1", "+123456789012345678",
           "+1234567890123456789", "13800138000", "+86 138 0000 0004", "+\uff18\uff161380000005", "", None,
           "+8613800000001\n", "tel:+8613800000006"]


def test_callees_as_numbers_round_trip_and_layout_1_files_are_read_beside_and_converted(tmp_path: Path) -> None:
    """Layout 2 keeps a callee of E.164 digits as its number: every callee text comes back exactly
    (E.164 or not: a leading zero, 19 digits, spaces, full-width digits, empty, null). Files of
    layout 1 (``packed-*``, what compaction wrote until this change) in one root and layout 2 in
    another: one answer, each record once — export, find, look-ups by callee (both indexes) and
    Call-ID; a compaction of the layout-1 hour (``cag audit convert --all``) makes it layout 2."""
    es = []
    for i in range(600):
        t = T0 + i * 5000
        es.append(dec(f"gw-1-{i % 4}-{i + 1:x}-0000beef", t, callee=CALLEES[i % len(CALLEES)], worker=i % 4))
        if i % 3 == 0:
            es.append(out(es[-1]["rid"], t, t + 70, final_code=486, ended_at=t + 70))
    one, two = tmp_path / "one", tmp_path / "two"
    segments.write_segment(two, T0, es, "a")
    new = segments.compact(segments.partition_dir(two, T0), Errors(), min_segments=1)
    assert new is not None and segments.layout(new) == 2
    table = columnar.read_records(new)
    assert columnar.packed_table(table).column("ce_n").null_count < len(table)
    assert columnar.unpacked_table(columnar.packed_table(table)).equals(table)
    old = _write_layout_1(segments.partition_dir(one, T0), table.slice(0, 400))
    assert columnar.read_records(old).equals(table.slice(0, 400))
    ref = reference(es)
    assert find([one, two], Query()) == ref
    assert _export(one, "jsonl") == jsonl(reference(es, Query(until_us=table.column("t")[400].as_py())))
    buf = io.StringIO()
    export([two, one], Query(), buf, "csv", on_error=Errors())
    assert buf.getvalue() == csv_text(ref)
    for callee in {c for c in CALLEES if c}:
        for roots in ([one], [two], [one, two]):
            q = Query(callee=frozenset({callee}), since_us=T0, until_us=T0 + H)
            want = [r for r in reference(es, q) if r["callee"] == callee]
            if roots == [one]:
                want = [r for r in want if r["time"] < reference(es)[400]["time"]]
            assert find(roots, q) == want, (callee, roots)
    some = es[10]
    q = Query(call_id=some["call_id"], since_us=T0, until_us=T0 + H)
    assert find([one, two], q) == reference(es, q)
    # convert --all: the layout-1 hour is rewritten in layout 2, the same records
    again = segments.compact(segments.partition_dir(one, T0), Errors(), min_segments=1)
    assert again is not None and segments.layout(again) == 2 and not old.exists()
    assert columnar.read_records(again).equals(table.slice(0, 400))
    assert find([one, two], Query()) == ref
