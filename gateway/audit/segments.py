"""Time-partitioned, compressed segment files: the archive on disk.

Layout under the archive directory::

    2026-03-10/14/<archiver>-<first stream id>-<rand>.jsonl.gz

One directory per UTC hour of *decision* time (outcomes are filed with their
decision, see ``record``); one gzip'd JSON-lines file per archiver batch,
its lines sorted by ``record.sort_key``, so a partition is read as a k-way
merge of sorted files in constant memory. A segment is written to a
``.tmp-`` name, fsync'd, renamed and its directory fsync'd: a file with
the final name is complete and on disk. ``compact`` merges a partition's
segments into one (same merge, duplicates dropped) so the number of open
files per partition stays small.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import heapq
import json
import os
import re
import secrets
import shutil
import zlib
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from gateway.audit.record import Entry, sort_key

SUFFIX = ".jsonl.gz"
HOUR_US = 3_600_000_000
MIN_RETENTION_DAYS = 30
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_HOUR_RE = re.compile(r"^\d{2}$")

ErrorReport = Callable[[Path, str], None]


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
    return sorted(p for p in partition.iterdir() if p.name.endswith(SUFFIX) and not p.name.startswith("."))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(root: Path, target: Path) -> None:
    """mkdir -p, fsync'ing each parent whose entry list changed."""
    missing = []
    p = target
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
        _fsync_dir(d.parent)


def encode_line(e: Entry) -> bytes:
    return json.dumps(e, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def write_segment(root: Path, hour_us: int, entries: Iterable[Entry], name: str) -> Path:
    """Write one sorted segment durably (fsync file, rename, fsync directory); return its path."""
    d = partition_dir(root, hour_us)
    _make_dirs(root, d)
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
    """The entries of one segment; a bad or truncated file is reported once and ends early.

    ``raw``: the file already opened (a reader holds it, so compaction may remove the name).
    """
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


def compact(partition: Path, on_error: ErrorReport, min_segments: int = 2) -> Path | None:
    """Merge a partition's segments into one; returns the new file or None (nothing to do / busy).

    Safe alongside archivers (they only add files; those added after the
    listing stay) and readers (a reader that misses a removed file finds its
    entries in the new one). One compactor per partition: a lock file.
    """
    lock = partition / ".compact.lock"
    with open(lock, "a") as lf:
        try:
            fcntl.flock(lf, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        olds = segments(partition)
        if len(olds) < min_segments:
            return None
        bad: list[Path] = []

        def report(path: Path, msg: str) -> None:
            bad.append(path)
            on_error(path, msg)

        new = _write_stream(partition, merge(read_segment(p, report) for p in olds))
        for p in olds:
            if p in bad:
                # keep the damaged file (renamed) for an operator to look at; its good prefix is merged
                with contextlib.suppress(OSError):
                    p.rename(partition / f".damaged-{p.name}")
                continue
            p.unlink()
        _fsync_dir(partition)
        return new


def _write_stream(partition: Path, entries: Iterator[Entry]) -> Path:
    """Write already-sorted entries as one segment (constant memory), durably."""
    final = partition / f"compact-{secrets.token_hex(6)}{SUFFIX}"
    tmp = partition / f".tmp-{final.name}"
    with open(tmp, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
            for e in entries:
                gz.write(encode_line(e))
        raw.flush()
        os.fsync(raw.fileno())
    os.rename(tmp, final)
    _fsync_dir(partition)
    return final


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
