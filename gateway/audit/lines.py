"""Export rows as bytes, column-wise: the JSON lines / CSV that ``export`` writes, built by Arrow.

``json.dumps(row, ensure_ascii=False, separators=(",", ":"))`` and
``csv.DictWriter(..., lineterminator="\\n")`` of ``record.join``'s rows, byte
for byte (tests/unit/audit/test_lines.py), without a Python call per row: a
column of strings is quoted by concatenation when none of its values needs
an escape (checked on its data buffer), times are formatted with integer
arithmetic in numpy, and the pieces of a line are joined by one Arrow kernel.
A column that does hold a character needing an escape is formatted by
Python's own ``json`` / ``csv`` for that column only.
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

_PAIRS = np.frombuffer(b"".join(f"{i:02d}".encode() for i in range(100)), dtype=np.uint8).reshape(100, 2)

# Bytes that need an escape in JSON (control characters, quote, backslash), given as the bytes
# that do not: ``bytes.translate`` deletes those and what is left is the trouble (fastest check).
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


def _fixed(block: np.ndarray) -> pa.Array:
    """(n, width) uint8 → n strings of ``width`` bytes (zero copy)."""
    n, width = block.shape
    block = np.ascontiguousarray(block)
    offsets = np.arange(n + 1, dtype=np.int64) * width
    return pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(block)])


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


def iso(us: np.ndarray, quote: bool) -> pa.Array:
    """µs since the epoch → ``YYYY-MM-DDTHH:MM:SS.ffffff+00:00`` (``record.iso_us``), vectorised.

    The date is computed once per distinct day (a range holds few), the time of day per value.
    """
    us = us.astype(np.int64, copy=False)
    days = us // 86_400_000_000
    uniq, which = np.unique(days, return_inverse=True)
    date = _dates(uniq)[which]
    rem = us - days * 86_400_000_000
    secs = rem // 1_000_000
    f = rem - secs * 1_000_000
    n = len(us)

    def lit(s: bytes) -> np.ndarray:
        return np.broadcast_to(np.frombuffer(s, dtype=np.uint8), (n, len(s)))

    q = b'"' if quote else b""
    parts = [
        lit(q) if quote else None, date, lit(b"T"), _PAIRS[secs // 3600], lit(b":"), _PAIRS[secs // 60 % 60],
        lit(b":"), _PAIRS[secs % 60], lit(b"."), _PAIRS[f // 10_000], _PAIRS[f // 100 % 100], _PAIRS[f % 100],
        lit(b"+00:00" + q),
    ]
    return _fixed(np.concatenate([p for p in parts if p is not None], axis=1))


def _lit(s: str) -> pa.Scalar:
    return pa.scalar(s, pa.large_string())


def _needs(arr: pa.Array, ok: bytes) -> bool:
    """Does any value of a string column hold a byte not in ``ok``?"""
    data = arr.buffers()[2]
    if data is None:
        return False
    return bool(data.to_pybytes().translate(None, ok))


def _string_piece(arr: pa.Array, fmt: str) -> tuple[pa.Array | None, bool]:
    """A string column → (its formatted values, or None for "as they are"; quoted?)."""
    if fmt == "jsonl":
        if _needs(arr, _JSON_OK):
            vals = [json.dumps(v, ensure_ascii=False) if v is not None else "null" for v in arr.to_pylist()]
            return pa.array(vals, pa.large_string()), True
        if arr.null_count:
            quoted = pc.binary_join_element_wise(_lit('"'), arr, _lit('"'), _lit(""))
            return pc.fill_null(quoted, _lit("null")), True
        return None, False
    if _needs(arr, _CSV_OK):
        out = []
        for v in arr.to_pylist():
            buf = io.StringIO()
            csv.writer(buf, lineterminator="").writerow(["", "" if v is None else v])
            out.append(buf.getvalue()[1:])
        return pa.array(out, pa.large_string()), True
    if arr.null_count:
        return pc.fill_null(arr, _lit("")), True
    return None, False


def export_bytes(table: pa.Table, fmt: str) -> pa.Buffer | bytes:
    """Rows of ``engine``'s ``audit_raw`` (any order) → the bytes export writes for them, in order
    (decision time, record id): the lines are built in the table's order, then only they are sorted."""
    if not table.num_rows:
        return b""
    line = format_lines(table, fmt)
    if table.num_rows > 1:
        line = line.take(pc.sort_indices(table, sort_keys=[("t", "ascending"), ("rid", "ascending")]))
    return _data(line)


def format_lines(table: pa.Table, fmt: str) -> pa.Array:
    """Rows of ``engine``'s ``audit_raw`` → one line each, in the table's order."""
    null = "null" if fmt == "jsonl" else ""
    pieces: list[Any] = []

    def literal(s: str) -> None:
        if pieces and isinstance(pieces[-1], str):
            pieces[-1] += s
        else:
            pieces.append(s)

    for i, col in enumerate(COLUMNS):
        arr = table.column(_SRC.get(col, col)).combine_chunks()
        if pa.types.is_string(arr.type):
            arr = arr.cast(pa.large_string())
        if fmt == "jsonl":
            literal(("{" if i == 0 else ",") + f'"{col}":')
        elif i:
            literal(",")
        if col in _TIMES:
            values = iso(arr.fill_null(0).to_numpy(zero_copy_only=False), fmt == "jsonl")
            if arr.null_count:
                values = pc.if_else(pc.is_null(arr), _lit(null), values)
            pieces.append(values)
        elif pa.types.is_integer(arr.type):
            values = pc.cast(arr, pa.large_string())
            pieces.append(pc.fill_null(values, _lit(null)) if arr.null_count else values)
        else:
            if not pa.types.is_large_string(arr.type):
                arr = arr.cast(pa.large_string())
            formatted, _ = _string_piece(arr, fmt)
            if formatted is not None:
                pieces.append(formatted)
            elif fmt == "jsonl":
                literal('"')
                pieces.append(arr)
                literal('"')
            else:
                pieces.append(arr)
    literal("}\n" if fmt == "jsonl" else "\n")
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


