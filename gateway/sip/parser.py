"""``parse``: one datagram / framed message in, a ``Request`` or ``Response`` out.

The parse is deliberately shallow: split the lines, key the headers, check
what every message must have (start line, the five mandatory headers, CSeq,
Content-Length, Max-Forwards, the limits). Via and URIs are parsed only when
asked, because most messages through a proxy need only the top Via and a tag.
"""

from __future__ import annotations

from itertools import repeat
from typing import Final

from .errors import SipError
from .headers import COMPACT, CRLF, HIDDEN, Header, mask_quoted, split_list
from .message import Request, Response, parse_cseq
from .uri import SCHEMES

MAX_MESSAGE: Final = 65535  # bytes; larger is a 513
MAX_HEADERS: Final = 256  # header lines (continuations count); more is a 400
MAX_LINE: Final = 8192  # bytes per line; longer is a 400
MAX_VIAS: Final = 64  # Via values; a deeper stack is a 400

_TOKEN_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")
_SCHEME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.")
# Request headers whose values are checked for empty list elements / parameters
# (RFC 4475 §3.1.2.1) or an unterminated quoted string (§3.1.2.6) before anyone
# forwards them: the proxy never parses Contact, and To / From only lazily.
_LIST_CHECKED: Final = frozenset({"via", "contact"})
_QUOTE_CHECKED: Final = frozenset({"to", "from", "contact"})
_MANDATORY: Final = ("via", "from", "to", "call-id", "cseq")
_SINGLE: Final = ("from", "to", "call-id", "cseq", "content-length")  # at most one line each
_NON_EMPTY: Final = ("from", "to", "call-id", "cseq")
_PRETTY: Final = {
    "via": "Via",
    "from": "From",
    "to": "To",
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "content-length": "Content-Length",
    "contact": "Contact",
}


def parse(
    data: bytes,
    *,
    max_size: int = MAX_MESSAGE,
    max_headers: int = MAX_HEADERS,
    max_line: int = MAX_LINE,
    max_vias: int = MAX_VIAS,
) -> Request | Response:
    """Parse one whole message; raises ``SipError`` (and nothing else) when it is refused."""
    try:
        return _parse(bytes(data), max_size, max_headers, max_line, max_vias)
    except SipError:
        raise
    except Exception:  # a parser bug must still be a clean refusal, never a crash upstream
        raise SipError("malformed message") from None


def _split_slow(data: bytes, pos: int) -> tuple[list[str], list[str], int]:
    # eols gets one extra entry at the end: the terminator of the empty line.
    """Line split tolerating bare-LF endings; refuses a bare CR or a NUL inside a line."""
    lines: list[str] = []
    eols: list[str] = []
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            raise SipError("no end of headers")
        if nl > pos and data[nl - 1] == 13:
            line = data[pos : nl - 1]
            eol = "\r\n"
        else:
            line = data[pos:nl]
            eol = "\n"
        pos = nl + 1
        if not line:
            eols.append(eol)
            return lines, eols, pos
        if b"\r" in line:
            raise SipError("bare CR in header")
        text = line.decode("latin-1")
        if "\0" in text and not _nuls_quoted(text):
            raise SipError("NUL in header")
        lines.append(text)
        eols.append(eol)


def _parse(
    data: bytes, max_size: int, max_headers: int, max_line: int, max_vias: int
) -> Request | Response:
    if len(data) > max_size:
        raise SipError("message too large", 513)
    i = 0
    while True:  # RFC 3261 §7.5: ignore CRLFs before the start line
        if data.startswith(b"\r\n", i):
            i += 2
        elif data.startswith(b"\n", i):
            i += 1
        else:
            break
    lines: list[str] | None = None
    eols: list[str] | None = None
    p = data.find(b"\r\n\r\n", i)
    if p >= 0:
        head = data[i:p]
        lines = head.decode("latin-1").split("\r\n")
        if b"\0" in head:
            _check_nuls(lines)
        n = len(lines) - 1
        if head.count(b"\n") != n or head.count(b"\r") != n:  # a bare CR or LF somewhere
            lines = None
        body_start = p + 4
    if lines is None:
        lines, eols, body_start = _split_slow(data, i)
        if not lines:
            raise SipError("empty message")
    if len(lines) - 1 > max_headers:
        raise SipError("too many headers")
    if body_start - i > max_line and max(map(len, lines)) > max_line:
        raise SipError("header line too long")

    start = lines[0]
    headers: list[Header] | None = None
    if eols is None and len(lines) > 1:
        # Fast path (CRLF only): whole-list operations instead of a loop per line.
        # A folded line or an odd name shows up as whitespace in the names and
        # sends us to the slow path.
        # map() over method descriptors: C-level loops, no bytecode per line.
        hlines = lines[1:]
        # zip without strict=: a keyword argument sends mypyc's call through the generic
        # path (~4,000 instructions per message); the three columns are equal by construction.
        names, seps, rest = zip(*map(str.partition, hlines, repeat(":")))  # noqa: B905
        joined = ":".join(names)
        if (
            "" not in seps
            and "" not in names
            and " " not in joined
            and "\t" not in joined
            and joined.isascii()
            and joined.isprintable()
        ):
            keys = joined.lower().split(":")
            if min(map(len, keys)) == 1:
                keys = [COMPACT.get(k, k) for k in keys]
            values = list(map(str.strip, rest, repeat(" \t")))
            headers = list(zip(names, keys, values, hlines, repeat(CRLF)))
    if headers is None:
        headers = _headers_slow(lines, eols)
        keys = [h[1] for h in headers]
        values = [h[2] for h in headers]

    blank = (CRLF, CRLF) if eols is None else (eols[0], eols[-1])
    # First value per key for Message.get (built reversed, so the earliest line wins);
    # also what _validate reads instead of searching the lists.
    index = dict(zip(reversed(keys), reversed(values)))  # noqa: B905 (same lengths by construction)
    cseq = _validate(keys, values, index, max_vias)
    content_length = None
    v = index.get("content-length")
    if v is not None:
        if not v.isascii() or not v.isdigit() or len(v) > 10:
            raise SipError("bad Content-Length")
        content_length = int(v)
    if content_length is None:
        body = data[body_start:]
    else:
        if body_start + content_length > len(data):
            raise SipError("Content-Length larger than body")
        body = data[body_start : body_start + content_length]

    if start.startswith("SIP/"):
        parts = start.split(" ", 2)
        if len(parts) < 2:
            raise SipError("bad status line")
        version, code = parts[0], parts[1]
        if version.upper() != "SIP/2.0":
            raise SipError("SIP version not supported", 505)
        if (
            len(code) != 3
            or not code.isascii()
            or not code.isdigit()
            or not 100 <= int(code) <= 699
        ):
            raise SipError("bad status code")
        return Response(
            int(code),
            parts[2] if len(parts) == 3 else "",
            version,
            start,
            headers,
            body,
            eols is None,
            content_length is not None,
            blank,
            index,
            cseq,
        )
    parts = start.split(" ")
    if len(parts) != 3:
        raise SipError("bad request line")
    method, uri, version = parts
    if not method or not (method.isalpha() or all(c in _TOKEN_CHARS for c in method)):
        raise SipError("bad method")
    if version.upper() != "SIP/2.0":
        if version[:4].upper() == "SIP/":
            raise SipError("SIP version not supported", 505)
        raise SipError("bad request line")
    scheme, colon, after = uri.partition(":")
    if not colon or not scheme or not scheme[0].isalpha() or not all(c in _SCHEME_CHARS for c in scheme):
        # Not a scheme at all (RFC 3261 §25.1), e.g. '<sip:...>' (RFC 4475 §3.1.2.7):
        # bad syntax, so 400; 416 is for a well-formed scheme we do not serve.
        raise SipError("bad Request-URI")
    lscheme = scheme.lower()
    if lscheme not in SCHEMES:
        raise SipError("unsupported URI scheme", 416)
    if lscheme != "tel" and "?" in after[after.find("@") + 1 :]:
        # Escaped headers (RFC 4475 §3.1.2.11; RFC 3261 §19.1.1 allows none in a
        # Request-URI): refused, not stripped, so a trunk cannot slip Route hints
        # towards the carrier core by any spelling. A '?' in the user part is legal.
        raise SipError("headers in the Request-URI")
    if cseq[1] != method:
        raise SipError("CSeq method does not match")
    _check_request_headers(keys, values, index)
    return Request(
        method,
        uri,
        version,
        start,
        headers,
        body,
        eols is None,
        content_length is not None,
        blank,
        index,
        cseq,
    )


def _headers_slow(lines: list[str], eols: list[str] | None) -> list[Header]:
    """Line-by-line: folded continuations, whitespace before the colon, bare-LF endings."""
    headers: list[Header] = []
    append = headers.append
    compact = COMPACT
    for k in range(1, len(lines)):
        s = lines[k]
        eol = CRLF if eols is None else eols[k]
        c0 = s[0]
        if c0 == " " or c0 == "\t":  # folded continuation (RFC 3261 §7.3.1)
            if not headers:
                raise SipError("continuation before first header")
            name, key, value, raw, peol = headers[-1]
            cont = s.strip(" \t")
            if cont:
                value = f"{value} {cont}" if value else cont
            headers[-1] = (name, key, value, (raw or "") + peol + s, eol)
            continue
        name, colon, value = s.partition(":")
        if not colon:
            raise SipError("header line without colon")
        name = name.rstrip(" \t")
        if not name or " " in name or "\t" in name or not name.isascii() or not name.isprintable():
            raise SipError("bad header name")
        key = name.lower()
        if len(key) == 1:
            key = compact.get(key, key)
        append((name, key, value.strip(" \t"), s, eol))
    return headers


def _validate(
    keys: list[str], values: list[str], index: dict[str, str], max_vias: int
) -> tuple[int, str]:
    """Mandatory and single-instance headers, CSeq, Max-Forwards, Via depth. Returns the CSeq.

    ``index`` holds the first value per key. When it has as many entries as
    there are lines, no header repeats (the usual case), so the duplicate
    checks and the per-line Via / Max-Forwards walks are skipped.
    """
    for key in _MANDATORY:
        if key not in index:
            raise SipError(f"missing {_PRETTY[key]}")
    unique = len(index) == len(keys)
    if not unique:
        for key in _SINGLE:
            if keys.count(key) > 1:
                raise SipError(f"duplicate {_PRETTY[key]}")
    for key in _NON_EMPTY:
        if not index[key]:
            raise SipError(f"empty {_PRETTY[key]}")
    if unique or keys.count("via") == 1:
        v = index["via"]
        via_count = len(split_list(v)) if "," in v else 1 if v else 0
        if not via_count:
            raise SipError("empty Via")
    else:
        via_count = 0
        for k, v in zip(keys, values, strict=False):
            if k == "via":
                if not v:
                    raise SipError("empty Via")
                via_count += len(split_list(v)) if "," in v else 1
    if via_count > max_vias:
        raise SipError("too many Via values")
    if unique:
        mf = index.get("max-forwards")
        if mf is not None and (not mf.isascii() or not mf.isdigit() or len(mf) > 10):
            raise SipError("bad Max-Forwards")
    else:
        for k, v in zip(keys, values, strict=False):
            if k == "max-forwards" and (not v.isascii() or not v.isdigit() or len(v) > 10):
                raise SipError("bad Max-Forwards")
    return parse_cseq(index["cseq"])


def _nuls_quoted(line: str) -> bool:
    """True when every NUL of the line is inside a quoted string.

    RFC 3261 §25.1 allows any octet but CR and LF as a quoted-pair, NUL
    included (RFC 4475 §3.1.1.2); a NUL anywhere else is refused.
    """
    return "\0" not in mask_quoted(line)[0]


def _check_nuls(lines: list[str]) -> None:
    for line in lines:
        if "\0" in line and not _nuls_quoted(line):
            raise SipError("NUL in header")


def _quotes_closed(value: str) -> bool:
    """No quoted string runs off the end of the value."""
    return not mask_quoted(value)[1]


def _unquoted(value: str, angles: bool) -> str:
    """``value`` without its quoted strings (and, when ``angles``, each URI in <...> as its ``<``)."""
    if '"' in value:
        return mask_quoted(value, angles)[0].replace(HIDDEN, "")
    if not angles or "<" not in value:
        return value
    # No quotes (every Contact SIPp sends): the same reading with str.find, not a loop per
    # character; a '<' opens, the next '>' closes, an unclosed one hides the rest.
    out: list[str] = []
    i = 0
    while True:
        lt = value.find("<", i)
        if lt < 0:
            out.append(value[i:])
            break
        out.append(value[i : lt + 1])
        gt = value.find(">", lt + 1)
        if gt < 0:
            break
        i = gt + 1
    return "".join(out)


def _separators_ok(value: str, angles: bool) -> bool:
    """No empty list element or parameter: no ',,', ';;', ',;', ';,', nor one at either end."""
    t = _unquoted(value, angles)
    t = "".join(t.split())
    if not t:
        return False
    if t[0] in ",;" or t[-1] in ",;":
        return False
    return ",," not in t and ";;" not in t and ",;" not in t and ";," not in t


def _check_value(key: str, value: str) -> None:
    if key in _QUOTE_CHECKED and '"' in value and not _quotes_closed(value):
        raise SipError(f"unterminated quoted string in {_PRETTY.get(key, key)}")
    if key in _LIST_CHECKED and value != "*" and not _separators_ok(value, key == "contact"):
        raise SipError(f"empty element in {_PRETTY.get(key, key)}")


def _check_request_headers(keys: list[str], values: list[str], index: dict[str, str]) -> None:
    """Requests only: what the proxy would otherwise forward, or fail on later, broken.

    A request is answered 400 here, while its raw lines can still be echoed;
    a broken response would only be dropped, so responses are left alone.
    """
    if len(index) == len(keys):  # no repeated header: the first values are all the values
        for key in ("via", "to", "from", "contact"):
            v = index.get(key)
            if v is not None:
                _check_value(key, v)
        return
    for k, v in zip(keys, values, strict=False):
        if k in _LIST_CHECKED or k in _QUOTE_CHECKED:
            _check_value(k, v)
