"""``cag audit export``: archived partitions and the live stream, joined, in time order.

Constant memory in the range: partitions are read one hour after another,
each as a k-way merge of its sorted segments; the not-yet-archived stream
(bounded by the sink's ``max_stream``) is read, sorted and merged in. The
merged sequence is ordered by (decision time, record id, kind), so a
decision and its outcomes are adjacent and are joined on the fly; entries
seen twice (archived and still in the stream, or written twice after an
archiver restart) are adjacent too and dropped.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from gateway.audit import segments
from gateway.audit.record import COLUMNS, Entry, join, sort_key, unpack
from gateway.audit.sink import FIELD, STREAM


@dataclass(frozen=True)
class Query:
    since_us: int | None = None  # inclusive
    until_us: int | None = None  # exclusive
    caller: frozenset[str] = frozenset()  # any of these spellings
    callee: frozenset[str] = frozenset()
    call_id: str | None = None

    def in_range(self, k: int) -> bool:
        return (self.since_us is None or k >= self.since_us) and (self.until_us is None or k < self.until_us)

    def matches(self, row: Entry) -> bool:
        if self.call_id is not None and row["call_id"] != self.call_id:
            return False
        if self.caller and row["caller"] not in self.caller:
            return False
        return not (self.callee and row["callee"] not in self.callee)


def read_stream(client: Any, stream: str = STREAM, chunk: int = 10_000) -> list[Entry]:
    """Every entry still in the stream, sorted (bounded by the stream's maximum length)."""
    out: list[Entry] = []
    start = "-"
    while True:
        rows = client.xrange(stream, min=start, max="+", count=chunk)
        for _mid, fields in rows:
            raw = fields.get(FIELD.encode())
            if raw is None:
                continue
            try:
                out.append(unpack(raw))
            except Exception:
                continue
        if len(rows) < chunk:
            break
        last = rows[-1][0].decode()
        ms, seq = last.split("-")
        start = f"{ms}-{int(seq) + 1}"
    out.sort(key=sort_key)
    return out


def archived(roots: Path | list[Path], q: Query, on_error: segments.ErrorReport) -> Iterator[Entry]:
    """Archived entries in order, hour by hour; several archive directories (archivers on
    different hosts) are merged hour by hour."""
    by_hour: dict[int, list[Path]] = {}
    for root in [roots] if isinstance(roots, Path) else roots:
        for hour, path in segments.partitions(root, q.since_us, q.until_us):
            by_hour.setdefault(hour, []).append(path)
    for hour in sorted(by_hour):
        paths = by_hour[hour]
        if len(paths) == 1:
            yield from segments.read_partition(paths[0], on_error)
        else:
            yield from segments.merge(it for p in paths for it in segments.open_partition(p, on_error))


def records(sources: Iterable[Iterable[Entry]], q: Query) -> Iterator[Entry]:
    """Merge sorted sources, keep the range, join each decision with its outcomes, filter."""
    merged = segments.merge(sources)
    in_range = (e for e in merged if q.in_range(sort_key(e)[0]))
    for _, group in itertools.groupby(in_range, key=lambda e: sort_key(e)[:2]):
        row = join(list(group))
        if row is not None and q.matches(row):
            yield row


def export(
    root: Path | list[Path],
    q: Query,
    out: IO[str],
    fmt: str = "jsonl",
    *,
    client: Any = None,
    stream: str = STREAM,
    on_error: segments.ErrorReport,
) -> int:
    """Write the matching records to ``out``; returns how many."""
    live = read_stream(client, stream) if client is not None else []
    n = 0
    write: Callable[[Entry], None]
    if fmt == "csv":
        w = csv.DictWriter(out, fieldnames=list(COLUMNS), lineterminator="\n")
        w.writeheader()
        write = w.writerow
    else:
        def write(row: Entry) -> None:
            out.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
    for row in records([archived(root, q, on_error), live], q):
        write(row)
        n += 1
    return n
