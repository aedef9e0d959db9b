"""The archive's Parquet files: their schemas, Arrow conversions, durable writes.

Two kinds of file live in an hourly partition (``segments``):

- **entries** (``*.entries.parquet``): audit entries as the stream carried
  them, one row each (decision ``k = "d"`` or outcome ``k = "o"``), columns
  ``record.FIELDS``. The archiver writes one per batch and partition; the
  compaction keeps the outcomes whose decision it did not find in one.
- **records** (``*.records.parquet``): joined records, one row per decision
  with its outcome fields filled in, written by the compaction of an hour,
  in export order (time, record id) and small row groups: their time
  statistics are tight, and ``call_id`` and ``caller`` have Parquet Bloom
  filters in each row group. Time is integer µs since the epoch (UTC).
- **index** (``*.index.parquet``, beside its records file): (callee, time)
  of every record (since layout 2 the callee as ``ce_n`` / ``ce_x``, like the
  packed records file), sorted by callee, so a look-up by callee reads the one
  row group of the index that can hold it and then, by time, the row groups
  of the records file that hold the calls.

Every file is written to a ``.tmp-`` name, fsync'd, renamed and its
directory fsync'd, so a file with its final name is complete and on disk.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gateway.audit.record import DECISION, FIELDS, OUTCOME, Entry
from gateway.audit.segments import (
    ENTRIES_SUFFIX,
    HOUR_US,
    RECORDS_SUFFIX,
    file_name,
    fsync_dir,
    kind_of,
    make_dirs,
)

__all__ = ["ENTRIES_SUFFIX", "HOUR_US", "RECORDS_SUFFIX", "file_name", "kind_of"]

_TYPES: dict[str, pa.DataType] = {
    "k": pa.string(), "rid": pa.string(), "t": pa.int64(), "dt": pa.int64(), "call_id": pa.string(),
    "trunk_id": pa.string(), "enterprise_id": pa.string(), "caller": pa.string(), "callee": pa.string(),
    "decision": pa.string(), "reason": pa.string(), "sip_code": pa.int32(), "consent_token": pa.string(),
    "evidence_ref": pa.string(), "latency_us": pa.int64(), "node": pa.string(), "worker": pa.int32(),
    "final_code": pa.int32(), "answered_at": pa.int64(), "ended_at": pa.int64(),
}
ENTRY_SCHEMA = pa.schema([pa.field(f, _TYPES[f]) for f in FIELDS])

# A record: the decision's fields (``t`` its time) and the outcome fields, joined.
RECORD_FIELDS = (
    "t", "rid", "call_id", "trunk_id", "enterprise_id", "caller", "callee", "decision", "reason",
    "sip_code", "consent_token", "evidence_ref", "latency_us", "node", "worker",
    "final_code", "answered_at", "ended_at",
)
RECORD_SCHEMA = pa.schema([pa.field(f, _TYPES[f]) for f in RECORD_FIELDS])
DECISION_FIELDS = RECORD_FIELDS[2:15]
OUTCOME_FIELDS = ("final_code", "answered_at", "ended_at")

# Records are in export order (decision time, record id): a row group covers ~30 s of calls, so
# its time statistics are tight, and export reads without sorting. The index of an hour (callee,
# caller, time), sorted by callee, is what a look-up by number reads first: one row group.
RECORD_SORT = (("t", "ascending"), ("rid", "ascending"))
# Since layout 2 (``segments.layout``): the callee as E.164 digits (``ce_n``) or, for any other
# text, as it is (``ce_x``); ``engine.index_sql`` sorts (ce_n, ce_x, t).
INDEX_FIELDS = ("ce_n", "ce_x", "t")
INDEX_SCHEMA = pa.schema([pa.field("ce_n", pa.int64()), pa.field("ce_x", pa.string()), pa.field("t", pa.int64())])
ROW_GROUP = 32_768
_LOW_CARDINALITY = ["k", "trunk_id", "enterprise_id", "caller", "decision", "reason", "sip_code",
                    "node", "worker", "final_code"]
_RECORD_STATS = ["t", "rid", "trunk_id", "enterprise_id", "decision", "reason", "node"]
# High-cardinality strings: lengths apart from the bytes (or prefixes shared with the row before,
# for sorted ones); times: byte planes apart, so zstd sees their constant high bytes.
_ENCODING = {"call_id": "DELTA_LENGTH_BYTE_ARRAY", "evidence_ref": "DELTA_LENGTH_BYTE_ARRAY",
             "consent_token": "DELTA_LENGTH_BYTE_ARRAY", "rid": "DELTA_BYTE_ARRAY",
             "t": "BYTE_STREAM_SPLIT", "answered_at": "BYTE_STREAM_SPLIT", "ended_at": "BYTE_STREAM_SPLIT",
             "latency_us": "BYTE_STREAM_SPLIT"}
# Bloom filter sizes are rounded up to a power of two: at 32,768 values a 5 % filter takes 64 KiB,
# and so does a 0.1 % one (≈ 2 B per record either way): a Call-ID look-up then reads one row group
# in a thousand for nothing instead of one in twenty.
_BLOOM: dict[str, Any] = {"call_id": {"ndv": ROW_GROUP, "fpp": 0.001}, "caller": {"ndv": 4096, "fpp": 0.002}}
HAVE_BLOOM = "bloom_filter_options" in inspect.signature(pq.ParquetWriter.__init__).parameters

# Packed records files (``segments.is_packed``; columns ``engine.PACKED_FIELDS``, made by
# ``engine.pack_sql``): the record's random identifiers as bytes, the text around them by
# dictionary. Call-ID UUIDs are a Parquet UUID column (DuckDB reads it as UUID; its Bloom filter
# is what a Call-ID look-up probes).
_PACKED_TYPES: dict[str, pa.DataType] = {
    **_TYPES, "rid_p": pa.string(), "rid_s": pa.int64(), "rid_r": pa.uint32(), "rid_x": pa.string(),
    "cid_u": pa.uuid(), "cid_x": pa.string(), "ce_n": pa.int64(), "ce_x": pa.string(), "tok_p": pa.string(), "tok_b": pa.binary(), "tok_s": pa.string(),
    "ev_p": pa.string(), "ev_b": pa.binary(), "ev_s": pa.string(),
}
PACKED_FIELDS = (
    "t", "rid_p", "rid_s", "rid_r", "rid_x", "cid_u", "cid_x", "trunk_id", "enterprise_id", "caller",
    "ce_n", "ce_x", "decision", "reason", "sip_code", "tok_p", "tok_b", "tok_s", "ev_p", "ev_b", "ev_s",
    "latency_us", "node", "worker", "final_code", "answered_at", "ended_at",
)
PACKED_SCHEMA = pa.schema([pa.field(f, _PACKED_TYPES[f]) for f in PACKED_FIELDS])
_PACKED_DICT = [*_LOW_CARDINALITY, "rid_p", "cid_x", "ce_x", "tok_p", "tok_s", "ev_p", "ev_s"]
# t is in order: its deltas (≈ 1 ms at 1,000 calls/s) pack to 1.8 B a record, 2.1 byte-split;
# zstd 9 or 12 instead of 6 gains < 0.5 % (the bytes left are random) for 1.2-1.7x the CPU.
_PACKED_ENCODING = {"t": "DELTA_BINARY_PACKED", "answered_at": "BYTE_STREAM_SPLIT", "ended_at": "BYTE_STREAM_SPLIT",
                    "latency_us": "BYTE_STREAM_SPLIT", "rid_s": "DELTA_BINARY_PACKED", "ce_n": "BYTE_STREAM_SPLIT",
                    "tok_b": "DELTA_LENGTH_BYTE_ARRAY", "ev_b": "DELTA_LENGTH_BYTE_ARRAY",
                    "rid_x": "DELTA_BYTE_ARRAY"}
_PACKED_STATS = ["t", "trunk_id", "enterprise_id", "decision", "reason", "node"]


def runs_by_dictionary(runs: int, rows: int) -> bool:
    """Store a packed file's ``rid_r`` (the record id's random part) by dictionary? Yes when it
    takes few values: since 2026-12-07 a worker draws it once a life (gateway/proxy/server.py
    ``_record_id``), so an hour holds one per worker process and a record costs the few bits of
    its index into them (≈ 0.5 B at 32 processes interleaved, 4 B plain). Ids of the shape
    before (a random part per record, ``runs`` ≈ ``rows``) are stored plain: a dictionary of
    them would cost its 4 B a value and the index on top."""
    return runs * 64 <= rows


def packed_bloom(uuids: int, others: int) -> dict[str, Any]:
    """Bloom filters of a packed file: Call-IDs are found by ``cid_u`` (UUID-shaped ones) or
    ``cid_x`` (the others, whole; for UUID-shaped ones, the few texts after the UUID). A filter's
    size follows the distinct values it expects, so each is sized by what the file holds (per
    row group at most ``ROW_GROUP``): a file of UUID Call-IDs spends ≈ 2 B a record on ``cid_u``
    and next to nothing on ``cid_x``, one of other Call-IDs the reverse."""
    out: dict[str, Any] = {"caller": _BLOOM["caller"]}
    if uuids:
        out["cid_u"] = {"ndv": max(1024, min(ROW_GROUP, uuids)), "fpp": _BLOOM["call_id"]["fpp"]}
    out["cid_x"] = {"ndv": max(1024, min(ROW_GROUP, others)), "fpp": _BLOOM["call_id"]["fpp"]}
    return out


def conform(arr: pa.Array | pa.ChunkedArray, typ: pa.DataType) -> pa.Array:
    """A column as DuckDB hands it → the file's type (UUIDs come as 16-byte BLOBs)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if isinstance(typ, pa.ExtensionType):
        if arr.type == typ:
            return arr
        return pa.ExtensionArray.from_storage(typ, arr.cast(typ.storage_type))
    return arr.cast(typ)


def _through_duckdb(name: str, table: pa.Table, sql: str, schema: pa.Schema) -> pa.Table:
    """``sql`` over ``table`` (registered as ``name``) in a throw-away DuckDB, in the file's ``schema``."""
    import duckdb

    from gateway.audit.engine import arrow_table

    con = duckdb.connect(":memory:")
    try:
        con.execute("SET preserve_insertion_order = true")
        con.register(name, table)
        out = arrow_table(con, sql)
    finally:
        con.close()
    return pa.Table.from_arrays([conform(out.column(f.name), f.type) for f in schema], schema=schema)


def packed_table(records: pa.Table) -> pa.Table:
    """A table of ``RECORD_SCHEMA`` (in export order) → the packed file's columns (same order)."""
    from gateway.audit.engine import pack_sql

    return _through_duckdb("records_in", records, pack_sql("records_in"), PACKED_SCHEMA)


def index_table(records: pa.Table) -> pa.Table:
    """The index of a records table (``RECORD_SCHEMA``) as compaction writes it (``INDEX_SCHEMA``)."""
    from gateway.audit.engine import index_sql

    return _through_duckdb("records_in", records.select(["callee", "t"]), index_sql("records_in"), INDEX_SCHEMA)


def unpacked_table(stored: pa.Table) -> pa.Table:
    """A packed file's table → ``RECORD_SCHEMA`` (the text of every value as it was written)."""
    from gateway.audit.engine import unpack_sql

    layout = 2 if "ce_n" in stored.column_names else 1
    return _through_duckdb("packed_in", stored, f"SELECT {unpack_sql(layout)} FROM packed_in", RECORD_SCHEMA)


def read_records(path: Path | Any) -> pa.Table:
    """A records file (either layout; ``path`` or an open file of a plain one) → ``RECORD_SCHEMA``."""
    from gateway.audit.segments import is_packed

    table = pq.read_table(path)
    if (isinstance(path, Path) and is_packed(path)) or "cid_u" in table.column_names:
        return unpacked_table(table)
    return table


# ---------------------------------------------------------------- building tables
def entries_table(n: int, cols: dict[str, list[Any]]) -> pa.Table:
    """Columns of ``n`` entries (a field missing: all null) → a table of ``ENTRY_SCHEMA``.

    Raises (``pa.ArrowInvalid``, ``TypeError``, ``OverflowError``) on a value of the wrong type.
    """
    arrays = []
    for f in FIELDS:
        col = cols.get(f)
        arrays.append(pa.nulls(n, _TYPES[f]) if col is None else pa.array(col, type=_TYPES[f]))
    return pa.Table.from_arrays(arrays, schema=ENTRY_SCHEMA)


def table_of_entries(entries: list[Entry]) -> pa.Table:
    present: set[str] = set().union(*entries) if entries else set()
    cols = {f: [e.get(f) for e in entries] for f in FIELDS if f in present}
    return entries_table(len(entries), cols)


def sort_time(t: pa.Table) -> pa.Array:
    """The time an entry sorts (and is filed) at: an outcome's decision time, when known."""
    import pyarrow.compute as pc  # ~0.25 s to import: not on the export's start-up path

    is_o = pc.equal(t["k"], OUTCOME)
    return pc.if_else(pc.and_(is_o, pc.is_valid(t["dt"])), t["dt"], t["t"])


def by_hour(t: pa.Table) -> Iterator[tuple[int, pa.Table]]:
    """Split an entries table into the hourly partitions it touches (oldest first)."""
    import pyarrow.compute as pc

    st = sort_time(t)
    hours = pc.multiply(pc.divide(st, HOUR_US), HOUR_US)  # integer division: st - st % HOUR (st ≥ 0)
    uniq = sorted(pc.unique(hours).to_pylist())
    if len(uniq) == 1:
        yield uniq[0], t
        return
    for h in uniq:
        yield h, t.filter(pc.equal(hours, h))


def entries_of(t: pa.Table) -> list[Entry]:
    """Rows of an entries or records table → entries (a record: its decision, then one outcome
    entry with its outcome fields, dated at the decision)."""
    names = t.column_names
    rows = t.to_pylist()
    if "k" in names:
        return [{k: v for k, v in r.items() if v is not None} for r in rows]
    out: list[Entry] = []
    for r in rows:
        d: Entry = {"k": DECISION, "rid": r["rid"], "t": r["t"]}
        for f in DECISION_FIELDS:
            if r[f] is not None:
                d[f] = r[f]
        out.append(d)
        if any(r[f] is not None for f in OUTCOME_FIELDS):
            o: Entry = {"k": OUTCOME, "rid": r["rid"], "t": r["t"], "dt": r["t"]}
            if r.get("call_id") is not None:
                o["call_id"] = r["call_id"]
            for f in OUTCOME_FIELDS:
                if r[f] is not None:
                    o[f] = r[f]
            out.append(o)
    return out


# ---------------------------------------------------------------- files
def _write_options(kind: str, rows: int, bloom: dict[str, Any] | None = None,
                   run_dict: bool = False) -> dict[str, Any]:
    if kind == "entries":  # the archiver's batches: cheap to write, compacted later
        return {"compression": "zstd", "compression_level": 1, "use_dictionary": _LOW_CARDINALITY,
                "write_statistics": ["t", "dt"], "row_group_size": 1 << 20}
    if kind == "index":  # sorted: the numbers' deltas are small, the texts share prefixes
        return {"compression": "zstd", "compression_level": 6, "use_dictionary": False,
                "write_statistics": list(INDEX_FIELDS), "row_group_size": ROW_GROUP,
                "column_encoding": {"ce_n": "DELTA_BINARY_PACKED", "ce_x": "DELTA_BYTE_ARRAY",
                                    "t": "BYTE_STREAM_SPLIT"},
                "sorting_columns": [pq.SortingColumn(i, nulls_first=i == 1) for i in range(len(INDEX_FIELDS))]}
    if kind == "packed":
        popts: dict[str, Any] = {
            "compression": "zstd", "compression_level": 6,
            "use_dictionary": [*_PACKED_DICT, "rid_r"] if run_dict else _PACKED_DICT,
            "write_statistics": _PACKED_STATS, "row_group_size": ROW_GROUP, "column_encoding": _PACKED_ENCODING,
            "sorting_columns": [pq.SortingColumn(0)],
        }
        if HAVE_BLOOM:
            popts["bloom_filter_options"] = bloom if bloom is not None else packed_bloom(ROW_GROUP, ROW_GROUP)
        return popts
    opts: dict[str, Any] = {
        "compression": "zstd", "compression_level": 6, "use_dictionary": _LOW_CARDINALITY,
        "write_statistics": _RECORD_STATS, "row_group_size": ROW_GROUP, "column_encoding": _ENCODING,
        "sorting_columns": [pq.SortingColumn(RECORD_FIELDS.index(c)) for c, _ in RECORD_SORT],
    }
    if HAVE_BLOOM:
        opts["bloom_filter_options"] = _BLOOM
    return opts


def write_file(directory: Path, name: str, table: pa.Table, kind: str) -> Path:
    """Write ``table`` as ``directory/name`` durably (tmp, fsync, rename, fsync dir)."""
    make_dirs(directory)
    final = directory / name
    tmp = directory / f".tmp-{name}"
    bloom = None
    run_dict = False
    if kind == "packed":
        import pyarrow.compute as pc

        bloom = packed_bloom(len(table) - table.column("cid_u").null_count,
                             pc.count_distinct(table.column("cid_x")).as_py())
        run_dict = runs_by_dictionary(pc.count_distinct(table.column("rid_r")).as_py(), table.num_rows)
    with open(tmp, "wb") as raw:
        pq.write_table(table, raw, **_write_options(kind, table.num_rows, bloom, run_dict))
        raw.flush()
        os.fsync(raw.fileno())
    os.rename(tmp, final)
    fsync_dir(directory)
    return final


def write_batches(directory: Path, name: str, batches: Iterable[pa.RecordBatch], schema: pa.Schema,
                  kind: str, bloom: dict[str, Any] | None = None, run_dict: bool = False) -> Path:
    """Like ``write_file``, from a stream of record batches (one row group per batch, at most
    ``ROW_GROUP`` rows): constant memory in the size of the file. ``bloom``: the Bloom filters
    of a packed file (``packed_bloom``); ``run_dict``: its ``rid_r`` by dictionary
    (``runs_by_dictionary``)."""
    make_dirs(directory)
    final = directory / name
    tmp = directory / f".tmp-{name}"
    try:
        with open(tmp, "wb") as raw:
            opts = _write_options(kind, 0, bloom, run_dict)
            rg = opts.pop("row_group_size")
            with pq.ParquetWriter(raw, schema, **opts) as w:
                pending: list[pa.RecordBatch] = []
                held = 0
                for b in batches:
                    if not b.num_rows:
                        continue
                    pending.append(pa.RecordBatch.from_arrays(
                        [conform(b.column(i), schema.field(i).type) for i in range(len(schema))], schema=schema))
                    held += b.num_rows
                    if held >= rg:  # row groups of exactly ``rg`` rows, whatever the batches
                        t = pa.Table.from_batches(pending, schema)
                        cut = held - held % rg
                        w.write_table(t.slice(0, cut), row_group_size=rg)
                        pending, held = t.slice(cut).to_batches(), held - cut
                if held:
                    w.write_table(pa.Table.from_batches(pending, schema), row_group_size=rg)
            raw.flush()
            os.fsync(raw.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.rename(tmp, final)
    fsync_dir(directory)
    return final


def concat(tables: Iterable[pa.Table], schema: pa.Schema) -> pa.Table:
    ts = [t for t in tables if t.num_rows]
    return pa.concat_tables(ts) if ts else schema.empty_table()
