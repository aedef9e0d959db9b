"""Which worker owns a request: a hash of its Call-ID, so one trunk's calls use every worker.

The parent binds one ``SO_REUSEPORT`` UDP socket per worker, and the kernel
picks the socket by a hash of the source address and port. A carrier's
trunk is usually one SBC, one address and port: every datagram from it
lands on the same worker, and the other cores sit idle while that one
saturates (measured: one SIPp caller loads one of two workers). So a worker
that reads a request from a trunk hands it to the request's *owner*, the
worker ``crc32(Call-ID) % workers``, over a socketpair the parent made
before forking (``gateway.worker``); a request whose owner it is, it
handles. Everything that must meet the same transaction state — an INVITE,
its retransmissions, its CANCEL, the ACK of a non-2xx — shares the Call-ID,
so it meets it on the owner.

Only requests are steered: responses from next hops arrive on the forwarding
worker's own socket (its Via), and responses on the listen socket (to a BYE
the callee sent upstream) are routed statelessly by any worker. TCP is not
steered: a connection belongs to the worker that accepted it.

The hash is computed on the Call-ID *line* as received, without a parse
(about 0.3 µs for a 900-byte INVITE); a retransmission repeats the same
bytes and so reaches the same owner. A request without a Call-ID line that
can be found this way stays where it landed (the parser will answer it).
"""

from __future__ import annotations

import re
import zlib

_LONG = b"\r\nCall-ID:"
_ANY = re.compile(rb"\r\n(?:call-id|i)[ \t]*:([^\r\n]*)", re.IGNORECASE)


def call_id_line(data: bytes) -> bytes | None:
    """The raw value of the first Call-ID header line (long or compact form, any case)."""
    head_end = data.find(b"\r\n\r\n")
    limit = head_end + 2 if head_end >= 0 else len(data)  # a Call-ID in the body is not a header
    i = data.find(_LONG, 0, limit)
    if i >= 0:
        j = data.find(b"\r\n", i + 10)
        return data[i + 10 : j if j >= 0 else len(data)].strip()
    m = _ANY.search(data, 0, limit)
    return m.group(1).strip() if m else None


def owner(data: bytes, workers: int) -> int | None:
    """The worker index that owns this request, or None (a response, one worker, or no Call-ID)."""
    if workers < 2 or data[:4] == b"SIP/":
        return None
    cid = call_id_line(data)
    if not cid:
        return None
    return zlib.crc32(cid) % workers


def wrap(source: tuple[str, int], data: bytes) -> bytes:
    """A steered datagram: the trunk's address, a newline, the request as received."""
    return f"{source[0]} {source[1]}\n".encode() + data


def unwrap(frame: bytes) -> tuple[tuple[str, int], bytes] | None:
    """``wrap`` undone; None for a frame that is not one (never expected: the pair is private)."""
    nl = frame.find(b"\n")
    if nl < 0:
        return None
    host, _, port = frame[:nl].partition(b" ")
    if not port.isdigit():
        return None
    return (host.decode("ascii", "replace"), int(port)), frame[nl + 1 :]
