"""Messages we originate: responses to a request, and small requests (OPTIONS, CANCEL, ACK).

Names are always canonical and every value is checked for CR / LF / NUL:
values often come from configuration or policy text, and a stray CRLF
would let that text inject header lines.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from .errors import SipError
from .headers import check_value, header_key, new_header_name
from .message import Request

PHRASES: Final[dict[int, str]] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    428: "Use Identity Header",
    429: "Provide Referrer Identity",
    433: "Anonymity Disallowed",
    436: "Bad Identity Info",
    437: "Unsupported Credential",
    438: "Invalid Identity Header",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
    604: "Does Not Exist Anywhere",
    606: "Not Acceptable",
    607: "Unwanted",
    608: "Rejected",
}

_CLASS_PHRASE: Final = {
    1: "Trying",
    2: "OK",
    3: "Redirection",
    4: "Client Error",
    5: "Server Error",
    6: "Global Failure",
}


def _enc(text: str) -> bytes:
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def _line(name: str, value: str) -> bytes:
    spelled = new_header_name(name)[0]
    check_value(value)
    return _enc(f"{spelled}: {value}")


def _has_tag(req: Request) -> bool:
    # A To the URI parser cannot read still gets an answer: fall back to a plain search.
    try:
        return req.to_tag is not None
    except SipError:
        return ";tag=" in (req.get("To") or "").lower()


def build_response(
    req: Request,
    status: int,
    reason_phrase: str | None = None,
    *,
    to_tag: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
) -> bytes:
    """A response to ``req`` per RFC 3261 §8.2.6: its Vias, From, To (+tag), Call-ID, CSeq."""
    if not 100 <= status <= 699:
        raise ValueError("status out of range")
    phrase = (
        reason_phrase
        if reason_phrase is not None
        else PHRASES.get(status, _CLASS_PHRASE[status // 100])
    )
    check_value(phrase)
    lines = [_enc(f"SIP/2.0 {status} {phrase}")]
    from_v = to_v = call_id = cseq = ""
    for _, key, value, _, _ in req.headers:
        if key == "via":
            lines.append(b"Via: " + _enc(value))
        elif key == "from" and not from_v:
            from_v = value
        elif key == "to" and not to_v:
            to_v = value
        elif key == "call-id" and not call_id:
            call_id = value
        elif key == "cseq" and not cseq:
            cseq = value
    if to_tag is not None and status > 100 and not _has_tag(req):
        check_value(to_tag)
        to_v = f"{to_v};tag={to_tag}"
    lines.append(b"From: " + _enc(from_v))
    lines.append(b"To: " + _enc(to_v))
    lines.append(b"Call-ID: " + _enc(call_id))
    lines.append(b"CSeq: " + _enc(cseq))
    for name, value in extra:
        lines.append(_line(name, value))
    lines.append(b"Content-Length: 0")
    lines.append(b"")
    lines.append(b"")
    return b"\r\n".join(lines)


def build_request(
    method: str, uri: str, headers: Iterable[tuple[str, str]], body: bytes = b""
) -> bytes:
    """A request we originate (OPTIONS probe, CANCEL, ACK); Content-Length is computed here."""
    if not method or not method.isascii() or not method.isalpha():
        raise ValueError("bad method")
    check_value(uri)
    if not uri or " " in uri:
        raise ValueError("bad Request-URI")
    lines = [_enc(f"{method} {uri} SIP/2.0")]
    for name, value in headers:
        if header_key(name) == "content-length":
            continue
        lines.append(_line(name, value))
    lines.append(b"Content-Length: " + str(len(body)).encode())
    lines.append(b"")
    lines.append(bytes(body))
    return b"\r\n".join(lines)
