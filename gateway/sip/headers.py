"""Header names (compact forms, canonical spelling) and list-value splitting.

Lookups key every header by its lower-cased *full* name, so ``v`` and ``Via``
are the same header; headers we generate use the canonical spelling because
some peers match names case-sensitively and never expect compact forms.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Final

# RFC 3261 §7.3.3 plus the compact forms registered since (RFC 3265, 3515, 3892, 4028, 8224, 3841).
COMPACT: Final[dict[str, str]] = {
    "i": "call-id",
    "m": "contact",
    "e": "content-encoding",
    "l": "content-length",
    "c": "content-type",
    "f": "from",
    "s": "subject",
    "k": "supported",
    "t": "to",
    "v": "via",
    "o": "event",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
    "u": "allow-events",
    "y": "identity",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
}

_CANONICAL_LIST: Final = (
    "Via",
    "From",
    "To",
    "Call-ID",
    "CSeq",
    "Contact",
    "Max-Forwards",
    "Route",
    "Record-Route",
    "Content-Length",
    "Content-Type",
    "Content-Encoding",
    "Content-Disposition",
    "Content-Language",
    "Allow",
    "Allow-Events",
    "Supported",
    "Require",
    "Proxy-Require",
    "Unsupported",
    "Subject",
    "User-Agent",
    "Server",
    "Date",
    "Expires",
    "Min-Expires",
    "Retry-After",
    "Reason",
    "Warning",
    "WWW-Authenticate",
    "Authorization",
    "Proxy-Authenticate",
    "Proxy-Authorization",
    "Authentication-Info",
    "P-Asserted-Identity",
    "P-Preferred-Identity",
    "Privacy",
    "Identity",
    "Event",
    "Refer-To",
    "Referred-By",
    "Session-Expires",
    "Min-SE",
    "Accept",
    "Accept-Encoding",
    "Accept-Language",
    "Accept-Contact",
    "Reject-Contact",
    "Request-Disposition",
    "Call-Info",
    "Alert-Info",
    "Error-Info",
    "In-Reply-To",
    "Organization",
    "Priority",
    "Reply-To",
    "Timestamp",
    "RSeq",
    "RAck",
    "Path",
    "Service-Route",
    "History-Info",
    "Diversion",
    "SIP-ETag",
    "SIP-If-Match",
)
CANONICAL: Final[dict[str, str]] = {n.lower(): n for n in _CANONICAL_LIST}

# Headers whose grammar is a comma-separated list (RFC 3261 §7.3.1 allows
# joining or splitting those lines freely). Anything else may carry commas
# as plain data (Date, WWW-Authenticate, Identity, User-Agent...) and is
# never split.
LIST_HEADERS: Final[frozenset[str]] = frozenset(
    {
        "via",
        "route",
        "record-route",
        "contact",
        "allow",
        "allow-events",
        "supported",
        "require",
        "proxy-require",
        "unsupported",
        "p-asserted-identity",
        "p-preferred-identity",
        "privacy",
        "accept",
        "accept-encoding",
        "accept-language",
        "content-encoding",
        "content-language",
        "in-reply-to",
        "path",
        "service-route",
        "history-info",
        "diversion",
        "p-associated-uri",
        "accept-contact",
        "reject-contact",
        "request-disposition",
        "call-info",
        "alert-info",
        "error-info",
        "reason",
        "warning",
    }
)


def header_key(name: str) -> str:
    """The lookup key: lower-case full name, compact forms expanded."""
    k = name.strip().lower()
    return COMPACT.get(k, k)


def canonical_name(name: str) -> str:
    """Spelling for a header line we generate: canonical when known, never compact."""
    k = header_key(name)
    return CANONICAL.get(k) or (name.strip() if len(name.strip()) > 1 else k)


# One header line (or folded group of lines): (name as written, lookup key,
# unfolded value, raw line or None, line terminator). A plain tuple because
# building ~20 of them per message is on the hot path (a NamedTuple costs
# several times more to create). ``raw`` is the line text as received
# (latin-1, so it encodes back to the exact bytes), without its final
# terminator, which ``eol`` records, so bare-LF input is re-emitted as it
# came; an edit replaces the entry with one whose ``raw`` is None, which is
# how ``to_bytes`` knows what to regenerate.
Header = tuple[str, str, str, str | None, str]
CRLF: Final = "\r\n"


def check_value(value: str) -> None:
    """Refuse CR, LF and NUL: a value with those could smuggle extra header lines."""
    if "\r" in value or "\n" in value or "\0" in value:
        raise ValueError("header value contains CR, LF or NUL")


_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")


@lru_cache(maxsize=256)
def new_header_name(name: str) -> tuple[str, str]:
    """(spelling, key) for a header we generate; ValueError unless the name is one token.

    Cached: the proxy adds the same handful of names to every message.
    """
    n = name.strip()
    if not _TOKEN_RE.fullmatch(n):
        raise ValueError("invalid header name")
    return canonical_name(n), header_key(n)


def check_name(name: str) -> None:
    """A header name we emit must be one token, or the line would mean something else."""
    new_header_name(name)


def split_list(value: str) -> list[str]:
    """Split a list header on top-level commas (not inside "..." or <...>).

    Most values carry no quotes, so those are split with ``str`` methods
    (C loops); only a value with a quoted string takes the per-character scan.
    """
    if "," not in value:
        v = value.strip()
        return [v] if v else []
    if '"' not in value:
        if "<" not in value:
            return [p for p in map(str.strip, value.split(",")) if p]
        return _split_angles(value)
    return _split_at(value, _quoted_commas(value, first=False))


def _split_at(value: str, cuts: Iterable[int]) -> list[str]:
    """The non-empty, stripped pieces of ``value`` between the comma positions ``cuts``."""
    out: list[str] = []
    start = 0
    for cut in cuts:
        part = value[start:cut].strip()
        if part:
            out.append(part)
        start = cut + 1
    part = value[start:].strip()
    if part:
        out.append(part)
    return out


HIDDEN: Final = "\x01"  # what ``mask_quoted`` puts in place of a hidden character


def mask_quoted(value: str, angles: bool = False) -> tuple[str, bool]:
    """``value`` with every character of its quoted strings hidden, and whether one was left open.

    The one character scan of the package for values that hold quotes
    (``\\`` escapes honoured): each character of a quoted string, its
    quotes included, becomes ``HIDDEN``; with ``angles``, so does each
    character of a ``<...>`` URI but its ``<`` (a ``<`` opens, the next
    ``>`` closes, as ``_next_top_comma`` reads it). The mask has the length
    of ``value``, so a separator found in it with ``str`` methods is at the
    same index in ``value``: the list split, the parameter split and the
    parser's NUL, quote and empty-element checks all read it.
    """
    out: list[str] = []
    quoted = False
    escaped = False
    angle = False
    for c in value:
        if quoted:
            out.append(HIDDEN)
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
            out.append(HIDDEN)
        elif angle:
            out.append(HIDDEN)
            if c == ">":
                angle = False
        elif angles and c == "<":
            angle = True
            out.append(c)
        else:
            out.append(c)
    return "".join(out), quoted


def _positions(mask: str, sep: str, first: bool = False) -> list[int]:
    """Indices of ``sep`` in ``mask`` (only the first when ``first``)."""
    out: list[int] = []
    i = mask.find(sep)
    while i >= 0:
        out.append(i)
        if first:
            break
        i = mask.find(sep, i + 1)
    return out


def _quoted_commas(value: str, *, first: bool) -> list[int]:
    """Top-level comma positions of a value holding quotes: outside "..." and <...>."""
    return _positions(mask_quoted(value, True)[0], ",", first)


def _next_top_comma(value: str, i: int) -> int:
    """Index of the next comma at or after ``i`` outside <...>, or -1; ``value`` has no quotes.

    Same reading as the character scan: a ``<`` opens an angle that the next
    ``>`` closes, and nothing in between counts.
    """
    while True:
        c = value.find(",", i)
        if c < 0:
            return -1
        lt = value.find("<", i, c)
        if lt < 0:
            return c
        gt = value.find(">", lt + 1)
        if gt < 0:
            return -1
        i = gt + 1


def _angle_commas(value: str) -> Iterator[int]:
    """Top-level comma positions of a value without quotes (``_next_top_comma`` in turn)."""
    c = _next_top_comma(value, 0)
    while c >= 0:
        yield c
        c = _next_top_comma(value, c + 1)


def _split_angles(value: str) -> list[str]:
    return _split_at(value, _angle_commas(value))


def first_element_end(value: str) -> int:
    """Index of the first top-level comma of a list value, or -1 (one element)."""
    if "," not in value:
        return -1
    if '"' not in value:
        return value.find(",") if "<" not in value else _next_top_comma(value, 0)
    cuts = _quoted_commas(value, first=True)
    return cuts[0] if cuts else -1


def split_params(text: str) -> dict[str, str | None]:
    """``;a=1;b;c="x;y"`` -> {"a": "1", "b": None, "c": '"x;y"'}; names lower-cased, first wins."""
    out: dict[str, str | None] = {}
    if '"' in text:
        parts = _split_quoted(text, ";")
    else:
        parts = text.split(";")
    for p in parts:
        name, eq, val = p.partition("=")
        name = name.strip().lower()
        if not name or name in out:
            continue
        out[name] = val.strip() if eq else None
    return out


def _split_quoted(text: str, sep: str) -> list[str]:
    """``text`` cut at each ``sep`` outside its quoted strings (pieces kept as they are)."""
    out: list[str] = []
    start = 0
    for cut in _positions(mask_quoted(text)[0], sep):
        out.append(text[start:cut])
        start = cut + 1
    out.append(text[start:])
    return out
