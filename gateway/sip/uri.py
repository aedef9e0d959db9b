"""SIP and tel URIs, and the URI inside a From / To / P-Asserted-Identity value.

Only what the proxy and the policy need: scheme, user (the number), host,
port and URI parameters. Caller and callee numbers come from here, so the
user part is percent-decoded and stripped of user-parameters
(``sip:+86138...;npdi@host``) before anyone compares numbers.
"""

from __future__ import annotations

import re
from typing import Final, final
from urllib.parse import unquote

from .errors import SipError
from .headers import split_params

SCHEMES: Final = frozenset({"sip", "sips", "tel"})


@final
class SipUri:
    """A parsed URI; ``host`` keeps IPv6 brackets, ``host`` is "" for tel:."""

    __slots__ = ("host", "params", "port", "scheme", "user")

    def __init__(
        self,
        scheme: str,
        user: str | None,
        host: str,
        port: int | None,
        params: dict[str, str | None],
    ) -> None:
        self.scheme = scheme
        self.user = user
        self.host = host
        self.port = port
        self.params = params

    def __repr__(self) -> str:
        return (
            f"SipUri(scheme={self.scheme!r}, user={self.user!r}, host={self.host!r}, "
            f"port={self.port!r}, params={self.params!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SipUri):
            return NotImplemented
        return (self.scheme, self.user, self.host, self.port, self.params) == (
            other.scheme,
            other.user,
            other.host,
            other.port,
            other.params,
        )

    __hash__ = None  # type: ignore[assignment]


def parse_port(text: str) -> int:
    """A port is 1..65535 written in ASCII digits; anything else is a 400."""
    if not text or len(text) > 5 or not text.isascii() or not text.isdigit():
        raise SipError("bad port")
    port = int(text)
    if not 0 < port < 65536:
        raise SipError("bad port")
    return port


def split_hostport(text: str) -> tuple[str, int | None]:
    """``host[:port]`` / ``[v6][:port]``; the host keeps its brackets."""
    if text.startswith("["):
        end = text.find("]")
        if end < 3:
            raise SipError("bad IPv6 reference")
        host = text[: end + 1]
        rest = text[end + 1 :]
        if not rest:
            return host, None
        if rest[0] != ":":
            raise SipError("bad host")
        return host, parse_port(rest[1:])
    host, colon, port = text.partition(":")
    if not host or not _host_ok(host):
        raise SipError("bad host")
    return host, parse_port(port) if colon else None


_BAD_HOST: Final = re.compile(r'[\s<>"@;,?\[\]/\\]')


def _host_ok(host: str) -> bool:
    return host.isascii() and host.isprintable() and _BAD_HOST.search(host) is None


def parse_uri(text: str) -> SipUri:
    """sip:/sips:/tel: URI; another scheme is a 416, a broken one a 400."""
    text = text.strip()
    scheme, colon, rest = text.partition(":")
    if not colon or not scheme:
        raise SipError("bad URI")
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise SipError("unsupported URI scheme", 416)
    if scheme == "tel":
        number, _, ptext = rest.partition(";")
        number = number.strip()
        if not number:
            raise SipError("bad tel URI")
        return SipUri(
            "tel", unquote(number, "latin-1"), "", None, split_params(ptext) if ptext else {}
        )
    rest = rest.partition("?")[0]
    at = rest.find("@")
    user: str | None = None
    if at >= 0:
        userinfo = rest[:at]
        rest = rest[at + 1 :]
        u = userinfo.partition(":")[0].partition(";")[0]
        if not u:
            raise SipError("bad URI user")
        user = unquote(u, "latin-1") if "%" in u else u
    hostport, _, ptext = rest.partition(";")
    host, port = split_hostport(hostport.strip())
    return SipUri(scheme, user, host, port, split_params(ptext) if ptext else {})


def _name_addr_bounds(value: str) -> tuple[int, int] | None:
    """(start, end) of the text inside <...>, skipping a quoted display name; None for addr-spec."""
    i = 0
    if value.startswith('"'):
        i = 1
        n = len(value)
        while i < n:
            c = value[i]
            if c == "\\":
                i += 2
                continue
            if c == '"':
                break
            i += 1
        else:
            raise SipError("unterminated display name")
        i += 1
    lt = value.find("<", i)
    if lt < 0:
        if i:
            raise SipError("display name without <URI>")
        return None
    gt = value.find(">", lt + 1)
    if gt < 0:
        raise SipError("unterminated <URI>")
    return lt + 1, gt


def header_uri(value: str) -> str:
    """The URI of a name-addr (``"D" <uri>;tag=1``) or addr-spec (``uri;tag=1``) value.

    In addr-spec form everything after the first ``;`` is a header parameter
    (RFC 3261 §20), not a URI parameter.
    """
    value = value.strip()
    b = _name_addr_bounds(value)
    if b is None:
        uri = value.partition(";")[0].strip()
    else:
        uri = value[b[0] : b[1]].strip()
    if not uri:
        raise SipError("empty URI")
    return uri


def header_params(value: str) -> dict[str, str | None]:
    """The header parameters (tag, expires...) after the URI of a name-addr / addr-spec value."""
    value = value.strip()
    b = _name_addr_bounds(value)
    rest = value.partition(";")[2] if b is None else value[b[1] + 1 :].partition(";")[2]
    return split_params(rest) if rest else {}


def user_of(value: str) -> str | None:
    """User part (number) of a header value or a bare URI; None when absent or unparseable."""
    try:
        v = value.strip()
        if "<" in v:
            return parse_uri(header_uri(v)).user
        # A bare URI: parse it whole so user-params before '@' survive; a
        # trailing ;tag only lands in the (ignored) URI params.
        return parse_uri(v).user
    except SipError:
        return None
