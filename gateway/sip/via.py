"""Via values: where responses go (RFC 3261 §18.2.2, RFC 3581 rport)."""

from __future__ import annotations

from typing import final

from .errors import SipError
from .headers import split_params
from .uri import split_hostport


@final
class Via:
    """One Via value. ``host`` is as written (IPv6 keeps its brackets); ``raw`` is the value text."""

    __slots__ = ("host", "params", "port", "raw", "transport")

    def __init__(
        self,
        transport: str,
        host: str,
        port: int | None,
        params: dict[str, str | None],
        raw: str = "",
    ) -> None:
        self.transport = transport
        self.host = host
        self.port = port
        self.params = params
        self.raw = raw

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """The rport value filled in by the server, None when absent or still valueless."""
        v = self.params.get("rport")
        if v is None or not v.isascii() or not v.isdigit():
            return None
        n = int(v)
        return n if 0 < n < 65536 else None

    def response_address(self, default_port: int = 5060) -> tuple[str, int]:
        """Where a response to this hop goes: received/rport override sent-by (RFC 3581 §4)."""
        host = self.received or self.host
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        port = self.rport or self.port or default_port
        return host, port

    def __repr__(self) -> str:
        return f"Via({self.raw!r})"


def parse_via(value: str) -> Via:
    """``SIP/2.0/UDP host[:port];params`` (LWS tolerated around the slashes)."""
    head, _, ptext = value.partition(";")
    parts = head.split("/", 2)
    if len(parts) != 3 or parts[0].strip().upper() != "SIP" or parts[1].strip() != "2.0":
        raise SipError("bad Via")
    tail = parts[2].split(None, 1)
    if len(tail) != 2:
        raise SipError("bad Via")
    transport = tail[0].upper()
    if not transport.isalnum():
        raise SipError("bad Via transport")
    host, port = split_hostport(tail[1].strip())
    return Via(transport, host, port, split_params(ptext) if ptext else {}, value.strip())
