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
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from policy.model import KIND_KEYS, KIND_MODELS, Record
from policy.numbers import normalize_number

__all__ = [
    "CSV_SUFFIXES",
    "JSONL_SUFFIXES",
    "MAX_ERRORS",
    "NUMBER_FIELDS",
    "LoadError",
    "RowError",
    "load_file",
    "required_columns",
    "validate_row",
]

CSV_SUFFIXES = frozenset({".csv"})
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})

# Error lines shown before "and N more": enough to see a pattern, short enough for a terminal.
MAX_ERRORS = 100

# Fields compared exactly against a normalised number by the hot path.
NUMBER_FIELDS: dict[str, str] = {"filings": "number", "consents": "callee", "dnc": "number"}

# Chinese mobile numbers already in E.164 are the bulk of a consent file and
# are their own normal form; skipping phonenumbers for them keeps a
# million-row load in seconds rather than minutes.
_CN_MOBILE_E164 = re.compile(r"\+861[3-9]\d{9}")

_VALUE_ERROR_PREFIXES = ("Value error, ", "Assertion failed, ")


class LoadError(Exception):
    """A file that cannot be loaded; ``errors`` are ``FILE:LINE: reason`` lines, all of them (capped)."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class RowError(ValueError):
    """One row (or one CLI-built record) is invalid; ``reasons`` name the column at fault."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


def required_columns(kind: str) -> list[str]:
    """Columns a file must have: the fields with no default (the others may be left out entirely)."""
    model = KIND_MODELS[kind]
    return [name for name, f in model.model_fields.items() if f.is_required()]


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


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


def _clean(kind: str, row: dict[str, Any], region: str) -> dict[str, Any]:
    """Drop empty cells (→ defaults) and normalise the number column; raises RowError."""
    data: dict[str, Any] = {}
    for k, v in row.items():
        if v.__class__ is str:
            v = v.strip()
            if not v:
                continue
        elif v is None:
            continue
        data[k] = v
    field = NUMBER_FIELDS.get(kind)
    if field is not None and field in data:
        raw = data[field]
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = str(raw)
        if not isinstance(raw, str):
            raise RowError([f"{field}: expected a phone number, got {_short(raw)}"])
        if _CN_MOBILE_E164.fullmatch(raw) and region == "CN":
            norm: str | None = raw
        else:
            norm = normalize_number(raw, region)
        if norm is None:
            raise RowError([f"{field}: not a phone number {_short(raw)}"])
        data[field] = norm
    return data


def validate_row(kind: str, row: dict[str, Any], *, region: str = "CN") -> Record:
    """One row (CSV cells or a JSON object, or CLI options) → a record; raises RowError.

    Shared by the file loader and the one-off CLI commands (``consent
    grant``, ``dnc add``) so both apply exactly the same rules.
    """
    model = KIND_MODELS[kind]
    data = _clean(kind, row, region)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise RowError(_reasons(e)) from None


def _lines(path: Path, errors: _Errors) -> Iterator[str]:
    """Decoded physical lines (line endings kept, for csv); a BOM is dropped; bad UTF-8 is an error."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                errors.add(n, f"not valid UTF-8 (byte {e.start + 1})")
                errors.bad_lines.add(n)
                yield raw.decode("utf-8", errors="replace")


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


def _csv_rows(path: Path, kind: str, errors: _Errors) -> Iterator[tuple[int, dict[str, str]]]:
    """(line of the row's start, {column: cell}) for each data row; header problems end the file."""
    reader = csv.reader(_lines(path, errors))
    last = 0  # physical lines consumed so far
    header: list[str] | None = None
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
        yield start, {h: c for h, c in zip(header, cells, strict=True) if h}
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


def _jsonl_rows(path: Path, errors: _Errors) -> Iterator[tuple[int, dict[str, Any]]]:
    for n, line in enumerate(_lines(path, errors), start=1):
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


def load_file(kind: str, path: Path, *, region: str = "CN") -> list[Record]:
    """Read and validate a whole file of ``kind``; return its records or raise LoadError.

    Raises LoadError listing every bad row (``FILE:LINE: reason``, capped at
    MAX_ERRORS plus a count) and nothing is returned for a partly bad file,
    which is what lets the caller promise all-or-nothing. An empty result
    (header only) is valid: with ``--replace`` it empties the kind.
    """
    if kind not in KIND_MODELS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KIND_MODELS)}")
    path = Path(path)
    name = str(path)
    errors = _Errors(name)
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES | JSONL_SUFFIXES:
        errors.add(1, f"unknown file type {suffix or '(none)'!r}: use .csv, .jsonl or .ndjson")
        errors.raise_if_any()
    if not path.is_file():
        errors.add(1, "no such file" if not path.exists() else "not a regular file")
        errors.raise_if_any()

    key_field = KIND_KEYS[kind]
    first_line: dict[Any, int] = {}
    records: list[Record] = []
    rows = _csv_rows(path, kind, errors) if suffix in CSV_SUFFIXES else _jsonl_rows(path, errors)
    try:
        for line, row in rows:
            try:
                rec = validate_row(kind, row, region=region)
            except RowError as e:
                errors.add(line, "; ".join(e.reasons))
                continue
            key = getattr(rec, key_field)
            prev = first_line.setdefault(key, line)
            if prev != line:
                errors.add(line, f"duplicate {key_field} {_short(key)} (first on line {prev})")
                continue
            if not errors.count:
                records.append(rec)  # stop collecting once the file is known bad
    except OSError as e:
        errors.add(1, f"cannot read: {e.strerror or e}")
    errors.raise_if_any()
    return records
