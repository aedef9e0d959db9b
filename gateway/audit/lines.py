"""Export rows as bytes, column-wise: the JSON lines / CSV that ``export`` writes, built by Arrow.

``json.dumps(row, ensure_ascii=False, separators=(",", ":"))`` and
``csv.DictWriter(..., lineterminator="\\n")`` of ``record.join``'s rows, byte
for byte (tests/unit/audit/test_lines.py), without a Python call per row:

- a column of strings is quoted by concatenation when none of its values
  needs an escape (checked on its data buffer); one that does is formatted
  by Python's own ``json`` / ``csv``, for that column only;
- times are formatted with integer arithmetic in numpy (the date once per
  distinct day), the keys around them in the same fixed-width block;
- neighbouring low-cardinality columns (trunk, enterprise; decision,
  reason, SIP code; node, worker, final code) are formatted once per distinct
  combination and taken by index;
- the pieces of a line are joined by one Arrow kernel.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gateway.audit.record import COLUMNS

_SRC = {"record_id": "rid", "time": "t"}
_TIMES = frozenset({"time", "answered_at", "ended_at"})
# Neighbouring columns formatted once per distinct combination (the caller is not one: a carrier
# has too many calling numbers for their combinations with trunks to repeat within a batch).
_LOW = frozenset({"trunk_id", "enterprise_id", "decision", "reason", "sip_code", "node", "worker", "final_code"})
_STR = pa.string()

_PAIRS = np.frombuffer(b"".join(f"{i:02d}".encode() for i in range(100)), dtype=np.uint8).reshape(100, 2)

# Bytes that need no escape in JSON (all but control characters, quote, backslash): ``translate``
# deleting those leaves what needs one (the fastest check there is).
_JSON_OK = bytes(b for b in range(256) if b >= 0x20 and b not in b'"\\')


def _csv_ok() -> bytes:
    """The bytes Python's csv writer (as export configures it) writes without quoting the field."""
    bad = set()
    for ch in ",\"\n\r\t ;'":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(["a", f"x{ch}y"])
        if buf.getvalue() != f"a,x{ch}y\n":
            bad.add(ord(ch))
    return bytes(b for b in range(256) if b not in bad)


_CSV_OK = _csv_ok()


def _csv_field(v: Any) -> str:
    buf = io.StringIO()  # the same line terminator as export's writer: it decides what is quoted
    csv.writer(buf, lineterminator="\n").writerow(["", "" if v is None else v])
    return buf.getvalue()[1:-1]


def _value(v: Any, fmt: str) -> str:
    """One value as export writes it (the reference the vectorised paths agree with)."""
    if fmt == "jsonl":
        return json.dumps(v, ensure_ascii=False)
    return _csv_field(v)


def _fixed(block: np.ndarray) -> pa.Array:
    """(n, width) uint8 → n strings of ``width`` bytes (zero copy)."""
    n, width = block.shape
    block = np.ascontiguousarray(block)
    offsets = np.arange(n + 1, dtype=np.int32) * width
    return pa.Array.from_buffers(_STR, n, [None, pa.py_buffer(offsets), pa.py_buffer(block)])


def _dates(days: np.ndarray) -> np.ndarray:
    """Days since the epoch → (n, 10) ``YYYY-MM-DD`` (H. Hinnant's civil-from-days)."""
    z = days + 719_468
    era = np.floor_divide(z, 146_097)
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = np.where(mp < 10, mp + 3, mp - 9)
    y = yoe + era * 400 + (m <= 2)
    dash = np.full((len(days), 1), ord("-"), dtype=np.uint8)
    return np.concatenate([_PAIRS[y // 100], _PAIRS[y % 100], dash, _PAIRS[m], dash, _PAIRS[d]], axis=1)


# "HH:MM:SS" of every second of a day, "ddd" of 0-999: gathered as whole items (numpy void
# dtypes), one copy per piece, into a block allocated once (twice as fast as digit pairs).
_HMS = np.array([[*f"{h:02d}:{m:02d}:{s:02d}".encode()] for h in range(24) for m in range(60) for s in range(60)],
                dtype=np.uint8).view("V8").reshape(-1)
_DIG3 = np.array([[*f"{i:03d}".encode()] for i in range(1000)], dtype=np.uint8).view("V3").reshape(-1)


def iso(us: np.ndarray, quote: bool, before: bytes = b"", after: bytes = b"") -> pa.Array:
    """µs since the epoch → ``YYYY-MM-DDTHH:MM:SS.ffffff+00:00`` (``record.iso_us``), vectorised,
    between the bytes ``before`` and ``after``. The date is computed once per distinct day."""
    us = us.astype(np.int64, copy=False)
    n = len(us)
    days = us // 86_400_000_000
    first, last = int(days.min(initial=0)), int(days.max(initial=0))
    if last - first < 100_000:  # a range of days: index a table of them (no sort)
        table = _dates(np.arange(first, last + 1, dtype=np.int64))
        idx = days - first
    else:
        uniq, which = np.unique(days, return_inverse=True)
        table, idx = _dates(uniq), which.reshape(-1)
    rem = us - days * 86_400_000_000
    secs = rem // 1_000_000
    f = rem - secs * 1_000_000
    q = b'"' if quote else b""
    head, tail = before + q, b"+00:00" + q + after
    a = len(head)
    out = np.empty((n, a + 26 + len(tail)), dtype=np.uint8)
    if a:
        out[:, :a] = np.frombuffer(head, dtype=np.uint8)
    out[:, a : a + 10] = np.ascontiguousarray(table).view("V10").reshape(-1)[idx].view(np.uint8).reshape(n, 10)
    out[:, a + 10] = ord("T")
    out[:, a + 11 : a + 19] = _HMS[secs].view(np.uint8).reshape(n, 8)
    out[:, a + 19] = ord(".")
    out[:, a + 20 : a + 23] = _DIG3[f // 1000].view(np.uint8).reshape(n, 3)
    out[:, a + 23 : a + 26] = _DIG3[f % 1000].view(np.uint8).reshape(n, 3)
    out[:, a + 26 :] = np.frombuffer(tail, dtype=np.uint8)
    return _fixed(out)


def _lit(s: str) -> pa.Scalar:
    return pa.scalar(s, _STR)


def _needs(arr: pa.Array, ok: bytes) -> bool:
    """Does any value of a string column hold a byte not in ``ok``?"""
    data = arr.buffers()[2]
    if data is None:
        return False
    return bool(data.to_pybytes().translate(None, ok))


def _group(arrs: list[pa.Array], keys: list[str], fmt: str) -> pa.Array | None:
    """Neighbouring low-cardinality columns → their text (keys included), formatted once per
    distinct combination; None when there are too many combinations for that to pay."""
    n = len(arrs[0])
    null = "null" if fmt == "jsonl" else ""
    codes = np.zeros(n, dtype=np.int64)
    texts_by_col: list[list[str]] = []
    sizes: list[int] = []
    for key, a in zip(keys, arrs, strict=True):
        d = a.dictionary_encode()
        size = len(d.dictionary) + 1
        if size > 4096 or (codes.max(initial=0) + 1) * size > 1 << 62:
            return None
        idx = pc.fill_null(d.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1
        codes = codes * size + idx
        texts_by_col.append([key + null] + [key + _value(v, fmt) for v in d.dictionary.to_pylist()])
        sizes.append(size)
    enc = pc.dictionary_encode(pa.array(codes))  # hashing: cheaper than np.unique's sort
    uniq, which = enc.dictionary.to_numpy(), enc.indices.to_numpy()
    if n >= 4096 and len(uniq) > n // 16:
        return None
    digits = []
    rest = uniq
    for size in reversed(sizes):
        digits.append((rest % size).tolist())
        rest = rest // size
    digits.reverse()
    texts = ["".join(parts) for parts in zip(*[[col[v] for v in ds] for col, ds in zip(texts_by_col, digits,
                                                                                        strict=True)],
                                             strict=True)]
    return pa.array(texts, _STR).take(pa.array(which))


def _string(arr: pa.Array, fmt: str) -> tuple[pa.Array, bool]:
    """A string column → (values, already formatted?): as they are when no value needs an escape
    (the caller quotes them), else formatted by Python."""
    if _needs(arr, _JSON_OK if fmt == "jsonl" else _CSV_OK):
        null = "null" if fmt == "jsonl" else ""
        return pa.array([null if v is None else _value(v, fmt) for v in arr.to_pylist()], _STR), True
    if arr.null_count:
        if fmt == "jsonl":
            quoted = pc.binary_join_element_wise(_lit('"'), arr, _lit('"'), _lit(""))
            return pc.fill_null(quoted, _lit("null")), True
        return pc.fill_null(arr, _lit("")), True
    return arr, False


def format_lines(table: pa.Table, fmt: str) -> pa.Array:
    """Rows of ``engine``'s ``audit_raw`` → one line each (string), in the table's order."""
    json_ = fmt == "jsonl"
    null = "null" if json_ else ""
    pieces: list[Any] = []

    def literal(s: str) -> None:
        if pieces and isinstance(pieces[-1], str):
            pieces[-1] += s
        else:
            pieces.append(s)

    def key(i: int, col: str) -> str:
        return (("{" if i == 0 else ",") + f'"{col}":') if json_ else ("," if i else "")

    def column(col: str) -> pa.Array:
        arr = table.column(_SRC.get(col, col)).combine_chunks()
        return arr.cast(_STR) if pa.types.is_large_string(arr.type) else arr

    i = 0
    while i < len(COLUMNS):
        col = COLUMNS[i]
        j = i
        while j < len(COLUMNS) and COLUMNS[j] in _LOW:
            j += 1
        if j - i >= 2:
            grouped = _group([column(c) for c in COLUMNS[i:j]], [key(k, COLUMNS[k]) for k in range(i, j)], fmt)
            if grouped is not None:
                pieces.append(grouped)
                i = j
                continue
        literal(key(i, col))
        arr = column(col)
        if col in _TIMES:
            if arr.null_count:
                # nulls as the earliest time there is (not 0: the table of days would span 1970 on)
                some = pc.min(arr).as_py()
                values = iso(arr.fill_null(0 if some is None else some).to_numpy(zero_copy_only=False), json_)
                pieces.append(pc.if_else(pc.is_null(arr), _lit(null), values))
            else:  # the key before and any literal after go into the same fixed-width block
                before = pieces.pop().encode() if pieces and isinstance(pieces[-1], str) else b""
                pieces.append(iso(arr.to_numpy(zero_copy_only=False), json_, before))
        elif pa.types.is_integer(arr.type):
            values = pc.cast(arr, _STR)
            pieces.append(pc.fill_null(values, _lit(null)) if arr.null_count else values)
        else:
            values, formatted = _string(arr, fmt)
            if formatted or not json_:
                pieces.append(values)
            else:
                literal('"')
                pieces.append(values)
                literal('"')
        i += 1
    literal("}\n" if json_ else "\n")
    args = [_lit(p) if isinstance(p, str) else p for p in pieces]
    return pc.binary_join_element_wise(*args, _lit(""))


def _data(arr: pa.Array) -> pa.Buffer | bytes:
    """The concatenated values of a string array (its data buffer between first and last offset,
    no copy)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    width = pa.int64() if pa.types.is_large_string(arr.type) else pa.int32()
    offsets = pa.Array.from_buffers(width, len(arr) + 1, [None, arr.buffers()[1]], offset=arr.offset)
    start, end = offsets[0].as_py(), offsets[-1].as_py()
    data = arr.buffers()[2]
    return b"" if data is None else data.slice(start, end - start)


def batch_bytes(table: pa.Table, fmt: str) -> pa.Buffer | bytes:
    """Rows already in order → the bytes export writes for them."""
    return _data(format_lines(table, fmt)) if table.num_rows else b""
