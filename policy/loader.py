"""CSV / JSONL files → validated policy records, with ``FILE:LINE: reason`` errors (SPEC §9).

Loading is all-or-nothing per file: an operator who loads 10,000 filings
with one typo must get every bad row named at once and nothing half-written,
so this module validates the whole file before anything touches Redis (it
does no I/O besides reading the file). The caller writes the returned
records in one go (``PolicyStore.put_records``).

Rules (SPEC §9): a header row (JSONL uses the same field names); extra
columns ignored; an empty cell means the field's default; lists are
space-separated; times ISO 8601; booleans ``true``/``false`` (also
``1``/``0``/``yes``/``no``, any case). Numbers that the gateway compares
exactly (filings, consent callees, DNC) are normalised here with
``normalize_number`` so the stored form is the one the hot path looks up.

Line numbers are physical: the CSV header row is line 1, JSONL line N is
line N, and a quoted CSV cell spanning lines is reported at the line where
its row starts. Files are read as a stream (bytes line by line), so a
million-row consent file costs the records and a key set, nothing quadratic.
Decoding bytes and cells (encodings, Excel numbers, times) is policy/decode.py.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from policy.decode import (
    _CN_MOBILE_E164,
    _FAST,
    RowError,
    _Lines,
    _short,
    detect_encoding,
    excel_number,
    parse_time,
)
from policy.layout import dnc_value, pack_consent
from policy.model import KIND_KEYS, KIND_MODELS, Consent, DncEntry, Record
from policy.numbers import normalize_number

__all__ = [
    "CSV_SUFFIXES",
    "JSONL_SUFFIXES",
    "MAX_ERRORS",
    "NUMBER_FIELDS",
    "FileStream",
    "LoadError",
    "RowError",
    "detect_encoding",
    "duplicate_lines",
    "excel_number",
    "load_file",
    "parse_time",
    "required_columns",
    "validate_row",
]

CSV_SUFFIXES = frozenset({".csv"})
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})

# Error lines shown before "and N more": enough to see a pattern, short enough for a terminal.
MAX_ERRORS = 100

# Fields compared exactly against a normalised number by the hot path.
NUMBER_FIELDS: dict[str, str] = {"filings": "number", "consents": "callee", "dnc": "number"}

_VALUE_ERROR_PREFIXES = ("Value error, ", "Assertion failed, ")


class LoadError(Exception):
    """A file that cannot be loaded; ``errors`` are ``FILE:LINE: reason`` lines, all of them (capped)."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def required_columns(kind: str) -> list[str]:
    """Columns a file must have: the fields with no default (the others may be left out entirely)."""
    model = KIND_MODELS[kind]
    return [name for name, f in model.model_fields.items() if f.is_required()]


def _reasons(err: ValidationError) -> list[str]:
    """pydantic's report → short reasons naming the column, e.g. ``max_cps: Input should be a valid integer``."""
    out: list[str] = []
    for e in err.errors(include_url=False):
        msg = str(e.get("msg", "invalid"))
        for prefix in _VALUE_ERROR_PREFIXES:
            if msg.startswith(prefix):
                msg = msg[len(prefix) :]
        loc = ".".join(str(p) for p in e.get("loc", ()))
        etype = e.get("type", "")
        text = f"{loc}: {msg}" if loc else msg
        if etype not in ("missing", "value_error") and "input" in e and not isinstance(e["input"], dict):
            text += f" (got {_short(e['input'])})"
        out.append(text)
    return out or ["invalid record"]


# Time columns of each kind: read with ``parse_time`` (offset-less times in the load's zone).
TIME_FIELDS: dict[str, tuple[str, ...]] = {
    "consents": ("granted_at", "expires_at", "revoked_at"),
    "dnc": ("registered_at",),
    "enterprises": ("suspended_at",),
}


def _clean(kind: str, row: dict[str, Any], region: str, tz: tzinfo | None = UTC) -> dict[str, Any]:
    """Drop empty cells (→ defaults), normalise the number column and read times; raises RowError."""
    data: dict[str, Any] = {}
    for k, v in row.items():
        if v.__class__ is str:
            v = v.strip()
            if not v:
                continue
        elif v is None:
            continue
        data[k] = v
    reasons: list[str] = []
    for f in TIME_FIELDS.get(kind, ()):
        if f in data:
            try:
                data[f] = parse_time(data[f], f, tz)
            except RowError as e:
                reasons += e.reasons
    field = NUMBER_FIELDS.get(kind)
    if field is not None and field in data:
        raw = data[field]
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = str(raw)
        if not isinstance(raw, str):
            raise RowError([*reasons, f"{field}: expected a phone number, got {_short(raw)}"])
        if _CN_MOBILE_E164.fullmatch(raw) and region == "CN":
            norm: str | None = raw
        else:
            try:
                raw = excel_number(raw, field)
            except RowError as e:
                raise RowError(reasons + e.reasons) from None
            norm = normalize_number(raw, region)
        if norm is None:
            reasons.append(f"{field}: not a phone number {_short(raw)}")
        data[field] = norm
    if reasons:
        raise RowError(reasons)
    return data


def validate_row(kind: str, row: dict[str, Any], *, region: str = "CN", tz: tzinfo | None = UTC) -> Record:
    """One row (CSV cells or a JSON object, or CLI options) → a record; raises RowError.

    Shared by the file loader and the one-off CLI commands (``consent
    grant``, ``dnc add``) so both apply exactly the same rules.
    """
    model = KIND_MODELS[kind]
    data = _clean(kind, row, region, tz)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise RowError(_reasons(e)) from None


class _Errors:
    """Collects ``FILE:LINE: reason`` messages, keeping the first MAX_ERRORS and counting the rest."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.shown: list[str] = []
        self.count = 0
        self.first_hidden = 0  # line of the first error not shown
        self.bad_lines: set[int] = set()

    def add(self, line: int, reason: str) -> None:
        self.count += 1
        if len(self.shown) < MAX_ERRORS:
            self.shown.append(f"{self.name}:{line}: {reason}")
        elif not self.first_hidden:
            self.first_hidden = line

    def raise_if_any(self) -> None:
        if self.count:
            lines = list(self.shown)
            if self.count > len(self.shown):
                # Still FILE:LINE-shaped, so scripts that parse every line keep working.
                hidden = self.count - len(self.shown)
                lines.append(f"{self.name}:{self.first_hidden}: ... and {hidden} more errors from this line on")
            raise LoadError(lines)


def _csv_rows(lines: _Lines, kind: str, errors: _Errors) -> Iterator[tuple[int, dict[str, str]]]:
    """(line of the row's start, {column: cell}) for each data row; header problems end the file."""
    reader = csv.reader(lines)
    last = 0  # physical lines consumed so far
    header: list[str] | None = None
    plain = True  # no unnamed column: rows map straight onto the header
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:  # e.g. a NUL byte; the reader cannot resynchronise
            errors.add(reader.line_num, f"bad CSV: {e}")
            return
        start, last = last + 1, reader.line_num
        if not cells or (not cells[0].strip() and all(not c.strip() for c in cells)):
            continue  # blank line (or only separators)
        if header is None:
            header = [c.strip().lower() for c in cells]
            if not _check_header(header, kind, start, errors):
                return
            plain = all(header)
            continue
        if len(cells) != len(header):
            errors.add(
                start,
                f"{len(cells)} cells but the header has {len(header)} columns "
                "(quote cells that contain commas)",
            )
            continue
        if errors.bad_lines and any(n in errors.bad_lines for n in range(start, last + 1)):
            continue
        yield start, dict(zip(header, cells, strict=True)) if plain else {h: c for h, c in zip(header, cells, strict=True) if h}
    if header is None:
        errors.add(1, f"no header row: a {kind} CSV starts with its column names")


def _check_header(header: list[str], kind: str, line: int, errors: _Errors) -> bool:
    """One clear message for a header the rows cannot be read against."""
    seen: set[str] = set()
    dups: list[str] = []
    for c in header:
        if c and c in seen and c not in dups:
            dups.append(c)
        seen.add(c)
    if dups:
        errors.add(line, f"duplicate column(s) in the header: {', '.join(dups)}")
    missing = [c for c in required_columns(kind) if c not in seen]
    if missing:
        errors.add(
            line,
            f"missing required column(s) for {kind}: {', '.join(missing)} "
            f"(header has: {', '.join(c for c in header if c) or 'nothing'})",
        )
    return not (dups or missing)


def _jsonl_rows(lines: _Lines, errors: _Errors) -> Iterator[tuple[int, dict[str, Any]]]:
    for n, line in enumerate(lines, start=1):
        if not line.strip() or n in errors.bad_lines:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            errors.add(n, f"invalid JSON: {e.msg} (column {e.colno})")
            continue
        if not isinstance(obj, dict):
            errors.add(n, f"expected a JSON object, got {type(obj).__name__}")
            continue
        yield n, {str(k).strip().lower(): v for k, v in obj.items()}


class FileStream:
    """One pass over a file: ``(line, item)`` for each valid row, errors collected on the way.

    Items are records for the reference kinds (and with ``as_records``) and,
    for ``dnc`` and ``consents``, the rows ``LayerWriter`` takes (built without pydantic on
    the common path: the same rules, ~10x faster; an unusual row goes through
    ``validate_row`` for its exact message). Memory: the current row, plus
    the key index of a reference kind (duplicate keys of ``dnc``/``consents``
    are found by Redis as the rows are written, then named by ``duplicate_lines``).
    """

    def __init__(
        self,
        kind: str,
        path: Path,
        *,
        region: str = "CN",
        tz: tzinfo | None = UTC,
        encoding: str | None = None,
        as_records: bool = False,
    ) -> None:
        if kind not in KIND_MODELS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KIND_MODELS)}")
        self.kind, self.path, self.region, self.tz = kind, Path(path), region, tz
        self.errors = _Errors(str(path))
        self.note: str | None = None
        self.size = 0
        self.rows = 0
        self.encoding = "utf-8"
        self.as_records = as_records or kind not in LAYERED
        suffix = self.path.suffix.lower()
        self._csv = suffix in CSV_SUFFIXES
        if suffix not in CSV_SUFFIXES | JSONL_SUFFIXES:
            self.errors.add(1, f"unknown file type {suffix or '(none)'!r}: use .csv, .jsonl or .ndjson")
        elif not self.path.is_file():
            self.errors.add(1, "no such file" if not self.path.exists() else "not a regular file")
        else:
            self.size = self.path.stat().st_size
            try:
                self.encoding, self.note = detect_encoding(self.path, encoding)
            except LookupError:
                self.errors.add(1, f"unknown encoding {encoding!r} (e.g. utf-8, gb18030, utf-16)")
            except OSError as e:
                self.errors.add(1, f"cannot read: {e.strerror or e}")
        self._lines = _Lines(self.path, self.errors, self.encoding)

    @property
    def consumed(self) -> int:
        """Bytes read so far (for the ETA)."""
        return self._lines.consumed

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        if self.errors.count:
            return
        kind = self.kind
        fast = None if self.as_records else _FAST.get(kind)
        key_field = KIND_KEYS[kind]
        first_line: dict[Any, int] | None = {} if self.as_records else None
        rows = _csv_rows(self._lines, kind, self.errors) if self._csv else _jsonl_rows(self._lines, self.errors)
        try:
            for line, row in rows:
                try:
                    item = fast(row, self.region, self.tz) if fast is not None else None
                    if item is None:
                        rec = validate_row(kind, row, region=self.region, tz=self.tz)
                        item = rec if self.as_records else _row_of(rec)
                except RowError as e:
                    self.errors.add(line, "; ".join(e.reasons))
                    continue
                if first_line is not None:
                    key = getattr(item, key_field)
                    prev = first_line.setdefault(key, line)
                    if prev != line:
                        self.errors.add(line, f"duplicate {key_field} {_short(key)} (first on line {prev})")
                        continue
                self.rows += 1
                yield line, item
        except OSError as e:
            self.errors.add(1, f"cannot read: {e.strerror or e}")

    def raise_if_any(self) -> None:
        self.errors.raise_if_any()


LAYERED = frozenset({"dnc", "consents"})


def _row_of(rec: Record) -> Any:
    if isinstance(rec, DncEntry):
        return (rec.number, dnc_value(rec.scope, rec.registered_at))
    assert isinstance(rec, Consent)
    return (
        rec.token,
        rec.callee,
        pack_consent(rec.enterprise_id, rec.purpose, rec.granted_at, rec.expires_at, rec.max_calls, rec.evidence_ref, rec.revoked_at),
    )


def duplicate_lines(stream: FileStream, keys: set[str]) -> list[str]:
    """Second pass (only after a load found duplicates): ``FILE:LINE: duplicate …`` for ``keys``.

    ``keys`` are candidates (Redis says a bucket got a field twice); only a
    key seen on two lines is reported, at its later lines.
    """
    again = FileStream(stream.kind, stream.path, region=stream.region, tz=stream.tz, encoding=stream.encoding)
    key_field = KIND_KEYS[stream.kind]
    first: dict[str, int] = {}
    out: list[str] = []
    for line, item in again:
        key = item[0]
        if key not in keys:
            continue
        prev = first.setdefault(key, line)
        if prev != line:
            out.append(f"{stream.path}:{line}: duplicate {key_field} {_short(key)} (first on line {prev})")
    return out


def load_file(
    kind: str, path: Path, *, region: str = "CN", tz: tzinfo | None = UTC, encoding: str | None = None
) -> list[Record]:
    """Read and validate a whole file of ``kind``; return its records or raise LoadError.

    For small files and tests (the CLI streams with ``FileStream``): every
    record is held in memory. Raises LoadError listing every bad row
    (``FILE:LINE: reason``, capped at MAX_ERRORS plus a count). An empty
    result (header only) is valid.
    """
    stream = FileStream(kind, path, region=region, tz=tz, encoding=encoding, as_records=True)
    records: list[Record] = []
    for _, item in stream:
        if not stream.errors.count:
            records.append(item)  # stop collecting once the file is known bad
    stream.raise_if_any()
    return records
