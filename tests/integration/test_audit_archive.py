"""The Parquet archive through the commands, on a real redis-server: query, convert, the
archiver's own compaction, stream entries written before chunks."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import time
from pathlib import Path

import pytest
import redis

from gateway.audit import segments
from gateway.audit.archiver import Archiver
from gateway.audit.record import decision_entry, outcome_entry, pack
from gateway.audit.sink import STREAM, AuditSink, count_key
from tests.integration.harness import CAG
from tests.integration.test_audit import call, decision, export, feed

pytestmark = pytest.mark.integration


def cag(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CAG, "audit", *args], capture_output=True, text=True, timeout=60)


def seed(root: Path, n: int = 60) -> int:
    t0 = segments.hour_of(int(time.time() * 1e6)) - 5 * segments.HOUR_US
    es = []
    for i in range(n):
        t = t0 + i * 60_000_000
        d = decision_entry(f"rid-{i:06d}", call(i), decision(i), 0.0003, "gw1", i % 2, t)
        es.append(d)
        if d["decision"] != "reject":
            es.append(outcome_entry(f"rid-{i:06d}", f"call-{i}@test", t, t + 5, 200, (t + 5) / 1e6, None))
    by_hour: dict[int, list] = {}
    for e in es:
        by_hour.setdefault(segments.hour_of(e.get("dt", e["t"])), []).append(e)
    for h, part in by_hour.items():
        segments.write_segment(root, h, part, "seed")
    return t0


def test_query_answers_sql_over_the_audit_view_read_only(redis_url: str, tmp_path: Path) -> None:
    root = tmp_path / "audit"
    seed(root)
    base = ["--redis-url", redis_url, "--archive-dir", str(root)]
    p = cag("query", "SELECT decision, count(*) AS n FROM audit GROUP BY decision ORDER BY decision", *base)
    assert p.returncode == 0, p.stderr
    assert list(csv.reader(io.StringIO(p.stdout))) == [["decision", "n"], ["admit", "20"], ["reject", "20"],
                                                       ["would_reject", "20"]]
    p = cag("query", "SELECT record_id, callee, final_code FROM audit WHERE callee = '+8613800000007'",
            "--format", "jsonl", *base)
    assert p.returncode == 0, p.stderr
    assert [json.loads(x) for x in p.stdout.splitlines()] == [
        {"record_id": "rid-000007", "callee": "+8613800000007", "final_code": 200}]
    since = json.loads(cag("export", "--archive-only", "--archive-dir", str(root)).stdout.splitlines()[30])["time"]
    p = cag("query", "SELECT min(record_id), count(*) FROM audit", "--since", since, *base)
    assert p.returncode == 0 and p.stdout.splitlines()[1] == "rid-000030,30", p.stdout + p.stderr
    p = cag("query", "--columns")
    assert p.returncode == 0 and p.stdout.splitlines()[0].startswith("record_id\t")
    for refused in ("COPY (SELECT 1) TO '/tmp/x.csv'", "CREATE TABLE x AS SELECT 1", "SELECT 1; SELECT 2",
                    "DROP VIEW audit"):
        p = cag("query", refused, *base)
        assert p.returncode == 2, (refused, p.stdout, p.stderr)
    p = cag("query", "SELECT * FROM read_csv('/etc/passwd')", *base)
    assert p.returncode == 1 and "/etc/passwd" in p.stderr  # nothing outside the archive


def test_query_sees_the_live_stream_too(redis_url: str, tmp_path: Path) -> None:
    async def fill() -> None:
        sink = AuditSink(redis_url, tmp_path / "spool")
        await sink.start()
        feed(sink, 0, 30)
        await sink.close()

    asyncio.run(fill())
    p = cag("query", "SELECT count(*), count(ended_at) FROM audit", "--redis-url", redis_url,
            "--archive-dir", str(tmp_path / "audit"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[1] == "30,20"


def test_convert_turns_legacy_partitions_into_parquet(redis_url: str, tmp_path: Path) -> None:
    root = tmp_path / "audit"
    t0 = segments.hour_of(int(time.time() * 1e6)) - 3 * segments.HOUR_US
    es = [decision_entry(f"rid-{i:06d}", call(i), decision(i), 0.0003, "gw1", i % 2, t0 + i) for i in range(500)]
    segments.write_legacy_segment(root, t0, es[:300], "old-a")
    segments.write_legacy_segment(root, t0, es[250:], "old-b")
    rc, before, err = export(redis_url, root, "--archive-only")
    assert rc == 0, err
    p = cag("convert", "--archive-dir", str(root))
    assert p.returncode == 0, p.stderr
    files = segments.Files().add(segments.segments(segments.partition_dir(root, t0)))
    assert not files.legacy and len(files.records) == 1
    rc, after, err = export(redis_url, root, "--archive-only")
    assert rc == 0 and after == before and len(after) == 500


def test_convert_all_packs_records_files_of_the_text_layout(redis_url: str, tmp_path: Path) -> None:
    """An hour compacted before packed files (``compact-*.records.parquet``, identifiers as text)
    is exported as it was, and ``convert --all`` rewrites it packed: the same bytes out."""
    import pyarrow as pa

    from gateway.audit import columnar
    from gateway.audit.engine import Engine, arrow_table

    root = tmp_path / "audit"
    t0 = segments.hour_of(int(time.time() * 1e6)) - 3 * segments.HOUR_US
    es = [decision_entry(f"gw1-{i % 2}-{i + 4096:x}-{i * 2654435761 % 2**32:08x}", call(i), decision(i), 0.0003,
                         "gw1", i % 2, t0 + i) for i in range(300)]
    segments.write_segment(root, t0, es, "a")
    part = segments.partition_dir(root, t0)
    entries = segments.Files().add(segments.segments(part)).entries
    with Engine([], entries) as eng:
        table = arrow_table(eng.con, "SELECT * FROM audit_raw ORDER BY t, rid")
    columnar.write_file(part, segments.file_name("compact", "records"),
                        pa.Table.from_arrays([columnar.conform(table.column(f), columnar.RECORD_SCHEMA.field(f).type)
                                              for f in columnar.RECORD_FIELDS], schema=columnar.RECORD_SCHEMA),
                        "records")
    for e in entries:
        e.unlink()
    rc, before, err = export(redis_url, root, "--archive-only")
    assert rc == 0 and len(before) == 300, err
    p = cag("convert", "--all", "--archive-dir", str(root))
    assert p.returncode == 0, p.stderr
    (new,) = segments.Files().add(segments.segments(part)).records
    assert segments.is_packed(new) and segments.layout(new) == segments.NEWEST_LAYOUT
    rc, after, err = export(redis_url, root, "--archive-only")
    assert rc == 0 and after == before, err


def test_convert_all_rewrites_packed_layout_1_in_the_newest(redis_url: str, tmp_path: Path) -> None:
    """An hour compacted in packed layout 1 (``packed-*``: callee as text, what compaction wrote
    before layout 2) is exported as it is, and ``convert --all`` rewrites it in layout 2: the same
    bytes out, and a look-up by callee through the new index finds the same records."""
    from gateway.audit import columnar
    from tests.unit.audit.test_packed import _write_layout_1

    root = tmp_path / "audit"
    t0 = segments.hour_of(int(time.time() * 1e6)) - 3 * segments.HOUR_US
    es = [decision_entry(f"gw1-{i % 2}-{i + 4096:x}-0badc0de", call(i), decision(i), 0.0003, "gw1", i % 2, t0 + i)
          for i in range(300)]
    segments.write_segment(root, t0, es, "a")
    part = segments.partition_dir(root, t0)
    packed = segments.compact(part, lambda p, m: None, min_segments=1)
    assert packed is not None
    table = columnar.read_records(packed)
    packed.unlink()
    segments.index_of(packed).unlink()
    old = _write_layout_1(part, table)
    rc, before, err = export(redis_url, root, "--archive-only")
    assert rc == 0 and len(before) == 300, err
    callee = before[7]["callee"]
    rc, one_before, err = export(redis_url, root, "--archive-only", "--callee", callee)
    assert rc == 0 and one_before, err
    p = cag("convert", "--all", "--archive-dir", str(root))
    assert p.returncode == 0, p.stderr
    (new,) = segments.Files().add(segments.segments(part)).records
    assert segments.layout(new) == segments.NEWEST_LAYOUT and not old.exists()
    rc, after, err = export(redis_url, root, "--archive-only")
    assert rc == 0 and after == before, err
    rc, one_after, err = export(redis_url, root, "--archive-only", "--callee", callee)
    assert rc == 0 and one_after == one_before, err


def test_archiver_reads_single_entry_stream_entries_and_compacts_closed_hours(redis_url: str, tmp_path: Path) -> None:
    """A stream still holding entries from a gateway before chunks (field "e"), and the maintenance
    that turns a closed hour into one records file."""
    client = redis.Redis.from_url(redis_url)
    t_old = segments.hour_of(int(time.time() * 1e6)) - 3 * segments.HOUR_US
    es = [decision_entry(f"rid-{i:06d}", call(i), decision(i), 0.0003, "gw1", 0, t_old + i) for i in range(40)]
    for e in es:
        client.xadd(STREAM, {"e": pack(e)})
    arch = Archiver(client, tmp_path / "audit", name="t", block_ms=1)
    arch.ensure_group()
    assert arch.drain() == 40 and client.xlen(STREAM) == 0 and int(client.get(count_key(STREAM)) or 0) == 0
    arch.maintain()
    files = segments.Files().add(segments.segments(segments.partition_dir(tmp_path / "audit", t_old)))
    assert len(files.records) == 1 and not files.entries
    rc, rows, err = export(redis_url, tmp_path / "audit", "--archive-only")
    assert rc == 0, err
    assert [r["record_id"] for r in rows] == [e["rid"] for e in es]
    client.close()
