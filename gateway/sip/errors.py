"""The one exception of the SIP layer (h11 style: the error carries the answer).

A caller that catches ``SipError`` has everything it needs to reply: the
status to send and a short reason phrase. The reason never quotes request
bytes, so it is safe to put in a response or a log line.
"""

from __future__ import annotations


class SipError(Exception):
    """A message we refuse; ``status`` is the SIP response a server should send."""

    __slots__ = ("reason", "status")

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason, status)
        self.reason = reason
        self.status = status

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"
