"""TCP stream framing (RFC 3261 §18.3) and RFC 5626 CRLF keep-alives.

On a stream Content-Length is the only message boundary, so a message
without it is unframeable and the connection must go; so must anything
larger than the limit, or a peer could make us buffer without bound.
"""

from __future__ import annotations

from .errors import SipError


class Ping:
    """A CRLFCRLF keep-alive between messages; the transport answers with CRLF (pong)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Ping()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ping)

    def __hash__(self) -> int:
        return 0


def _content_length(head: bytes) -> int:
    """Content-Length of a header section (full or compact name); SipError when absent or bad."""
    found: int | None = None
    for line in head.split(b"\n")[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        n = name.strip(b" \t\r").lower()
        if n != b"content-length" and n != b"l":
            continue
        v = value.strip(b" \t\r")
        if not v.isdigit() or len(v) > 10:
            raise SipError("bad Content-Length")
        cl = int(v)
        if found is not None and found != cl:
            raise SipError("conflicting Content-Length")
        found = cl
    if found is None:
        raise SipError("missing Content-Length on a stream")
    return found


class StreamFramer:
    """Cuts a TCP byte stream into whole messages; unusable after its first error."""

    __slots__ = ("_broken", "_buf", "_scan", "_total", "max_message")

    def __init__(self, max_message: int = 65535) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._scan = 0  # where to resume looking for the end of the header section
        self._total = 0  # size of the message being received, once its header section is complete
        self._broken = False

    def feed(self, data: bytes) -> list[bytes | Ping]:
        if self._broken:
            raise SipError("stream framing already failed")
        try:
            return self._feed(data)
        except SipError:
            self._broken = True
            raise
        except Exception:
            self._broken = True
            raise SipError("bad stream") from None

    def _feed(self, data: bytes) -> list[bytes | Ping]:
        buf = self._buf
        buf += data
        out: list[bytes | Ping] = []
        while buf:
            total = self._total
            if not total:
                if self._scan == 0 and buf[0] in (13, 10):
                    # Between messages: CRLFCRLF is a ping, a lone CRLF (or LF) is ignored.
                    if buf.startswith(b"\r\n\r\n"):
                        del buf[:4]
                        out.append(Ping())
                        continue
                    if len(buf) < 4 and b"\r\n\r\n".startswith(bytes(buf)):
                        break  # could still become a ping
                    del buf[: 2 if buf.startswith(b"\r\n") else 1]
                    continue
                start = max(0, self._scan - 3)
                p = buf.find(b"\r\n\r\n", start)
                q = buf.find(b"\n\n", start, p if p >= 0 else len(buf))
                if q >= 0:
                    end = q + 2
                elif p >= 0:
                    end = p + 4
                else:
                    if len(buf) > self.max_message:
                        raise SipError("header section too large", 513)
                    self._scan = len(buf)
                    break
                if end > self.max_message:
                    raise SipError("header section too large", 513)
                total = end + _content_length(bytes(buf[:end]))
                if total > self.max_message:
                    raise SipError("message too large", 513)
                self._total = total
            if len(buf) < total:
                break  # the header end is known; only the body is missing
            out.append(bytes(buf[:total]))
            del buf[:total]
            self._scan = 0
            self._total = 0
        return out
