"""``cag audit export`` and the look-ups: archived partitions and the live stream, joined, in time order.

The archive is read by DuckDB (``engine``) over the Parquet files of the
partitions in range, of any number of archive roots, with the
not-yet-archived stream (bounded by the sink's ``max_stream``) as one more
table: a decision and its outcomes are joined wherever each of them is, and
a record seen twice (archived and still in the stream, written twice after
an archiver restart, in two roots) is one row.

- ``export``: the rows as JSON lines or CSV, built by DuckDB and written as
  whole buffers; an unfiltered range is read one hour at a time (constant
  memory), a filtered one in one query that skips, with the row-group
  statistics and Bloom filters, what cannot match.
- ``find``: the same rows as dicts (``record.COLUMNS``), for the complaint trace.
- ``archived`` / ``records``: the entry-level merge in Python, as before
  (any source of sorted entries; slower, kept for callers that merge their own).

One module on purpose: its paths (the indexed look-up, compacted hours streamed
as they lie, hours joined whole) share one order and one de-duplication rule,
which would drift apart in separate modules.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import queue
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from gateway.audit import segments
from gateway.audit.record import Entry, join, sort_key, unpack, unpack_chunk
from gateway.audit.sink import CHUNK_FIELD, FIELD, STREAM

if TYPE_CHECKING:
    pass

T = TypeVar("T")
Roots = Path | list[Path]


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
            try:
                packed = fields.get(CHUNK_FIELD.encode())
                if packed is not None:
                    out += unpack_chunk(packed)
                elif (raw := fields.get(FIELD.encode())) is not None:
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
    different hosts) are merged hour by hour. For ``records`` to join.

    A records row (a compacted hour) comes as its decision entry and one outcome entry carrying
    its outcome fields. With a caller, callee or Call-ID in ``q``, only the entries of the
    records that can match are read (found as ``find`` finds them): ``records`` gives the same
    rows, without a scan of the range.
    """
    if _selective(q):
        yield from _archived_matching(roots, q, on_error)
        return
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


def _entries_of(q: Query, lo: int, hi: int, eng: Any, w: str) -> list[Entry]:
    from gateway.audit.engine import DECISION_FIELDS

    if not _narrow(eng, w, q, lo, hi):
        return []
    out: list[Entry] = []
    cur = eng.con.execute("SELECT * FROM rec_src")
    names = [d[0] for d in cur.description]
    for row in cur.fetchall():
        r = dict(zip(names, row, strict=True))
        d: Entry = {"k": "d", "rid": r["rid"], "t": r["t"]}
        d.update((f, r[f]) for f in DECISION_FIELDS if r[f] is not None)
        out.append(d)
        oc = {f: r[f] for f in ("final_code", "answered_at", "ended_at") if r[f] is not None}
        if oc:
            o: Entry = {"k": "o", "rid": r["rid"], "t": r["t"], "dt": r["t"]}
            if r["call_id"] is not None:
                o["call_id"] = r["call_id"]
            out.append({**o, **oc})
    cur = eng.con.execute("SELECT * FROM ent_src")
    names = [d[0] for d in cur.description]
    out += [{k: v for k, v in zip(names, row, strict=True) if v is not None} for row in cur.fetchall()]
    out.sort(key=sort_key)
    return out


def _archived_matching(roots: Roots, q: Query, on_error: segments.ErrorReport) -> Iterator[Entry]:
    for lo, hi, files in _spans(roots, q, None, False):
        yield from _span_result(roots, q, None, on_error, lo, hi, files, functools.partial(_entries_of, q, lo, hi))


def records(sources: Iterable[Iterable[Entry]], q: Query) -> Iterator[Entry]:
    """Merge sorted sources, keep the range, join each decision with its outcomes, filter."""
    merged = segments.merge(sources)
    in_range = (e for e in merged if q.in_range(sort_key(e)[0]))
    for _, group in itertools.groupby(in_range, key=lambda e: sort_key(e)[:2]):
        row = join(list(group))
        if row is not None and q.matches(row):
            yield row


def _where(q: Query, since_us: int | None = None, until_us: int | None = None) -> str:
    from gateway.audit.engine import where

    lo = q.since_us if since_us is None else since_us if q.since_us is None else max(since_us, q.since_us)
    hi = q.until_us if until_us is None else until_us if q.until_us is None else min(until_us, q.until_us)
    return where(lo, hi, q.caller, q.callee, q.call_id)


def _runs(roots: Roots, q: Query, live: list[Entry] | None, per_hour: bool) -> list[tuple[int, int, segments.Files]]:
    """The hours to read as (start, end, files) spans in time order: one span for all the hours
    of Parquet files (``per_hour``: one span per hour), an hour of legacy segments on its own
    (they are read into memory)."""
    by_hour: dict[int, segments.Files] = {}
    for root in [roots] if isinstance(roots, Path) else roots:
        for hour, part in segments.partitions(root, q.since_us, q.until_us):
            f = by_hour.setdefault(hour, segments.Files()).add(segments.segments(part))
            f.index += segments.indexes(part)
    if live:
        for h in {segments.hour_of(sort_key(e)[0]) for e in live}:
            if (q.since_us is None or h + segments.HOUR_US > q.since_us) and (q.until_us is None or h < q.until_us):
                by_hour.setdefault(h, segments.Files())
    spans: list[tuple[int, int, segments.Files]] = []
    for hour in sorted(by_hour):
        f = by_hour[hour]
        end = hour + segments.HOUR_US
        if spans and not per_hour and not f.legacy and not spans[-1][2].legacy and spans[-1][1] == hour:
            s0, _, acc = spans[-1]
            acc.records += f.records
            acc.entries += f.entries
            acc.index += f.index
            spans[-1] = (s0, end, acc)
        else:
            spans.append((hour, end, segments.Files(list(f.records), list(f.entries), list(f.legacy), list(f.index))))
    return spans


def _in_span(live: list[Entry] | None, lo: int, hi: int) -> list[Entry]:
    return [e for e in live or () if lo <= sort_key(e)[0] < hi]


def _run(files: segments.Files, live: list[Entry], on_error: segments.ErrorReport,
         fn: Callable[[Any], T], attempts: int = 5, call_id: str | None = None,
         callee: frozenset[str] | None = None) -> T:
    """``fn(engine)`` over the files and the live entries; a damaged file is reported and left
    out, a file removed by a compaction meanwhile makes the caller's listing stale
    (``FileNotFoundError``). Live entries and legacy segments reach DuckDB as JSON lines in a
    temporary file (no pyarrow on this path: a command starts faster)."""
    with tempfile.TemporaryDirectory(prefix="cag-audit-") as tmp:
        ndjson = []
        if live:
            segments.write_ndjson(Path(tmp) / "live.jsonl", live)
            ndjson.append(Path(tmp) / "live.jsonl")
        for i, p in enumerate(files.legacy):
            if segments.write_ndjson(Path(tmp) / f"legacy-{i}.jsonl", segments.read_segment(p, on_error)):
                ndjson.append(Path(tmp) / f"legacy-{i}.jsonl")
        return _run_engine(files, ndjson, on_error, fn, attempts, call_id, callee)


def _run_engine(files: segments.Files, ndjson: list[Path], on_error: segments.ErrorReport,
                fn: Callable[[Any], T], attempts: int, call_id: str | None = None,
                callee: frozenset[str] | None = None) -> T:
    """``_run`` on DuckDB; ``call_id``: only that Call-ID is asked for (packed records files
    are then scanned with the condition on their own columns, which their Bloom filters answer);
    ``callee``: only these callees are looked up in the indexes (layout 2 asks its columns)."""
    import duckdb

    from gateway.audit.engine import Engine

    records, entries = list(files.records), list(files.entries)
    for _ in range(attempts):
        eng = None
        try:
            eng = Engine(records, entries, index=files.index, ndjson=ndjson, call_id=call_id, callee=callee)
            return fn(eng)
        except duckdb.Error as exc:
            if getattr(eng, "wrote", False):
                raise  # output has begun: a second try would repeat it
            before = set(records + entries)
            gone = [p for p in before if not p.exists()]
            if gone:
                raise FileNotFoundError(gone[0]) from exc
            good = set(segments.check_files(sorted(before), on_error))
            if good == before:
                good = set(segments.check_files(sorted(before), on_error, deep=True))
            if good == before:
                raise
            records = [p for p in records if p in good]
            entries = [p for p in entries if p in good]
        finally:
            if eng is not None:
                eng.close()
    raise RuntimeError("archive files kept failing")


def _spans(roots: Roots, q: Query, live: list[Entry] | None, per_hour: bool) -> Iterator[tuple[int, int, segments.Files]]:
    """``_runs``, each span's files listed again when it is read (a compaction may have replaced
    them since the first listing)."""
    first = True
    for lo, hi, files in _runs(roots, q, live, per_hour):
        if not first:
            files = _relist(roots, q, lo, hi, files)
        first = False
        yield lo, hi, files


def _relist(roots: Roots, q: Query, lo: int, hi: int, old: segments.Files) -> segments.Files:
    files = segments.Files()
    for root in [roots] if isinstance(roots, Path) else roots:
        for _, part in segments.partitions(root, max(lo, q.since_us or lo), min(hi, q.until_us or hi)):
            files.add(segments.segments(part))
            files.index += segments.indexes(part)
    return files


def _span_result(roots: Roots, q: Query, live: list[Entry] | None, on_error: segments.ErrorReport,
                 lo: int, hi: int, files: segments.Files, fn: Callable[[Any, str], T],
) -> T:
    """``fn(engine, where)`` over one span, re-listing its files if a compaction removed one meanwhile."""
    for attempt in range(5):
        try:
            return _run(files, _in_span(live, lo, hi), on_error, functools.partial(_call, fn, _where(q, lo, hi)),
                        call_id=q.call_id, callee=q.callee or None)
        except FileNotFoundError:
            if attempt == 4:
                raise
            files = _relist(roots, q, lo, hi, files)
    raise AssertionError("unreachable")


MAX_CANDIDATES = 20_000  # a look-up matching more records reads them in one pass instead


def _candidates(eng: Any, w: str, q: Query, lo: int, hi: int) -> list[int] | None:
    """Step one of a look-up: the decision times of the records that can match (None: too many).

    With a callee: from the hours' indexes (sorted by callee: one row group each), the records
    files without one, and decisions not compacted yet (the caller, Call-ID are checked in step
    two). Otherwise (Call-ID, caller): from the records files, whose row groups have Bloom filters
    for both, and the decisions not compacted yet.
    """
    if q.callee:
        view, w = "callees", _where(Query(callee=q.callee, since_us=q.since_us, until_us=q.until_us), lo, hi)
    else:
        view = "decisions"
    cur = eng.con.execute(f"SELECT DISTINCT t FROM {view} WHERE {w} LIMIT {MAX_CANDIDATES + 1}")
    times = [r[0] for r in cur.fetchall()]
    return None if len(times) > MAX_CANDIDATES else times


def _narrow(eng: Any, w: str, q: Query, lo: int, hi: int) -> bool:
    """Restrict the engine to the candidates of ``q`` in ``[lo, hi)``; False when there are none."""
    times = _candidates(eng, w, q, lo, hi)
    if times is not None:
        if not times:
            return False
        eng.restrict(times)
    return True


def _lookup(roots: Roots, q: Query, live: list[Entry] | None, on_error: segments.ErrorReport,
            fn: Callable[[Any, str], T]) -> Iterator[T | None]:
    """A filtered question, span by span: the matching record ids first, then only those records
    (their decisions, outcomes and copies wherever they are) joined, on the same connection."""
    def both(lo: int, hi: int, eng: Any, w: str) -> T | None:
        return fn(eng, w) if _narrow(eng, w, q, lo, hi) else None

    for lo, hi, files in _spans(roots, q, live, False):
        yield _span_result(roots, q, live, on_error, lo, hi, files, functools.partial(both, lo, hi))


def _call(fn: Callable[[Any, str], T], w: str, eng: Any) -> T:
    return fn(eng, w)


def _selective(q: Query) -> bool:
    return bool(q.caller or q.callee or q.call_id is not None)


def find(roots: list[Path] | Path, q: Query, *, client: Any = None, stream: str = STREAM,
         on_error: segments.ErrorReport | None = None) -> list[Entry]:
    """The records matching ``q`` — archived under ``roots`` and, with ``client``, still in the
    stream — joined, one row per record, in time order (dicts of ``record.COLUMNS``, as export
    writes them). Look-ups by callee, caller or Call-ID read only the row groups that can match."""
    report = on_error or (lambda p, m: segments.log.error("damaged audit file %s: %s", p, m))
    live = read_stream(client, stream) if client is not None else None
    out: list[Entry] = []
    parts = (_lookup(roots, q, live, report, _rows) if _selective(q)
             else (_span_result(roots, q, live, report, lo, hi, f, _rows) for lo, hi, f in _spans(roots, q, live, False)))
    for part in parts:
        out += part or []
    return out


def _rows(eng: Any, w: str) -> list[Entry]:
    from gateway.audit.engine import rows

    return rows(eng.con, w)


SMALL_BYTES = 4 << 20  # a span whose files are smaller is formatted by DuckDB (no pyarrow to load)


def _small(files: segments.Files, live: list[Entry] | None) -> bool:
    size = 0
    for p in files.records + files.entries + files.legacy:
        try:
            size += p.stat().st_size
        except FileNotFoundError:
            continue
    return size < SMALL_BYTES and len(live or ()) < 20_000


BATCH = 131_072  # rows formatted at a time, two batches at once


def _in_order(files: segments.Files, live: list[Entry] | None) -> bool:
    """A span that is one records file, written in export order: read as it lies, no sort.

    An orphans file beside it does not count: its outcomes had no decision in the hour when it
    was compacted, so they join nothing in the records file (a decision arriving later would be
    in an entries file of its own)."""
    waiting = [p for p in files.entries if not p.name.startswith(segments.ORPHANS)]
    if len(files.records) != 1 or waiting or files.legacy or live:
        return False
    import pyarrow.parquet as pq

    from gateway.audit import columnar

    try:
        md = pq.read_metadata(files.records[0])
    except Exception:
        return False
    # a packed file is in the same order, but only its time is a column to name (``columnar``)
    want = ((0,) if segments.is_packed(files.records[0])
            else tuple(columnar.RECORD_FIELDS.index(c) for c, _ in columnar.RECORD_SORT))
    return md.num_row_groups > 0 and all(
        tuple(c.column_index for c in (md.row_group(g).sorting_columns or ())) == want
        for g in range(md.num_row_groups))


def _span_writer(fmt: str, small: bool, write: Callable[[Any], Any], pool: Any,
                 in_order: bool = False) -> Callable[[Any, str], int]:
    """``fn(engine, where)`` writing the span's rows in order; returns how many.

    Small spans: lines built by DuckDB itself (no pyarrow to load). Others: DuckDB reads, Arrow
    sorts and builds the lines (``lines``) of two batches at once, written in order.
    """
    from gateway.audit.engine import arrow_reader, arrow_table, write_lines

    def sql_lines(eng: Any, w: str) -> int:
        out: list[bytes] = []
        k = write_lines(eng.con, w, fmt, out.append)
        eng.wrote = True
        write(b"".join(out))
        return k

    def arrow_lines(eng: Any, w: str) -> int:
        # DuckDB reads (no ORDER BY: its sort of the whole rows costs more than the rest together);
        # Arrow sorts the keys, and each batch of rows is taken in order and formatted.
        import pyarrow.compute as pc

        from gateway.audit import lines

        if in_order:  # one records file in export order: stream it as it lies
            import pyarrow as pa

            eng.con.execute("SET preserve_insertion_order = true")
            reader = arrow_reader(eng.con, f"SELECT * FROM rec_src WHERE {w}", BATCH)
            pending: list[Any] = []
            k = 0
            for batch in reader:
                if batch.num_rows:
                    k += batch.num_rows
                    pending.append(pool.submit(lines.batch_bytes, pa.Table.from_batches([batch]), fmt))
                _drain(pending, write, eng, keep=2)
            _drain(pending, write, eng, keep=0)
            return k
        table = arrow_table(eng.con, f"SELECT * FROM audit_raw WHERE {w}").combine_chunks()
        n = table.num_rows
        if not n:
            return 0
        order = pc.sort_indices(table, sort_keys=[("t", "ascending"), ("rid", "ascending")])

        def part(i: int) -> Any:
            return lines.batch_bytes(table.take(order.slice(i, BATCH)), fmt)

        pending = []
        for i in range(0, n, BATCH):
            pending.append(pool.submit(part, i))
            _drain(pending, write, eng, keep=2)
        _drain(pending, write, eng, keep=0)
        return n

    return sql_lines if small else arrow_lines


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
    """Write the matching records to ``out``; returns how many.

    A filtered export is a look-up (``_lookup``); an unfiltered one reads an hour at a time,
    sorted by DuckDB and formatted by Arrow in batches (``_span_writer``), in constant memory.
    """
    from concurrent.futures import ThreadPoolExecutor

    from gateway.audit.engine import CSV_HEADER, stream_text

    live = read_stream(client, stream) if client is not None else None
    write = stream_text(out)
    if fmt == "csv":
        write(CSV_HEADER.encode())
    n = 0
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="audit-export") as pool:
        if _selective(q):
            for k in _lookup(root, q, live, on_error, _span_writer(fmt, True, write, pool)):
                n += k or 0
            return n
        # Hour after hour, in order; the next hour is read and sorted (in a thread of its own)
        # while this one is formatted and written: its lines wait in a small queue.
        spans = list(_spans(root, q, live, True))
        queues: list[queue.Queue[Any]] = [queue.Queue(maxsize=3) for _ in spans]
        cancelled = threading.Event()

        def produce(i: int) -> None:
            def put(item: Any) -> None:
                while not cancelled.is_set():
                    try:
                        queues[i].put(item, timeout=0.2)
                        return
                    except queue.Full:
                        continue
                raise _Cancelled

            lo, hi, files = spans[i]
            try:
                here = _in_span(live, lo, hi)
                fn = _span_writer(fmt, _small(files, here), put, pool, _in_order(files, here))
                put(("done", _span_result(root, q, live, on_error, lo, hi, files, fn)))
            except _Cancelled:
                return
            except BaseException as exc:  # handed to the writing thread
                with contextlib.suppress(_Cancelled):
                    put(("error", exc))

        threads = [threading.Thread(target=produce, args=(i,), daemon=True) for i in range(len(spans))]
        try:
            for i in range(len(spans)):
                for j in (i, i + 1):
                    if j < len(spans) and threads[j].ident is None:
                        threads[j].start()
                while True:
                    item = queues[i].get()
                    if isinstance(item, tuple):
                        if item[0] == "error":
                            raise item[1]
                        n += item[1]
                        break
                    write(item)
        finally:
            cancelled.set()
            for t in threads:
                if t.ident is not None:
                    t.join()
    return n


class _Cancelled(Exception):
    """The writing side gave up (a broken pipe, an error in another hour): stop producing."""


def _drain(pending: list[Any], write: Any, eng: Any, *, keep: int) -> None:
    """Write finished batches in order, leaving at most ``keep`` in flight (bounded memory)."""
    while len(pending) > keep:
        eng.wrote = True
        write(pending.pop(0).result())
