"""Segment files, partitions, the merge, retention selection, compaction and the spool."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.audit import segments
from gateway.audit.record import Entry, sort_key
from gateway.audit.spool import Spool

H = segments.HOUR_US
T0 = int(datetime(2026, 3, 10, 4, tzinfo=UTC).timestamp()) * 1_000_000


def d(rid: str, t: int) -> Entry:
    return {"k": "d", "rid": rid, "t": t, "call_id": f"c-{rid}", "decision": "admit", "reason": "admitted",
            "sip_code": 0, "latency_us": 1, "node": "gw", "worker": 0}


def o(rid: str, dt: int, t: int, **kw: object) -> Entry:
    return {"k": "o", "rid": rid, "t": t, "dt": dt, "call_id": f"c-{rid}", **kw}


def errors() -> tuple[list[tuple[Path, str]], segments.ErrorReport]:
    seen: list[tuple[Path, str]] = []
    return seen, lambda p, m: seen.append((p, m))


def test_partition_naming_round_trip(tmp_path: Path) -> None:
    p = segments.partition_dir(tmp_path, T0 + 5)
    assert p == tmp_path / "2026-03-10" / "04"
    assert segments.partition_hour(p) == T0
    assert segments.hour_of(T0 + H - 1) == T0 and segments.hour_of(T0 + H) == T0 + H


def test_segment_is_written_sorted_and_read_back(tmp_path: Path) -> None:
    entries = [d("b", T0 + 2), o("a", T0 + 1, T0 + 9, final_code=200), d("a", T0 + 1)]
    path = segments.write_segment(tmp_path, T0, entries, "arch")
    assert path.parent == tmp_path / "2026-03-10" / "04" and path.name.endswith(".entries.parquet")
    assert not list(path.parent.glob(".tmp-*"))
    seen, report = errors()
    got = list(segments.read_segment(path, report))
    assert got == sorted(entries, key=sort_key) and not seen


def test_merge_orders_across_segments_and_drops_duplicates(tmp_path: Path) -> None:
    a = [d(f"r{i}", T0 + i) for i in range(0, 100, 2)]
    b = [d(f"r{i}", T0 + i) for i in range(1, 100, 2)]
    dup = a[10:20]  # an archiver restart wrote these twice
    for name, part in (("x", a), ("y", b), ("z", dup)):
        segments.write_segment(tmp_path, T0, part, name)
    seen, report = errors()
    got = list(segments.read_partition(segments.partition_dir(tmp_path, T0), report))
    assert [e["rid"] for e in got] == [f"r{i}" for i in range(100)]
    assert not seen


def test_truncated_segment_is_reported_and_the_others_kept(tmp_path: Path) -> None:
    good = segments.write_segment(tmp_path, T0, [d(f"g{i}", T0 + 2 * i) for i in range(500)], "good")
    bad = segments.write_segment(tmp_path, T0, [d(f"b{i:04d}", T0 + 2 * i + 1) for i in range(5000)], "bad")
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    seen, report = errors()
    got = list(segments.read_partition(good.parent, report))
    assert [p for p, _ in seen] == [bad]
    assert {e["rid"] for e in got} >= {f"g{i}" for i in range(500)}
    assert got == sorted(got, key=sort_key)


def test_garbage_segment_is_reported(tmp_path: Path) -> None:
    p = segments.partition_dir(tmp_path, T0)
    p.mkdir(parents=True)
    (p / "junk.jsonl.gz").write_bytes(b"not gzip at all")
    (p / "text.jsonl.gz").write_bytes(gzip.compress(b'{"no": "entry"}\n'))
    seen, report = errors()
    assert list(segments.read_partition(p, report)) == []
    assert len(seen) == 2


def test_partitions_in_range(tmp_path: Path) -> None:
    for h in range(5):
        segments.write_segment(tmp_path, T0 + h * H, [d(f"r{h}", T0 + h * H)], "a")
    (tmp_path / "not-a-day").mkdir()
    assert [h for h, _ in segments.partitions(tmp_path)] == [T0 + h * H for h in range(5)]
    got = segments.partitions(tmp_path, T0 + H + 5, T0 + 3 * H)
    assert [h for h, _ in got] == [T0 + H, T0 + 2 * H]


def test_retention_selects_only_partitions_older_than_the_limit(tmp_path: Path) -> None:
    now = T0 / 1e6
    day = 24 * H
    keep_edge = T0 - 30 * day  # this hour ends after the cut-off: kept
    old = [T0 - 30 * day - H, T0 - 45 * day]
    for h in [*old, keep_edge, T0 - day, T0]:
        segments.write_segment(tmp_path, h, [d("x", h)], "a")
    gone = segments.expired(tmp_path, now, 30)
    assert sorted(segments.partition_hour(p) for p in gone) == sorted(old)
    segments.remove_partitions(gone)
    assert [h for h, _ in segments.partitions(tmp_path)] == [keep_edge, T0 - day, T0]


def test_retention_under_thirty_days_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 30"):
        segments.expired(tmp_path, 0.0, 29)


def test_compaction_merges_segments_into_one_without_duplicates(tmp_path: Path) -> None:
    for i in range(5):
        segments.write_segment(tmp_path, T0, [d(f"r{j}", T0 + j) for j in range(i * 10, i * 10 + 20)], f"s{i}")
    part = segments.partition_dir(tmp_path, T0)
    seen, report = errors()
    new = segments.compact(part, report)
    assert new is not None and segments.segments(part) == [new]
    assert [e["rid"] for e in segments.read_segment(new, report)] == [f"r{j}" for j in range(60)]
    assert not seen


def test_spool_round_trip_bound_and_torn_tail(tmp_path: Path) -> None:
    s = Spool(tmp_path, max_bytes=1000)
    assert s.append([b"a" * 100, b"b" * 100]) == 0
    assert s.append([b"c" * 500, b"d" * 500]) == 1 and s.full and s.dropped == 1
    s.close_current()
    (f,) = s.files()
    with open(f, "ab") as fh:
        fh.write(b"\x00\x00\x01\x00abc")  # a frame cut short by a kill
    assert list(s.read(f)) == [b"a" * 100, b"b" * 100, b"c" * 500]
    s.remove(f)
    assert not s and not s.full
