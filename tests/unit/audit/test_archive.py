"""The Parquet archive: compaction, clustering and skipping, joins wherever the pieces are, several
roots, damaged files, archives written before Parquet."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gateway.audit import columnar, segments
from gateway.audit.export import Query, export, find
from tests.unit.audit._builders import T0, Errors, H, dec, jsonl, out, reference


def write(root: Path, es: list[dict], name: str = "a") -> None:
    by_hour: dict[int, list[dict]] = {}
    for e in es:
        by_hour.setdefault(segments.hour_of(e.get("dt", e["t"])), []).append(e)
    for h, part in by_hour.items():
        segments.write_segment(root, h, part, name)


def compact_all(root: Path) -> None:
    for _, part in segments.partitions(root):
        assert segments.compact(part, Errors(), min_segments=1) is not None


def test_compaction_joins_in_time_order_indexes_by_callee_and_keeps_orphans(tmp_path: Path) -> None:
    es = []
    for i in range(3000):
        t = T0 + i * 1000
        es.append(dec(f"r{i:05d}", t, callee=f"+86138{(i * 7919) % 10**8:08d}"))
        if i % 2:
            es.append(out(f"r{i:05d}", t, t + 50, final_code=200, answered_at=t + 50))
    orphan = out("gone", T0 + 5, T0 + 99, ended_at=T0 + 99)  # its decision is not in the archive
    write(tmp_path, [*es, orphan, *es[:500]])  # and some written twice
    part = segments.partition_dir(tmp_path, T0)
    errs = Errors()
    new = segments.compact(part, errs, min_segments=1)
    assert new is not None and not errs
    files = segments.Files().add(segments.segments(part))
    assert files.records == [new] and len(files.entries) == 1 and files.entries[0].name.startswith("orphans-")
    assert segments.indexes(part) == [segments.index_of(new)]
    table = columnar.read_records(new)
    assert table.num_rows == 3000
    keys = list(zip(table.column("t").to_pylist(), table.column("rid").to_pylist(), strict=True))
    assert keys == sorted(keys), "records are in export order"
    index = pq.read_table(segments.index_of(new))
    # layout 2 (since 2026-12-07): an E.164 callee is its number (ce_n), any other text ce_x
    assert index.column_names == ["ce_n", "ce_x", "t"] and index.num_rows == 3000
    assert index.column("ce_x").null_count == 3000
    nums = index.column("ce_n").to_pylist()
    assert nums == sorted(int(c[1:]) for c in table.column("callee").to_pylist()), "the index: by callee"
    md = pq.read_metadata(segments.index_of(new))
    assert md.row_group(0).column(0).statistics.has_min_max
    assert pq.read_table(files.entries[0]).column("rid").to_pylist() == ["gone"]
    # the compacted partition exports exactly what its entries did
    assert find([tmp_path], Query()) == reference([*es, orphan])


def _corrupt_other_row_groups(path: Path, keep: int) -> None:
    """Overwrite every column chunk of every row group but ``keep`` (footer, Bloom filters intact):
    a reader that opens one of them fails."""
    md = pq.read_metadata(path)
    data = bytearray(path.read_bytes())
    for g in range(md.num_row_groups):
        if g == keep:
            continue
        rg = md.row_group(g)
        for c in range(rg.num_columns):
            col = rg.column(c)
            start = min(x for x in (col.dictionary_page_offset, col.data_page_offset) if x is not None and x > 0)
            data[start : start + col.total_compressed_size] = b"\xff" * col.total_compressed_size
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("by", ["callee", "caller_callee", "call_id"])
def test_a_lookup_reads_only_the_row_group_that_can_match(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           by: str) -> None:
    monkeypatch.setattr(columnar, "ROW_GROUP", 1000)
    monkeypatch.setitem(columnar._BLOOM, "call_id", {"ndv": 1000, "fpp": 0.01})
    rng = random.Random(7)
    es = [dec(f"r{i:05d}", T0 + i * 100, callee=f"+86138{rng.randrange(10**8):08d}",
              call_id=f"{rng.getrandbits(128):032x}@10.0.0.1") for i in range(20_000)]
    write(tmp_path, es)
    compact_all(tmp_path)
    (path,) = segments.Files().add(segments.segments(segments.partition_dir(tmp_path, T0))).records
    md = pq.read_metadata(path)
    assert md.num_row_groups == 20
    target = es[12_345]
    row = columnar.read_records(path).column("rid").to_pylist().index(target["rid"])
    _corrupt_other_row_groups(path, row // 1000)
    index = segments.index_of(path)
    pos = pq.read_table(index, columns=["t"]).column("t").to_pylist().index(target["t"])
    _corrupt_other_row_groups(index, pos // 1000)
    if by == "call_id":
        if not columnar.HAVE_BLOOM:
            pytest.skip("this pyarrow writes no Bloom filters")
        q = Query(call_id=target["call_id"], since_us=T0, until_us=T0 + H)
    elif by == "callee":
        q = Query(callee=frozenset({target["callee"]}))
    else:
        q = Query(caller=frozenset({target["caller"]}), callee=frozenset({target["callee"]}))
    errs = Errors()
    rows = find([tmp_path], q, on_error=errs)
    assert not errs, "no other row group was read"
    assert [r["record_id"] for r in rows] == [target["rid"]]
    for f in (path, index):  # and the others really are unreadable
        with pytest.raises((OSError, pa.ArrowException)):
            pq.read_table(f)


def test_late_outcomes_join_a_compacted_record(tmp_path: Path) -> None:
    es = [dec(f"r{i}", T0 + i) for i in range(50)]
    es += [out(f"r{i}", T0 + i, T0 + 100, final_code=200, answered_at=T0 + 100) for i in range(0, 50, 2)]
    write(tmp_path, es)
    compact_all(tmp_path)
    late = [out(f"r{i}", T0 + i, T0 + 9 * H, ended_at=T0 + 9 * H) for i in range(50)]  # long calls end
    write(tmp_path, late, "late")
    assert find([tmp_path], Query()) == reference(es + late)
    compact_all(tmp_path)  # the final compaction folds them in
    assert find([tmp_path], Query()) == reference(es + late)


def test_several_roots_one_answer_ordered_and_each_record_once(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    es = [dec(f"r{i:04d}", T0 + (i % 7) * H // 7 + i) for i in range(700)]
    outs = [out(e["rid"], e["t"], e["t"] + 5, final_code=200, ended_at=e["t"] + 9) for e in es[::3]]
    write(a, es[:400] + outs[:100])
    write(b, es[300:] + outs[50:])  # 100 decisions and 50 outcomes in both (a claimed batch)
    compact_all(a)  # one root compacted, the other not
    want = reference(es + outs)
    assert find([a, b], Query()) == want
    buf = io.StringIO()
    assert export([a, b], Query(), buf, on_error=Errors()) == 700
    assert buf.getvalue() == jsonl(want)
    q = Query(callee=frozenset({es[350]["callee"]}))
    assert find([a, b], q) == reference(es + outs, q)


def test_compaction_output_next_to_its_inputs_counts_once(tmp_path: Path) -> None:
    es = [dec(f"r{i}", T0 + i) for i in range(100)] + [out("r5", T0 + 5, T0 + 50, final_code=486)]
    write(tmp_path, es)
    part = segments.partition_dir(tmp_path, T0)
    before = {p: p.read_bytes() for p in segments.segments(part)}
    compact_all(tmp_path)
    for p, data in before.items():  # as if the compactor died before removing its inputs
        p.write_bytes(data)
    assert find([tmp_path], Query()) == reference(es)


def test_randomised_archives_agree_with_the_python_join(tmp_path: Path) -> None:
    for seed in range(6):
        rng = random.Random(seed)
        root = tmp_path / str(seed)
        es: list[dict] = []
        for i in range(300):
            t = T0 + rng.randrange(3 * H)
            es.append(dec(f"s{seed}-{i}", t, callee=f"+8613{rng.randrange(50):09d}"))
            rid, dt = f"s{seed}-{i}", (t if rng.random() < 0.9 else None)  # an orphan: its dt unknown
            a, b = t + rng.randrange(H), t + H + rng.randrange(H)
            fate = rng.randrange(4)  # what a call can do: answered (and hung up), failed, still ringing
            if fate == 0:
                es.append(out(rid, dt, a, final_code=200, answered_at=a))
                es.append(out(rid, dt, b, ended_at=b))
            elif fate == 1:
                es.append(out(rid, dt, a, final_code=200, answered_at=a))
            elif fate == 2:
                es.append(out(rid, dt, a, final_code=487, ended_at=a))
        rng.shuffle(es)
        cut = [0, *sorted(rng.sample(range(1, len(es)), 4)), len(es)]
        for k in range(5):
            part = es[cut[k] : cut[k + 1]] + rng.sample(es, 10)  # and duplicates
            write(root / ("x" if k % 2 else "y"), part, f"p{k}")
            if k == 2:
                compact_all(root / "y")
        roots = [root / "x", root / "y"]
        assert find(roots, Query()) == reference(es), seed
        q = Query(since_us=T0 + H, until_us=T0 + 2 * H, callee=frozenset({"+8613000000007", "+8613000000011"}))
        assert find(roots, q) == reference(es, q), seed


def test_an_outcome_archived_after_compaction_only_fills_empty_fields(tmp_path: Path) -> None:
    """The one place the archive departs from the entry-level join: a records row keeps the outcome
    fields it was compacted with; a later-archived outcome (a spool replayed hours later) fills the
    fields still empty even when its event time is earlier (docs/audit.md)."""
    d = dec("r", T0)
    write(tmp_path, [d, out("r", T0, T0 + 90, ended_at=T0 + 90)])
    compact_all(tmp_path)
    write(tmp_path, [out("r", T0, T0 + 10, final_code=200, answered_at=T0 + 10, ended_at=T0 + 10)], "late")
    (row,) = find([tmp_path], Query())
    assert (row["final_code"], row["answered_at"], row["ended_at"]) == (
        200, "2026-03-10T04:00:00.000010+00:00", "2026-03-10T04:00:00.000090+00:00")


def test_legacy_segments_are_read_and_converted(tmp_path: Path) -> None:
    es = [dec(f"r{i}", T0 + i * 10) for i in range(200)]
    es += [out(f"r{i}", T0 + i * 10, T0 + 5000, final_code=200) for i in range(0, 200, 3)]
    old = segments.write_legacy_segment(tmp_path, T0, es[:150], "old")
    write(tmp_path, es[120:])  # and Parquet beside them, overlapping
    assert old.name.endswith(".jsonl.gz")
    want = reference(es)
    assert find([tmp_path], Query()) == want
    compact_all(tmp_path)  # what `cag audit convert` does
    assert not segments.Files().add(segments.segments(segments.partition_dir(tmp_path, T0))).legacy
    assert find([tmp_path], Query()) == want


def test_a_damaged_parquet_file_is_reported_and_the_rest_exported(tmp_path: Path) -> None:
    good = [dec(f"g{i}", T0 + 2 * i) for i in range(300)]
    bad = [dec(f"b{i}", T0 + 2 * i + 1) for i in range(300)]
    write(tmp_path, good, "good")
    write(tmp_path, bad, "bad")
    (damaged,) = [p for p in segments.segments(segments.partition_dir(tmp_path, T0)) if p.name.startswith("bad")]
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    errs = Errors()
    buf = io.StringIO()
    n = export([tmp_path], Query(), buf, on_error=errs)
    assert [p for p, _ in errs] == [damaged]
    assert n == 300 and buf.getvalue() == jsonl(reference(good))


def test_the_entry_level_api_gives_what_find_gives(tmp_path: Path) -> None:
    """records([archived(roots, q, on_error), read_stream(client)], q): the provisioning API's
    complaint trace before it moves to find()."""
    from gateway.audit.export import archived, records

    es = [dec(f"r{i:03d}", T0 + i * 1000, callee=f"+8613800000{i % 7:03d}") for i in range(400)]
    es += [out(f"r{i:03d}", T0 + i * 1000, T0 + 2 * H, ended_at=T0 + 2 * H) for i in range(0, 400, 3)]
    write(tmp_path, es)
    compact_all(tmp_path)
    late = out("r004", T0 + 4000, T0 + 3 * H, final_code=200)
    write(tmp_path, [late], "late")
    for q in (Query(callee=frozenset({"+8613800000004"})), Query(call_id="c-r005"),
              Query(since_us=T0, until_us=T0 + H)):
        want = reference([*es, late], q)
        assert list(records([archived([tmp_path], q, Errors()), []], q)) == find([tmp_path], q) == want


def test_export_of_compacted_hours_with_orphans_and_late_outcomes(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The paths export takes per hour (as it lies / joined and sorted) give the same bytes."""
    from gateway.audit import export as export_mod

    monkeypatch.setattr(export_mod, "SMALL_BYTES", 0)
    es = [dec(f"r{i:03d}", T0 + k * H + i * 997, callee=f"+86138{i:08d}") for k in range(3) for i in range(300)]
    es += [out("lost", T0 + 5, T0 + 7, ended_at=T0 + 7), out("lost2", None, T0 + H + 9, final_code=480)]
    write(tmp_path, es)
    compact_all(tmp_path)  # hours 0 and 1 get an orphans file
    late = [out(e["rid"], e["t"], T0 + 5 * H, ended_at=T0 + 5 * H) for e in es[600:650]]  # hour 2: late ones
    write(tmp_path, late, "late")
    buf = io.StringIO()
    assert export([tmp_path], Query(), buf, on_error=Errors()) == 900
    assert buf.getvalue() == jsonl(reference(es + late))


def test_api_changes_survive_archiving_and_compaction(tmp_path: Path) -> None:
    """A change made through the provisioning API is a record of the trail (SPEC §10), in the
    Parquet archive as in the stream: archived, compacted, found by callee, exported as before."""
    from gateway.audit.record import change_entry

    callee = "+8613800000042"
    change = change_entry("api-1", T0 + 10, "k1", "consent_revoke", enterprise_id="E1", callee=callee,
                          consent_token="tok-9", evidence_ref="crm://9")
    write(tmp_path, [dec("r1", T0, callee=callee), change])
    before = find([tmp_path], Query(callee=frozenset({callee})))
    compact_all(tmp_path)
    after = find([tmp_path], Query(callee=frozenset({callee})))
    assert after == before
    api = [r for r in after if r["decision"] == "api"]
    assert [(r["record_id"], r["reason"], r["node"], r["consent_token"]) for r in api] == [
        ("api-1", "consent_revoke", "api:k1", "tok-9")]
