"""Reading a data file's bytes and cells: encodings, Excel's numbers, times, the common rows fast.

The part of ``policy.loader`` that knows what Excel and Chinese Windows do
to a file: ``detect_encoding`` and ``_Lines`` (bytes → physical lines),
``excel_number`` (a phone number Excel turned into a float),
``parse_time`` (the time forms operators write), and the consent/DNC rows
decoded without pydantic (``_FAST``; an unusual row goes through
``validate_row`` for its exact message). ``RowError`` is raised by all of
them and re-exported by ``policy.loader``.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack

from policy.layout import dnc_value

if TYPE_CHECKING:
    from policy.loader import _Errors


class RowError(ValueError):
    """One row (or one CLI-built record) is invalid; ``reasons`` name the column at fault."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


# Chinese mobile numbers already in E.164 are the bulk of a consent file and
# are their own normal form; skipping phonenumbers for them keeps a
# million-row load in seconds rather than minutes.
_CN_MOBILE_E164 = re.compile(r"\+861[3-9]\d{9}")

_EXCEL_SCI = re.compile(r"([0-9])(?:\.([0-9]+))?[eE]\+?([0-9]{1,2})")
_EXCEL_FLOAT = re.compile(r"([0-9]+)\.0+")
_DIGITS = re.compile(r"[0-9]+")


def excel_number(raw: str, field: str) -> str:
    """Undo what Excel does to a phone-number column, or say exactly what it did.

    ``13800138000.0`` (a number cell saved with decimals) is the number;
    scientific notation is the number only when every digit survived
    (``1.3800138000E+10`` → ``13800138000``); ``1.38001E+10`` was rounded to
    six digits for display, and no reader can bring the others back (even
    trailing zeros may be rounding), so the row names that.
    """
    m = _EXCEL_FLOAT.fullmatch(raw)
    if m:
        return m.group(1)
    m = _EXCEL_SCI.fullmatch(raw)
    if not m:
        return raw
    lead, frac, exp = m.group(1), m.group(2) or "", int(m.group(3))
    if len(frac) == exp:
        return lead + frac
    if len(frac) > exp:
        raise RowError([f"{field}: {raw!r} is not a whole number (Excel scientific notation)"])
    raise RowError(
        [
            f"{field}: {raw!r} is Excel scientific notation with only {1 + len(frac)} of {exp + 1} digits "
            "left: the number is lost; format the column as Text in Excel and export again"
        ]
    )


def parse_time(value: Any, field: str, tz: tzinfo | None) -> datetime | None:
    """A time cell → an aware datetime; raises RowError naming the accepted forms.

    Accepted: ISO 8601 (``2026-12-07T09:00:00+08:00``, ``2026-12-07 09:00``,
    ``2026/12/07 09:00`` as Excel writes it), ``20261207`` (a date),
    ``20261207090000``, and epoch seconds (10 digits) or milliseconds (13).
    A time without an offset is in ``tz`` (the deployment's ``default_tz``
    unless ``--tz`` says otherwise); ``tz=None`` refuses it instead.
    """
    if value is None or isinstance(value, datetime):
        t = value
    elif isinstance(value, bool):
        raise RowError([f"{field}: expected a time, got {_short(value)}"])
    elif isinstance(value, int | float):
        t = _epoch(str(int(value)), field)
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if _DIGITS.fullmatch(text):
            if len(text) == 8:
                t = _strptime(text, "%Y%m%d", field)
            elif len(text) == 14:
                t = _strptime(text, "%Y%m%d%H%M%S", field)
            else:
                t = _epoch(text, field)
        else:
            iso = text.replace("/", "-") if text[:4].isdigit() and text[4:5] == "/" else text
            try:
                t = datetime.fromisoformat(iso)
            except ValueError:
                raise RowError([f"{field}: not a time {_short(value)} ({_TIME_FORMS})"]) from None
    else:
        raise RowError([f"{field}: expected a time, got {_short(value)}"])
    if t is not None and t.tzinfo is None:
        if tz is None:
            raise RowError(
                [f"{field}: {_short(value)} has no UTC offset: add one (e.g. +08:00) or load with --tz ZONE"]
            )
        t = t.replace(tzinfo=tz)
    return t


_TIME_FORMS = "use ISO 8601 such as 2026-12-07T09:00:00+08:00 or 2026-12-07 09:00, or 20261207"


def _strptime(text: str, fmt: str, field: str) -> datetime:
    try:
        return datetime.strptime(text, fmt)
    except ValueError:
        raise RowError([f"{field}: not a valid date/time {text!r} ({_TIME_FORMS})"]) from None


def _epoch(text: str, field: str) -> datetime:
    if len(text) == 10:
        return datetime.fromtimestamp(int(text), UTC)
    if len(text) == 13:
        return datetime.fromtimestamp(int(text) / 1000, UTC)
    raise RowError([f"{field}: {text!r} is not a time: digits only are read as 20261207 (a date), "
                    "20261207090000, or epoch seconds (10 digits) / milliseconds (13)"])


# Encodings read line by line as bytes: ASCII-compatible, so b"\n" always ends a line.
_BYTE_LINE_CODECS = frozenset({"utf-8", "gb18030", "gbk", "gb2312", "big5", "latin-1", "ascii"})


def detect_encoding(path: Path, requested: str | None = None) -> tuple[str, str | None]:
    """(codec, note for the operator): ``requested`` if given, else BOM, then UTF-8, then GB18030.

    Excel in China saves "CSV" as GBK/GB18030 and "Unicode text" as UTF-16;
    a wrong guess turns every Chinese name into an error, so the choice is
    always said when it is not UTF-8.
    """
    if requested:
        name = codecs.lookup(requested).name
        return name, None
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8", None
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16", f"{path}: reading as UTF-16 (byte-order mark)"
    if len(head) >= 4 and head[1:4:2] == b"\0\0" and head[0] and head[2]:
        return "utf-16-le", f"{path}: reading as UTF-16 little-endian (no byte-order mark; --encoding to override)"
    if len(head) >= 4 and head[0:4:2] == b"\0\0" and head[1] and head[3]:
        return "utf-16-be", f"{path}: reading as UTF-16 big-endian (no byte-order mark; --encoding to override)"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        return "utf-8", None
    except UnicodeDecodeError:
        pass
    try:
        codecs.getincrementaldecoder("gb18030")().decode(head, final=False)
    except UnicodeDecodeError:
        return "utf-8", None  # neither: report the bad lines as UTF-8 errors
    return "gb18030", f"{path}: not UTF-8; reading it as GB18030 (GBK), as Excel saves CSV in China (--encoding to override)"


class _Lines:
    """Decoded physical lines (endings kept, for csv); a BOM is dropped; undecodable lines are errors.

    Counts the bytes consumed, for the progress line's ETA.
    """

    def __init__(self, path: Path, errors: _Errors, encoding: str = "utf-8") -> None:
        self.path, self.errors, self.encoding = path, errors, encoding
        self.consumed = 0

    def __iter__(self) -> Iterator[str]:
        enc = self.encoding
        if enc.replace("_", "-") in _BYTE_LINE_CODECS:
            yield from self._bytes_lines(enc)
        else:
            yield from self._text_lines(enc)

    def _bytes_lines(self, enc: str) -> Iterator[str]:
        """Blocks of ~1 MiB decoded at once (a line at a time only in a block that fails to decode)."""
        n = 0
        rest = b""
        first = True
        with open(self.path, "rb") as f:
            while True:
                block = f.read(1 << 20)
                if not block:
                    if not rest:
                        return
                    block, rest = rest, b""
                else:
                    block = rest + block
                    cut = block.rfind(b"\n")
                    if cut < 0:
                        rest = block
                        continue
                    rest, block = block[cut + 1 :], block[: cut + 1]
                self.consumed += len(block)
                if first:
                    first = False
                    if block.startswith(codecs.BOM_UTF8):
                        block = block[3:]
                try:
                    text = block.decode(enc)
                except UnicodeDecodeError:
                    for line in self._lines_of(block, n, enc):
                        n += 1
                        yield line
                    continue
                lines = text.split("\n")
                last = lines.pop()  # "" after the final newline, or an unterminated last line
                for line in lines:
                    n += 1
                    yield line + "\n"
                if last:
                    n += 1
                    yield last

    def _lines_of(self, block: bytes, n: int, enc: str) -> Iterator[str]:
        label = "UTF-8" if enc == "utf-8" else enc.upper()
        for raw in block.splitlines(keepends=True):
            n += 1
            try:
                yield raw.decode(enc)
            except UnicodeDecodeError as e:
                hint = "; try --encoding gb18030" if enc == "utf-8" else ""
                self.errors.add(n, f"not valid {label} (byte {e.start + 1}){hint}")
                self.errors.bad_lines.add(n)
                yield raw.decode(enc, errors="replace")

    def _text_lines(self, enc: str) -> Iterator[str]:
        n = 0
        with open(self.path, encoding=enc, newline="") as f:
            try:
                for n, line in enumerate(f, start=1):
                    self.consumed += len(line) * 2
                    yield line.lstrip("\ufeff") if n == 1 else line
            except UnicodeDecodeError as e:
                self.errors.add(n + 1, f"not valid {enc.upper()} ({e.reason}); the rest of the file is not read")


def _cell(row: dict[str, Any], name: str) -> str | None:
    v = row.get(name)
    if v is None:
        return ""
    if v.__class__ is not str:
        return None  # JSON numbers and lists: the model decides
    return str(v).strip()


def _fast_number(row: dict[str, Any], name: str, region: str) -> str | None:
    raw = _cell(row, name)
    if raw and region == "CN" and _CN_MOBILE_E164.fullmatch(raw):
        return raw
    return None


def _fast_time(text: str, tz: tzinfo | None) -> datetime | bool | None:
    """ISO 8601 with an offset (or in ``tz``); False when the slow path must judge it."""
    if not text:
        return None
    if text[0] == "2" and len(text) >= 19:
        try:
            t = datetime.fromisoformat(text)
        except ValueError:
            return False
        if t.tzinfo is None:
            if tz is None:
                return False
            t = t.replace(tzinfo=tz)
        return t
    return False


def _fast_dnc(row: dict[str, Any], region: str, tz: tzinfo | None) -> Any:
    """The common DNC row (E.164 CN mobile, all/commercial, ISO time) without pydantic; else None."""
    number = row.get("number")
    if number.__class__ is not str or region != "CN":
        return None
    number = number.strip()  # type: ignore[union-attr]
    if not _CN_MOBILE_E164.fullmatch(number):
        return None
    scope = row.get("scope") or ""
    if scope.__class__ is not str:
        return None
    scope = scope.strip()
    if scope and scope != "all" and scope != "commercial":
        return None
    reg = row.get("registered_at") or ""
    if reg.__class__ is not str:
        return None
    secs = _fast_secs(reg, tz)
    if secs is None:
        return None
    return (number, secs * 2 + (1 if scope == "commercial" else 0))


@lru_cache(maxsize=4096)
def _fast_secs(text: str, tz: tzinfo | None) -> int | None:
    """Epoch seconds of a registration time (0: none), cached: a list repeats few distinct values."""
    at = _fast_time(text.strip(), tz)
    if at is False:
        return None
    return dnc_value("all", at) // 2  # type: ignore[arg-type]


def _fast_consent(row: dict[str, Any], region: str, tz: tzinfo | None) -> Any:
    """The common consent row without pydantic (same rules); None sends it to ``validate_row``."""
    try:
        callee = row["callee"].strip()
        token = row["token"].strip()
        ent = row["enterprise_id"].strip()
        purpose = (row.get("purpose") or "").strip()
        ev = (row.get("evidence_ref") or "").strip()
        maxc = (row.get("max_calls") or "").strip()
        gr = _fast_ms(row["granted_at"], tz)
        ex = _fast_ms(row.get("expires_at") or "", tz)
        rv = _fast_ms(row.get("revoked_at") or "", tz)
    except (KeyError, AttributeError):  # a missing column, or a JSON value that is not a string
        return None
    if (
        region != "CN"
        or not _CN_MOBILE_E164.fullmatch(callee)
        or not token
        or not ent
        or not isinstance(gr, int)
        or ex is None
        or rv is None
    ):
        return None
    max_calls: int | str = ""
    if maxc:
        if not maxc.isdigit() or int(maxc) < 1:
            return None
        max_calls = int(maxc)
    if isinstance(ex, int) and ex <= gr:
        return None
    purpose = purpose or "callback"
    np = purpose.lower()
    return (token, callee, _packb([ent, np, "" if purpose == np else purpose, gr, ex, max_calls, ev, rv]))


@lru_cache(maxsize=4096)
def _fast_ms(text: str, tz: tzinfo | None) -> int | str | None:
    """Epoch ms of a time cell ("" when empty; None: the slow path must judge it), cached."""
    at = _fast_time(text.strip(), tz)
    if at is False:
        return None
    if at is None:
        return ""
    return round(at.timestamp() * 1000)  # type: ignore[union-attr]


_packb = msgpack.Packer().pack  # the layout of policy/layout.py pack_consent, rows at a time

_FAST: dict[str, Any] = {"dnc": _fast_dnc, "consents": _fast_consent}
