"""Time-partitioned Parquet files: the archive on disk.

Layout under the archive directory::

    2026-03-10/14/<archiver>-<first stream id>-<rand>.entries.parquet   (archiver batches)
    2026-03-10/14/packed-<rand>.records.parquet                         (the hour, compacted;
                                                                        compact-*: before 2026-12-07)
    2026-03-10/14/<name>.jsonl.gz                                       (archives before Parquet)

One directory per UTC hour of *decision* time (outcomes are filed with their
decision, see ``record``). The archiver writes an *entries* file per batch
and partition (``columnar``); the compaction of an hour joins its decisions
and outcomes into one *records* file sorted for look-ups, keeping outcomes
whose decision it has not seen in an entries file. Files are written to a
``.tmp-`` name, fsync'd, renamed and their directory fsync'd: a file with
its final name is complete and on disk. A reader takes a partition as the
union of its files; a record found twice is one record (``engine``).

Gzip'd JSON-lines segments of the archives written before (sorted lines,
``.jsonl.gz``) are still read, and a compaction (``cag audit convert``)
turns them into a records file.

One module on purpose: a partition's on-disk layout (file names, entries and
records files, the callee index, compaction, legacy segments) is one contract
between the archiver and every reader.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import heapq
import json
import logging
import os
import re
import secrets
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from gateway.audit.record import Entry, sort_key

if TYPE_CHECKING:
    import pyarrow as pa

# pyarrow (``columnar``) is imported where it is used: export and query start without it.

log = logging.getLogger("cag.audit")

SUFFIX = ".jsonl.gz"  # the archives written before Parquet
ENTRIES_SUFFIX = ".entries.parquet"
RECORDS_SUFFIX = ".records.parquet"
INDEX_SUFFIX = ".index.parquet"  # beside a records file: its (callee, caller, time), by callee
SUFFIXES = (ENTRIES_SUFFIX, RECORDS_SUFFIX, SUFFIX)
HOUR_US = 3_600_000_000
MIN_RETENTION_DAYS = 30
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_HOUR_RE = re.compile(r"^\d{2}$")

ErrorReport = Callable[[Path, str], None]
ORPHANS = "orphans-"  # the entries file a compaction leaves: outcomes whose decision it did not find


def hour_of(t_us: int) -> int:
    """The partition (its start, µs) holding an entry sorted at ``t_us``."""
    return t_us - t_us % HOUR_US


def partition_dir(root: Path, hour_us: int) -> Path:
    t = datetime.fromtimestamp(hour_us / 1_000_000, UTC)
    return root / f"{t:%Y-%m-%d}" / f"{t:%H}"


def partition_hour(path: Path) -> int | None:
    """The start (µs) of the partition at ``path`` (``…/YYYY-MM-DD/HH``), or None."""
    day, hour = path.parent.name, path.name
    if not (_DAY_RE.match(day) and _HOUR_RE.match(hour)):
        return None
    try:
        t = datetime.strptime(f"{day} {hour}", "%Y-%m-%d %H").replace(tzinfo=UTC)
    except ValueError:
        return None
    return int(t.timestamp()) * 1_000_000


def partitions(root: Path, since_us: int | None = None, until_us: int | None = None) -> list[tuple[int, Path]]:
    """Partitions that may hold entries in ``[since, until)``, oldest first."""
    out: list[tuple[int, Path]] = []
    if not root.is_dir():
        return out
    for day in root.iterdir():
        if not (day.is_dir() and _DAY_RE.match(day.name)):
            continue
        for hour in day.iterdir():
            h = partition_hour(hour) if hour.is_dir() else None
            if h is None:
                continue
            if since_us is not None and h + HOUR_US <= since_us:
                continue
            if until_us is not None and h >= until_us:
                continue
            out.append((h, hour))
    out.sort()
    return out


def segments(partition: Path) -> list[Path]:
    """Every data file of a partition (records, entries, legacy segments), by name."""
    try:
        names = list(partition.iterdir())
    except FileNotFoundError:
        return []
    return sorted(p for p in names if p.name.endswith(SUFFIXES) and not p.name.startswith("."))


def indexes(partition: Path) -> list[Path]:
    """The index files of a partition's records files."""
    try:
        return sorted(p for p in partition.iterdir() if p.name.endswith(INDEX_SUFFIX) and not p.name.startswith("."))
    except FileNotFoundError:
        return []


def index_of(records: Path) -> Path:
    return records.with_name(records.name[: -len(RECORDS_SUFFIX)] + INDEX_SUFFIX)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_fsync_dir = fsync_dir


def make_dirs(target: Path) -> None:
    """mkdir -p, fsync'ing each parent whose entry list changed."""
    missing = []
    p = target
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
        fsync_dir(d.parent)


# Records files whose identifiers are stored as bytes (``engine.pack_sql``), by layout: 1
# ``packed-*`` (callee as text), 2 ``packed2-*`` (an E.164 callee as an integer, here and in the
# index). Compaction writes the newest; ``cag audit convert --all`` rewrites older ones.
PACKED = "packed2"
NEWEST_LAYOUT = 2
_LAYOUTS = (("packed2-", 2), ("packed-", 1))


def layout(path: Path) -> int:
    """A records or index file's layout, by its name (readers need no footer to know): 0 text
    columns (``compact-*``, before 2026-12-07), 1 or 2 packed."""
    for prefix, v in _LAYOUTS:
        if path.name.startswith(prefix):
            return v
    return 0


def is_packed(path: Path) -> bool:
    """A records file in a packed layout."""
    return layout(path) > 0 and path.name.endswith(RECORDS_SUFFIX)


def kind_of(path: Path) -> str | None:
    """``entries``, ``records`` (Parquet), or None (a legacy segment)."""
    if path.name.endswith(ENTRIES_SUFFIX):
        return "entries"
    if path.name.endswith(RECORDS_SUFFIX):
        return "records"
    return None


def file_name(prefix: str, kind: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}{ENTRIES_SUFFIX if kind == 'entries' else RECORDS_SUFFIX}"


@dataclass
class Files:
    """The files of some partitions, by kind."""

    records: list[Path] = field(default_factory=list)
    entries: list[Path] = field(default_factory=list)
    legacy: list[Path] = field(default_factory=list)
    index: list[Path] = field(default_factory=list)

    def add(self, paths: Iterable[Path]) -> Files:
        for p in paths:
            kind = kind_of(p)
            (self.records if kind == "records" else self.entries if kind == "entries" else self.legacy).append(p)
        return self

    def parquet(self) -> list[Path]:
        return self.records + self.entries

    def __len__(self) -> int:
        return len(self.records) + len(self.entries) + len(self.legacy)


def files_in(roots: Path | list[Path], since_us: int | None = None, until_us: int | None = None) -> Files:
    """The files of every partition of every root that may hold entries in ``[since, until)``."""
    out = Files()
    for root in [roots] if isinstance(roots, Path) else roots:
        for _, part in partitions(root, since_us, until_us):
            out.add(segments(part))
            out.index += indexes(part)
    return out


def encode_line(e: Entry) -> bytes:
    return json.dumps(e, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def write_segment(root: Path, hour_us: int, entries: Iterable[Entry] | pa.Table, name: str) -> Path:
    """Write entries (dicts or an entries table) as one entries file of the partition, durably."""
    import pyarrow as pa

    from gateway.audit import columnar

    table = entries if isinstance(entries, pa.Table) else columnar.table_of_entries(
        sorted(entries, key=sort_key))
    return columnar.write_file(partition_dir(root, hour_us), file_name(name, "entries"), table, "entries")


def write_legacy_segment(root: Path, hour_us: int, entries: Iterable[Entry], name: str) -> Path:
    """A gzip'd JSON-lines segment as archives before Parquet had them (tests, conversion checks)."""
    d = partition_dir(root, hour_us)
    make_dirs(d)
    final = d / f"{name}-{secrets.token_hex(4)}{SUFFIX}"
    tmp = d / f".tmp-{final.name}"
    with open(tmp, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
            for e in sorted(entries, key=sort_key):
                gz.write(encode_line(e))
        raw.flush()
        os.fsync(raw.fileno())
    os.rename(tmp, final)
    _fsync_dir(d)
    return final


def read_segment(path: Path, on_error: ErrorReport, raw: BinaryIO | None = None) -> Iterator[Entry]:
    """The entries of one file, in sort order; a bad or truncated file is reported once and ends
    early (a legacy segment after its readable prefix; a Parquet file yields nothing).

    A records file yields each record as its decision entry and, when it has
    outcome fields, one outcome entry carrying them. ``raw``: the file already
    opened (a reader holds it, so compaction may remove the name).
    """
    if kind_of(path) is not None:
        import pyarrow.parquet as pq

        from gateway.audit import columnar

        try:
            table = pq.read_table(raw if raw is not None else path)
            if "cid_u" in table.column_names:  # a packed records file
                table = columnar.unpacked_table(table)
            entries = columnar.entries_of(table)
        except FileNotFoundError:
            return
        except Exception as exc:
            on_error(path, f"{type(exc).__name__}: {exc}")
            return
        finally:
            if raw is not None:
                raw.close()
        entries.sort(key=sort_key)
        yield from entries
        return
    yield from _read_legacy(path, on_error, raw)


def write_ndjson(path: Path, entries: Iterable[Entry]) -> int:
    """Entries as JSON lines for DuckDB's ``read_json`` (``engine``: the live stream, legacy
    segments); returns how many."""
    n = 0
    with open(path, "wb") as f:
        for e in entries:
            f.write(encode_line(e))
            n += 1
    return n


def _read_legacy(path: Path, on_error: ErrorReport, raw: BinaryIO | None) -> Iterator[Entry]:
    line_no = 0
    try:
        if raw is None:
            raw = open(path, "rb")
        with raw, gzip.GzipFile(fileobj=raw, mode="rb") as f:
            for line in f:
                line_no += 1
                e = json.loads(line)
                if not isinstance(e, dict) or "rid" not in e or "t" not in e or "k" not in e:
                    raise ValueError("not an audit entry")
                yield e
    except FileNotFoundError:
        return  # compacted away between listing and opening: its entries are in the compacted file
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        on_error(path, f"entry {line_no + 1}: {type(exc).__name__}: {exc}")


def open_partition(partition: Path, on_error: ErrorReport, attempts: int = 5) -> list[Iterator[Entry]]:
    """Open every segment of a partition now (a compaction between listing and opening re-lists)."""
    for _ in range(attempts):
        opened: list[tuple[Path, BinaryIO]] = []
        try:
            for p in segments(partition):
                opened.append((p, open(p, "rb")))
        except FileNotFoundError:
            for _, f in opened:
                f.close()
            continue
        return [read_segment(p, on_error, f) for p, f in opened]
    raise RuntimeError(f"{partition}: segments kept changing while opening them")


def dedup(entries: Iterable[Entry]) -> Iterator[Entry]:
    """Drop an entry equal in sort key to the one before it (redelivery, stream + archive)."""
    last: object = None
    for e in entries:
        k = sort_key(e)
        if k != last:
            yield e
            last = k


def merge(sources: Iterable[Iterable[Entry]]) -> Iterator[Entry]:
    return dedup(heapq.merge(*sources, key=sort_key))


def read_partition(partition: Path, on_error: ErrorReport) -> Iterator[Entry]:
    """A partition's entries in sort order, duplicates dropped (constant memory)."""
    if not partition.is_dir():
        return iter(())
    return merge(open_partition(partition, on_error))


@contextlib.contextmanager
def _locked(partition: Path) -> Iterator[bool]:
    """One compactor per partition (several archivers may share a root): True when we hold it."""
    with open(partition / ".compact.lock", "a") as lf:
        try:
            fcntl.flock(lf, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def check_files(paths: list[Path], on_error: ErrorReport, *, deep: bool = False) -> list[Path]:
    """The Parquet files among ``paths`` that can be read (footer; ``deep``: every page too);
    the others are reported. A file gone since it was listed is left out silently."""
    import pyarrow.parquet as pq

    good = []
    for p in paths:
        try:
            if deep:
                pq.read_table(p)
            else:
                pq.read_metadata(p)
        except FileNotFoundError:
            continue
        except Exception as exc:
            on_error(p, f"{type(exc).__name__}: {exc}")
            continue
        good.append(p)
    return good


def compact(partition: Path, on_error: ErrorReport, min_segments: int = 2, *, threads: int | None = None,
            memory_limit: str | None = None) -> Path | None:
    """Join a partition's files into one records file (and one entries file for outcomes whose
    decision is not there); returns the records file, or None (nothing to do, busy, failed).

    Safe alongside archivers (they only add files; those added after the
    listing stay) and readers (a reader that misses a removed file finds its
    records in the new one; one that sees both counts each record once). A
    damaged input is reported and kept as ``.damaged-NAME``; what it held is
    not in the output.
    """
    from gateway.audit import columnar
    from gateway.audit.engine import (
        Engine,
        arrow_reader,
        arrow_table,
        call_id_counts_sql,
        index_sql,
        pack_sql,
    )

    with _locked(partition) as mine:
        if not mine:
            return None
        olds = segments(partition)
        if len(olds) < min_segments:
            return None
        bad: list[Path] = []

        def report(path: Path, msg: str) -> None:
            bad.append(path)
            on_error(path, msg)

        files = Files().add(olds)
        records = check_files(files.records, report)
        entries = check_files(files.entries, report)
        new: Path | None = None
        tmp = tempfile.TemporaryDirectory(prefix="cag-audit-compact-")
        ndjson = []
        for i, p in enumerate(files.legacy):
            if write_ndjson(Path(tmp.name) / f"legacy-{i}.jsonl", read_segment(p, report)):
                ndjson.append(Path(tmp.name) / f"legacy-{i}.jsonl")
        name = file_name(PACKED, "records")
        try:
            with Engine(records, entries, ndjson=ndjson, threads=threads, memory_limit=memory_limit,
                        temp_directory=Path(tmp.name)) as eng:
                eng.con.execute("CREATE TEMP TABLE joined_hour AS SELECT * FROM audit_raw")
                # the index first: a records file is never without its index
                idx = arrow_reader(eng.con, index_sql("joined_hour"), columnar.ROW_GROUP)
                columnar.write_batches(partition, name[: -len(RECORDS_SUFFIX)] + INDEX_SUFFIX, idx,
                                       columnar.INDEX_SCHEMA, "index")
                uuids, others, runs, rows = eng.con.execute(call_id_counts_sql("joined_hour")).fetchall()[0]
                reader = arrow_reader(eng.con, pack_sql("joined_hour") + " ORDER BY t, rid", columnar.ROW_GROUP)
                new = columnar.write_batches(partition, name, reader, columnar.PACKED_SCHEMA, "packed",
                                             columnar.packed_bloom(uuids, others),
                                             columnar.runs_by_dictionary(runs, rows))
                orphans = arrow_table(eng.con, "SELECT * FROM orphans")
                if orphans.num_rows:
                    columnar.write_file(partition, file_name(ORPHANS.rstrip("-"), "entries"),
                                        orphans.cast(columnar.ENTRY_SCHEMA), "entries")
        except Exception as exc:
            if new is not None:
                with contextlib.suppress(OSError):
                    new.unlink()
            with contextlib.suppress(OSError):
                index_of(partition / name).unlink()
            # a page damaged behind a good footer: find the file, set it aside, next run goes on
            check_files(records + entries, report, deep=True)
            for p in bad:
                with contextlib.suppress(OSError):
                    p.rename(partition / f".damaged-{p.name}")
            log.error("compaction of %s failed: %s", partition, exc)
            return None
        finally:
            tmp.cleanup()
        for p in olds:
            if p in bad:
                # keep the damaged file (renamed) for an operator to look at
                with contextlib.suppress(OSError):
                    p.rename(partition / f".damaged-{p.name}")
                continue
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
            if kind_of(p) == "records":
                with contextlib.suppress(FileNotFoundError):
                    index_of(p).unlink()
        _fsync_dir(partition)
        return new


def merge_entries(partition: Path, on_error: ErrorReport, *, min_files: int = 32,
                  max_rows: int = 2_000_000) -> Path | None:
    """Concatenate a partition's small entries files into one (an hour still being written).

    Cheap (no join, no sort): it only bounds the number of files a reader opens.
    Files of ``max_rows`` or more (earlier merges) are left as they are.
    """
    import pyarrow.parquet as pq

    from gateway.audit import columnar

    with _locked(partition) as mine:
        if not mine:
            return None
        small: list[tuple[Path, pa.Table]] = []
        for p in Files().add(segments(partition)).entries:
            try:
                if pq.read_metadata(p).num_rows >= max_rows:
                    continue
                small.append((p, pq.read_table(p)))
            except FileNotFoundError:
                continue
            except Exception as exc:
                on_error(p, f"{type(exc).__name__}: {exc}")
        if len(small) < min_files:
            return None
        table = columnar.concat((t.cast(columnar.ENTRY_SCHEMA) for _, t in small), columnar.ENTRY_SCHEMA)
        new = columnar.write_file(partition, file_name("merged", "entries"), table, "entries")
        for p, _ in small:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        _fsync_dir(partition)
        return new


def check_retention(days: int) -> int:
    if days < MIN_RETENTION_DAYS:
        raise ValueError(f"retention of {days} days refused: R8 requires at least {MIN_RETENTION_DAYS}")
    return days


def expired(root: Path, now: float, days: int) -> list[Path]:
    """Partitions whose whole hour is older than ``days`` before ``now`` (refuses < 30 days)."""
    check_retention(days)
    cutoff = datetime.fromtimestamp(now, UTC) - timedelta(days=days)
    cutoff_us = int(cutoff.timestamp() * 1_000_000)
    return [p for h, p in partitions(root) if h + HOUR_US <= cutoff_us]


def remove_partitions(paths: Iterable[Path]) -> int:
    n = 0
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)
        n += 1
        day = p.parent
        with contextlib.suppress(OSError):
            day.rmdir()  # only when empty
    return n
