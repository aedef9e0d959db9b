"""DuckDB over the archive: joined, de-duplicated records for export, look-ups and ``cag audit query``.

One in-memory DuckDB connection per question, over the Parquet files of the
partitions in range (any number of archive roots) plus in-memory entry
files of entries (the live stream, legacy ``.jsonl.gz`` segments). Views:

- ``rec_src`` / ``ent_src``: the records files / every entry (files, the live stream, legacy);
- ``audit_raw``: one row per record, decision fields and outcome fields
  joined, times as integer µs (``t`` the decision time, ``rid`` the record id);
  a record seen twice (two roots, a file not yet removed after compaction,
  the stream and the archive) is one row;
- ``audit``: the same for people (``record_id``, ``time`` as a UTC timestamp, …);
- ``orphans``: outcome entries whose decision is not there (kept by compaction).

The join: a decision (an entries row ``k = 'd'``, or a records row) with the
outcome entries filed under the same (decision time, record id); each outcome
field is the records row's value, else the earliest outcome's that has one.
Filters on decision fields stay below the GROUP BY (they are grouping keys),
so DuckDB pushes them into the Parquet scans and skips row groups by their
statistics and Bloom filters.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import duckdb

from gateway.audit.record import COLUMNS, FIELDS, Entry, iso_us
from gateway.audit.segments import is_packed, layout

if TYPE_CHECKING:
    import pyarrow as pa

# Kept here, not imported from ``columnar``: export and query start without loading pyarrow
# (≈ 0.3 s of a command's start-up); tests/unit/audit checks the two agree.
RECORD_FIELDS = (
    "t", "rid", "call_id", "trunk_id", "enterprise_id", "caller", "callee", "decision", "reason",
    "sip_code", "consent_token", "evidence_ref", "latency_us", "node", "worker",
    "final_code", "answered_at", "ended_at",
)
DECISION_FIELDS = RECORD_FIELDS[2:15]
SQL_TYPES = {
    "k": "VARCHAR", "rid": "VARCHAR", "t": "BIGINT", "dt": "BIGINT", "call_id": "VARCHAR",
    "trunk_id": "VARCHAR", "enterprise_id": "VARCHAR", "caller": "VARCHAR", "callee": "VARCHAR",
    "decision": "VARCHAR", "reason": "VARCHAR", "sip_code": "INTEGER", "consent_token": "VARCHAR",
    "evidence_ref": "VARCHAR", "latency_us": "BIGINT", "node": "VARCHAR", "worker": "INTEGER",
    "final_code": "INTEGER", "answered_at": "BIGINT", "ended_at": "BIGINT",
}

# ---------------------------------------------------------------- packed records files
# A records file written since 2026-12-07 (``packed-*.records.parquet``, ``segments.is_packed``)
# keeps the random identifiers as the bytes they are, not as their text: a Call-ID that starts
# with a lowercase UUID as a Parquet UUID (16 B, Bloom filter) and the rest of it; a record id
# ``{node}-{worker}-{seq:x}-{rand:08x}`` as its sequence number and its random 32 bits (the
# ``{node}-{worker}`` part only when it is not the record's own node and worker); the consent
# token and evidence reference as the text around their longest lowercase hex run (even length,
# ≥ 16 digits) and that run as bytes. Any value not of that shape is kept whole in the text
# column (``*_x`` / ``*_p``): the text read back is the text written, always.
# Layout 2 (``packed2-*``, since 2026-12-07 too; ``segments.layout``) also keeps a callee that
# is E.164 digits (``+`` then 1-18 digits, no leading zero) as that integer (``ce_n``, else the
# text in ``ce_x``), in the records file and in its index (sorted: consecutive numbers delta-pack).
_UUID_RE = r"(?s)^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})(.*)$"
_RID_TAIL_RE = r"(?s)-(0|[1-9a-f][0-9a-f]{0,14})-([0-9a-f]{8})$"
_HEX_RUN_RE = r"(?:[0-9a-f]{2}){8,}"
_UUID_PY = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_E164_RE = r"^\+[1-9][0-9]{0,17}$"
_E164_PY = re.compile(r"\+[1-9][0-9]{0,17}")  # fullmatch; [0-9], not \d: ASCII digits only
_NODE_WORKER = "(node || '-' || CAST(worker AS VARCHAR))"
PACKED_FIELDS = (
    "t", "rid_p", "rid_s", "rid_r", "rid_x", "cid_u", "cid_x", "trunk_id", "enterprise_id", "caller",
    "ce_n", "ce_x", "decision", "reason", "sip_code", "tok_p", "tok_b", "tok_s", "ev_p", "ev_b", "ev_s",
    "latency_us", "node", "worker", "final_code", "answered_at", "ended_at",
)
INDEX_FIELDS = ("ce_n", "ce_x", "t")  # the index of a layout-2 file (before: callee, t)


def _e164_parts(col: str) -> str:
    """``{col}`` as E.164 digits (``ce_n``, BIGINT) when it is ``+`` and 1-18 digits without a
    leading zero (the integer's text is then exactly the digits), else the text (``ce_x``)."""
    ok = f"coalesce(regexp_matches({col}, {lit(_E164_RE)}), false)"
    return (f"CASE WHEN {ok} THEN CAST(substr({col}, 2) AS BIGINT) END AS ce_n, "
            f"CASE WHEN {ok} THEN NULL ELSE {col} END AS ce_x")


_CALLEE_TEXT = "CASE WHEN ce_n IS NULL THEN ce_x ELSE '+' || CAST(ce_n AS VARCHAR) END"


def index_sql(src: str) -> str:
    """The index of a layout-2 records file (``INDEX_FIELDS``) from a relation of records, in
    its order: by callee number, then the other callees' texts, then time."""
    return (f"SELECT ce_n, ce_x, t FROM (SELECT {_e164_parts('callee')}, t FROM {src}) "
            "ORDER BY ce_n NULLS LAST, ce_x NULLS FIRST, t")


def callee_index_sql(files: list[Path], callee: frozenset[str] | None) -> str:
    """(callee, t) of layout-2 index files; with ``callee``, only those rows, asked as the
    columns hold them (``ce_n IN (…)`` / ``ce_x IN (…)``) so the scan skips row groups by their
    statistics (a condition on the rebuilt text would read every row)."""
    src = f"read_parquet({_file_list(files)})"
    if callee is None:
        return f"SELECT {_CALLEE_TEXT} AS callee, t FROM {src}"
    nums = sorted(int(c[1:]) for c in callee if _E164_PY.fullmatch(c))
    texts = sorted(c for c in callee if not _E164_PY.fullmatch(c))
    parts = []
    if nums:
        parts.append(f"SELECT '+' || CAST(ce_n AS VARCHAR) AS callee, t FROM {src} "
                     f"WHERE ce_n IN ({', '.join(str(n) for n in nums)})")
    if texts:
        parts.append(f"SELECT ce_x AS callee, t FROM {src} WHERE ce_x IN ({', '.join(lit(c) for c in texts)})")
    return " UNION ALL ".join(parts) or _empty(("callee", "t"))


def _hex_parts(col: str, pre: str) -> str:
    """The three columns of a text around its first hex run of ≥ 16 digits (``{pre}_h``, from
    the inner SELECT: "" when there is none). Its first occurrence is where the match starts (an
    earlier one would have matched further left), so the text is prefix || run || rest."""
    h = f"{pre}_h"
    ok = f"coalesce({h} <> '', false)"
    at = f"strpos({col}, {h})"
    return (f"CASE WHEN {ok} THEN left({col}, {at} - 1) ELSE {col} END AS {pre}_p, "
            f"CASE WHEN {ok} THEN unhex({h}) END AS {pre}_b, "
            f"CASE WHEN {ok} THEN substr({col}, {at} + length({h})) END AS {pre}_s")


def _hex_text(pre: str) -> str:
    return f"CASE WHEN {pre}_b IS NULL THEN {pre}_p ELSE {pre}_p || lower(hex({pre}_b)) || {pre}_s END"


def pack_sql(src: str) -> str:
    """SELECT the columns of a packed records file (``PACKED_FIELDS``) from a relation of
    ``RECORD_FIELDS`` (``src``: a table or view name), in its order. Call-IDs come as 16-byte
    BLOBs (``columnar`` makes them Parquet UUIDs). Each value is matched once, by patterns that
    need no backtracking (≈ 1.3 µs a record, one thread): the record id's tail
    ``-{seq:x}-{rand:08x}`` (its ``{node}-{worker}`` is what is left before it), the Call-ID's
    leading UUID, the hex runs."""
    r_ok = "coalesce(rx.s <> '', false)"
    c_ok = "coalesce(cx.u <> '', false)"
    pre = "left(rid, length(rid) - length(rx.s) - 10)"  # the tail is ASCII: characters = bytes
    return f"""SELECT t,
    CASE WHEN {r_ok} AND {pre} IS DISTINCT FROM {_NODE_WORKER} THEN {pre} END AS rid_p,
    CASE WHEN {r_ok} THEN CAST('0x' || rx.s AS BIGINT) END AS rid_s,
    CASE WHEN {r_ok} THEN CAST('0x' || rx.r AS UINTEGER) END AS rid_r,
    CASE WHEN {r_ok} THEN NULL ELSE rid END AS rid_x,
    CASE WHEN {c_ok} THEN unhex(replace(cx.u, '-', '')) END AS cid_u,
    CASE WHEN {c_ok} THEN cx.x ELSE call_id END AS cid_x,
    trunk_id, enterprise_id, caller, {_e164_parts("callee")}, decision, reason, sip_code,
    {_hex_parts("consent_token", "tok")}, {_hex_parts("evidence_ref", "ev")},
    latency_us, node, worker, final_code, answered_at, ended_at
FROM (SELECT *, regexp_extract(rid, {lit(_RID_TAIL_RE)}, ['s', 'r']) AS rx,
             regexp_extract(call_id, {lit(_UUID_RE)}, ['u', 'x']) AS cx,
             regexp_extract(consent_token, {lit(_HEX_RUN_RE)}, 0) AS tok_h,
             regexp_extract(evidence_ref, {lit(_HEX_RUN_RE)}, 0) AS ev_h FROM {src})"""


_UNPACK = {
    "rid": (f"CASE WHEN rid_s IS NULL THEN rid_x ELSE coalesce(rid_p, {_NODE_WORKER}) || '-' "
            "|| lower(hex(rid_s)) || '-' || lpad(lower(hex(rid_r)), 8, '0') END"),
    "call_id": "CASE WHEN cid_u IS NULL THEN cid_x ELSE CAST(cid_u AS VARCHAR) || cid_x END",
    "consent_token": _hex_text("tok"),
    "evidence_ref": _hex_text("ev"),
}
UNPACK_V1_SQL = ", ".join(f"{_UNPACK[f]} AS {f}" if f in _UNPACK else f for f in RECORD_FIELDS)
_UNPACK["callee"] = _CALLEE_TEXT
UNPACK_SQL = ", ".join(f"{_UNPACK[f]} AS {f}" if f in _UNPACK else f for f in RECORD_FIELDS)


def unpack_sql(layout: int) -> str:
    """The SELECT list turning a packed file of ``layout`` (1 or 2) back into ``RECORD_FIELDS``."""
    return UNPACK_SQL if layout >= 2 else UNPACK_V1_SQL


def call_id_counts_sql(src: str) -> str:
    """(UUID-shaped Call-IDs, distinct other texts ≈, distinct record id tails ≈, rows) of
    ``src``: the sizes of a packed file's Bloom filters (``columnar.packed_bloom``) and whether
    it keeps the record ids' random parts by dictionary (``columnar.runs_by_dictionary``)."""
    ok = f"coalesce(regexp_matches(call_id, {lit(_UUID_RE)}), false)"
    return (f"SELECT count(*) FILTER (WHERE {ok}), "
            f"approx_count_distinct(CASE WHEN {ok} THEN substr(call_id, 37) ELSE call_id END), "
            f"approx_count_distinct(right(rid, 8)), count(*) FROM {src}")


def call_id_filter(call_id: str) -> str:
    """A condition on a packed file's columns selecting one Call-ID (pushed into the scan: the
    UUID's Bloom filter skips the row groups)."""
    if _UUID_PY.fullmatch(call_id[:36]):
        return f"cid_u = {lit(call_id[:36])}::UUID AND cid_x = {lit(call_id[36:])}"
    return f"cid_u IS NULL AND cid_x = {lit(call_id)}"


_INTS = frozenset({"sip_code", "latency_us", "worker", "final_code"})
_TIMES = frozenset({"time", "answered_at", "ended_at"})
_SRC = {"record_id": "rid", "time": "t"}


def arrow_reader(con: Any, sql: str, batch: int = 65_536) -> pa.RecordBatchReader:
    """A streaming Arrow reader over a query (DuckDB ≥ 1.4 names it ``to_arrow_reader``)."""
    rel = con.sql(sql)
    if hasattr(rel, "to_arrow_reader"):
        return rel.to_arrow_reader(batch)
    return rel.fetch_arrow_reader(batch)


def arrow_table(con: Any, sql: str) -> pa.Table:
    rel = con.sql(sql)
    return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()


def lit(s: str) -> str:
    """A SQL string literal."""
    return "'" + s.replace("'", "''") + "'"


def _file_list(paths: list[Path]) -> str:
    return "[" + ", ".join(lit(str(p)) for p in paths) + "]"


_DEC = ", ".join(DECISION_FIELDS)

_OUT = f"t, rid, {_DEC}, final_code, answered_at, ended_at"

# rec_one / rec_many: records files of hours with one / several of them (several roots, or a
# compaction's output next to its not yet removed inputs: a record may be in two);
# ent_near / ent_alone: entries of hours that have / have no records file.
_VIEWS = f"""
CREATE VIEW rec_src AS SELECT * FROM rec_one UNION ALL SELECT * FROM rec_many;
CREATE VIEW ent_src AS SELECT * FROM ent_near UNION ALL SELECT * FROM ent_alone;
CREATE VIEW special AS
    SELECT t, rid FROM rec_many GROUP BY t, rid HAVING count(*) > 1
    UNION SELECT coalesce(dt, t) AS t, rid FROM ent_near;
CREATE VIEW plain AS
    SELECT {_OUT} FROM rec_one r ANTI JOIN special s ON s.t = r.t AND s.rid = r.rid
    UNION ALL
    SELECT {_OUT} FROM rec_many r ANTI JOIN special s ON s.t = r.t AND s.rid = r.rid;
CREATE VIEW cand AS
    SELECT {_OUT} FROM rec_src r SEMI JOIN special s ON s.t = r.t AND s.rid = r.rid
    UNION ALL
    SELECT t, rid, {_DEC}, NULL::INTEGER, NULL::BIGINT, NULL::BIGINT FROM ent_src WHERE k = 'd';
CREATE VIEW late AS
    SELECT coalesce(dt, t) AS st, rid,
           arg_min(final_code, t) FILTER (WHERE final_code IS NOT NULL) AS f1,
           arg_min(answered_at, t) FILTER (WHERE answered_at IS NOT NULL) AS a1,
           arg_min(ended_at, t) FILTER (WHERE ended_at IS NOT NULL) AS e1
    FROM ent_src WHERE k = 'o' GROUP BY coalesce(dt, t), rid;
CREATE VIEW dec AS
    SELECT t, rid, {_DEC}, max(final_code) AS f0, max(answered_at) AS a0, max(ended_at) AS e0
    FROM cand GROUP BY t, rid, {_DEC};
CREATE VIEW joined AS
    SELECT d.t, d.rid, {", ".join("d." + f for f in DECISION_FIELDS)},
           coalesce(d.f0, l.f1) AS final_code, coalesce(d.a0, l.a1) AS answered_at,
           coalesce(d.e0, l.e1) AS ended_at
    FROM dec d LEFT JOIN late l ON l.st = d.t AND l.rid = d.rid;
CREATE VIEW audit_raw AS SELECT * FROM plain UNION ALL SELECT * FROM joined;
CREATE VIEW decisions AS
    SELECT t, rid, {_DEC} FROM rec_src UNION ALL SELECT t, rid, {_DEC} FROM ent_src WHERE k = 'd';
CREATE VIEW callees AS
    SELECT t, callee FROM idx_src UNION ALL SELECT t, callee FROM rec_unindexed
    UNION ALL SELECT t, callee FROM ent_src WHERE k = 'd';
CREATE VIEW orphans AS
    SELECT DISTINCT e.* FROM ent_src e
    WHERE e.k = 'o' AND NOT EXISTS (SELECT 1 FROM decisions c WHERE c.t = coalesce(e.dt, e.t) AND c.rid = e.rid);
CREATE VIEW audit_all AS
    SELECT rid AS record_id, make_timestamp(t) AS time, t AS time_us, {_DEC},
           final_code, make_timestamp(answered_at) AS answered_at, make_timestamp(ended_at) AS ended_at
    FROM audit_raw;
CREATE VIEW audit AS SELECT * FROM audit_all;
"""

# A handful of records (step two of a look-up): every one goes through the join, each file is
# read once (no plain / special split to compute).
_VIEWS_FEW = (_VIEWS
              .replace("CREATE VIEW audit_raw AS SELECT * FROM plain UNION ALL SELECT * FROM joined;",
                       "CREATE VIEW audit_raw AS SELECT * FROM joined;")
              .replace(f"SELECT {_OUT} FROM rec_src r SEMI JOIN special s ON s.t = r.t AND s.rid = r.rid",
                       f"SELECT {_OUT} FROM rec_src"))
assert _VIEWS_FEW.count("SELECT * FROM joined;") == 1 and "SEMI JOIN" not in _VIEWS_FEW

# The columns of the ``audit`` view, for the documentation and ``cag audit query --columns``.
AUDIT_VIEW_COLUMNS = (
    ("record_id", "VARCHAR", "the record's id (X-Admission-Id on the forwarded INVITE)"),
    ("time", "TIMESTAMP", "decision time, UTC, µs"),
    ("time_us", "BIGINT", "the same in µs since the epoch (filter on it for speed)"),
    ("call_id", "VARCHAR", "SIP Call-ID"),
    ("trunk_id", "VARCHAR", ""), ("enterprise_id", "VARCHAR", ""),
    ("caller", "VARCHAR", "calling number, normalised when it could be"),
    ("callee", "VARCHAR", "called number, normalised when it could be"),
    ("decision", "VARCHAR", "admit | reject | would_reject"), ("reason", "VARCHAR", ""),
    ("sip_code", "INTEGER", "the response a rejection sent (0: admitted)"),
    ("consent_token", "VARCHAR", ""), ("evidence_ref", "VARCHAR", ""),
    ("latency_us", "BIGINT", "decision latency"), ("node", "VARCHAR", ""), ("worker", "INTEGER", ""),
    ("final_code", "INTEGER", "final response of an admitted call"),
    ("answered_at", "TIMESTAMP", "UTC"), ("ended_at", "TIMESTAMP", "UTC"),
)


def _empty(fields: tuple[str, ...]) -> str:
    return "SELECT " + ", ".join(f"CAST(NULL AS {SQL_TYPES[f]}) AS {f}" for f in fields) + " LIMIT 0"


def _hour_key(p: Path) -> tuple[str, str]:
    return (p.parent.parent.name, p.parent.name)  # …/YYYY-MM-DD/HH/file: the same hour in any root


class Engine:
    """A DuckDB connection with the views above over ``records`` / ``entries`` Parquet files and
    JSON-lines files of entries (``ndjson``: the live stream, legacy segments).

    ``index``: the index files of (some of) the records files; ``times``: only the records
    decided at these times (the second step of a look-up: every view is then small, and the
    records files' row groups are chosen by their time statistics).
    """

    def __init__(
        self,
        records: list[Path],
        entries: list[Path],
        *,
        index: list[Path] = (),  # type: ignore[assignment]
        ndjson: list[Path] = (),  # type: ignore[assignment]
        times: list[int] | None = None,
        call_id: str | None = None,
        callee: frozenset[str] | None = None,
        threads: int | None = None,
        memory_limit: str | None = None,
        temp_directory: Path | None = None,
    ) -> None:
        self.con = duckdb.connect(":memory:")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        if memory_limit:
            self.con.execute(f"SET memory_limit = {lit(memory_limit)}")
        if temp_directory is not None:
            self.con.execute(f"SET temp_directory = {lit(str(temp_directory))}")
        self.con.execute("SET preserve_insertion_order = false")
        # every view binds the same files: read each footer once per connection
        self.con.execute("SET parquet_metadata_cache = true")
        self._files = (records, entries, list(ndjson))
        self._call_id = call_id
        have = {p.name for p in index}
        indexed = [r for r in records if r.name.replace(".records.parquet", ".index.parquet") in have]
        missing = [r for r in records if r not in indexed]
        idx = []
        old_idx = [p for p in index if layout(p) < 2]
        if old_idx:
            idx.append(f"SELECT callee, t FROM read_parquet({_file_list(old_idx)})")
        if len(old_idx) < len(index):
            idx.append(callee_index_sql([p for p in index if layout(p) >= 2], callee))
        self.con.execute(f"CREATE VIEW idx_src AS {' UNION ALL '.join(idx) or _empty(('callee', 't'))}")
        rec = []
        for v in (0, 1, 2):
            files = [r for r in missing if layout(r) == v]
            if files:
                col = _CALLEE_TEXT if v >= 2 else "callee"
                rec.append(f"SELECT {col} AS callee, t FROM read_parquet({_file_list(files)})")
        self.con.execute(f"CREATE VIEW rec_unindexed AS {' UNION ALL '.join(rec) or _empty(('callee', 't'))}")
        self._define(times)

    def restrict(self, times: list[int]) -> None:
        """From now on, only the records decided at these times (step two of a look-up): the
        views are redefined with ``t IN (…)`` so DuckDB reads and joins only them."""
        self._define(times)

    def _define(self, times: list[int] | None) -> None:
        records, entries, ndjson = self._files
        only = ent_only = ""
        if times is not None:
            ts = ", ".join(str(int(t)) for t in times) or "NULL"
            only, ent_only = f" WHERE t IN ({ts})", f" WHERE coalesce(dt, t) IN ({ts})"
        per_hour: dict[tuple[str, str], int] = {}
        for f in records:
            per_hour[_hour_key(f)] = per_hour.get(_hour_key(f), 0) + 1
        one = [f for f in records if per_hour[_hour_key(f)] == 1]
        many = [f for f in records if per_hour[_hour_key(f)] > 1]
        packed_only = only
        if self._call_id is not None:
            cond = call_id_filter(self._call_id)
            packed_only = f"{only} AND {cond}" if only else f" WHERE {cond}"
        for name, files in (("rec_one", one), ("rec_many", many)):
            plain = [f for f in files if not is_packed(f)]
            parts = []
            if plain:
                parts.append(f"SELECT {', '.join(RECORD_FIELDS)} FROM read_parquet({_file_list(plain)}){only}")
            for v in (1, 2):
                packed = [f for f in files if is_packed(f) and layout(f) == v]
                if packed:
                    parts.append(f"SELECT {unpack_sql(v)} FROM read_parquet({_file_list(packed)}){packed_only}")
            src = " UNION ALL ".join(parts) or _empty(RECORD_FIELDS)
            self.con.execute(f"CREATE OR REPLACE VIEW {name} AS {src}")
        near = [f for f in entries if _hour_key(f) in per_hour]
        alone = [f for f in entries if _hour_key(f) not in per_hour]
        for name, files, js in (("ent_near", near, ndjson), ("ent_alone", alone, ())):
            parts = []
            cols = ", ".join(FIELDS)
            if files:
                parts.append(f"SELECT {cols} FROM read_parquet({_file_list(files)}){ent_only}")
            if js:
                struct = "{" + ", ".join(f"{lit(f)}: {lit(SQL_TYPES[f])}" for f in FIELDS) + "}"
                parts.append(f"SELECT {cols} FROM read_json({_file_list(list(js))}, "
                             f"format = 'newline_delimited', columns = {struct}){ent_only}")
            self.con.execute(f"CREATE OR REPLACE VIEW {name} AS " + (" UNION ALL ".join(parts) or _empty(FIELDS)))
        views = _VIEWS if times is None else _VIEWS_FEW
        self.con.execute(views.replace("CREATE VIEW", "CREATE OR REPLACE VIEW"))

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def where(since_us: int | None, until_us: int | None, caller: frozenset[str] = frozenset(),
          callee: frozenset[str] = frozenset(), call_id: str | None = None) -> str:
    """A WHERE clause over ``audit_raw`` (literals inlined, so DuckDB prunes on them)."""
    conds = []
    if since_us is not None:
        conds.append(f"t >= {int(since_us)}")
    if until_us is not None:
        conds.append(f"t < {int(until_us)}")
    if caller:
        conds.append(f"caller IN ({', '.join(lit(c) for c in sorted(caller))})")
    if callee:
        conds.append(f"callee IN ({', '.join(lit(c) for c in sorted(callee))})")
    if call_id is not None:
        conds.append(f"call_id = {lit(call_id)}")
    return " AND ".join(conds) if conds else "true"


# ---------------------------------------------------------------- rows as export writes them
def _ts(src: str) -> str:
    return (f"CASE WHEN {src} IS NULL THEN 'null' ELSE "
            f"'\"' || strftime(make_timestamp({src}), '%Y-%m-%dT%H:%M:%S.%f') || '+00:00\"' END")


def _json_line_sql() -> str:
    parts = []
    for i, col in enumerate(COLUMNS):
        src = _SRC.get(col, col)
        if col in _TIMES:
            v = _ts(src)
        elif col in _INTS:
            v = f"coalesce(CAST({src} AS VARCHAR), 'null')"
        else:
            v = f"coalesce(CAST(to_json({src}) AS VARCHAR), 'null')"
        parts.append(f"'{'{' if i == 0 else ','}\"{col}\":' || {v}")
    return " || ".join(parts) + " || '}' || chr(10)"


def _csv_specials() -> str:
    """The characters that make Python's csv writer (as export configures it) quote a field."""
    out = []
    for ch in ",\"\n\r\t ;'":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(["a", f"x{ch}y"])
        if buf.getvalue() != f"a,x{ch}y\n":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch, ch))
    return "[" + "".join(out) + "]"


def _csv_line_sql() -> str:
    pattern = _csv_specials()
    parts = []
    for col in COLUMNS:
        src = _SRC.get(col, col)
        if col in _TIMES:
            v = (f"CASE WHEN {src} IS NULL THEN '' ELSE "
                 f"strftime(make_timestamp({src}), '%Y-%m-%dT%H:%M:%S.%f') || '+00:00' END")
        elif col in _INTS:
            v = f"coalesce(CAST({src} AS VARCHAR), '')"
        else:
            v = (f"CASE WHEN {src} IS NULL THEN '' WHEN regexp_matches({src}, {lit(pattern)}) "
                 f"THEN '\"' || replace({src}, '\"', '\"\"') || '\"' ELSE {src} END")
        parts.append(v)
    return " || ',' || ".join(parts) + " || chr(10)"


LINE_SQL = {"jsonl": _json_line_sql(), "csv": _csv_line_sql()}
CSV_HEADER = ",".join(COLUMNS) + "\n"
# DuckDB writes \u000B where Python writes \u000b (the only difference found, tests/unit/audit).
_UPPER_ESCAPE = re.compile(r"\\u00[01][A-F]")


def write_lines(con: Any, sql_where: str, fmt: str, write: Callable[[bytes], Any], batch: int = 65_536) -> int:
    """Run the export query and write its lines in time order; returns the rows written."""
    cur = con.execute(f"SELECT {LINE_SQL[fmt]} AS line FROM audit_raw WHERE {sql_where} ORDER BY t, rid")
    n = 0
    while True:
        chunk = cur.fetchmany(batch)
        if not chunk:
            return n
        text = "".join([r[0] for r in chunk])
        if fmt == "jsonl" and _UPPER_ESCAPE.search(text):
            text = "".join(json.dumps(json.loads(r[0]), ensure_ascii=False, separators=(",", ":")) + "\n"
                           if _UPPER_ESCAPE.search(r[0]) else r[0] for r in chunk)
        write(text.encode())
        n += len(chunk)


def rows(con: Any, sql_where: str) -> list[Entry]:
    """Joined records as export rows (``record.COLUMNS``, ISO times), in time order."""
    cur = con.execute(f"SELECT * FROM audit_raw WHERE {sql_where} ORDER BY t, rid")
    names = [d[0] for d in cur.description]
    return [row_of(dict(zip(names, r, strict=True))) for r in cur.fetchall()]


def row_of(r: dict[str, Any]) -> Entry:
    row: Entry = {}
    for c in COLUMNS:
        src = _SRC.get(c, c)
        row[c] = iso_us(r[src]) if c in _TIMES else r[src]
    return row


def stream_text(out: IO[str]) -> Callable[[bytes], Any]:
    """A byte writer for a text stream (its buffer when it has one)."""
    buf = getattr(out, "buffer", None)
    if buf is not None:
        out.flush()
        return buf.write  # type: ignore[no-any-return]
    return lambda b: out.write(bytes(b).decode())


