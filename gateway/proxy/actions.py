"""What the proxy core asks its adapter to do (aioquic style: the core returns work, never does I/O).

Plain slotted dataclasses: one is built per message on the hot path, so they
carry no validation and no behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

from policy.decision import Decision
from policy.model import CallAttempt

Addr = tuple[str, int]


@dataclass(slots=True)
@final
class Send:
    """Send ``data`` to ``dest``.

    ``private=True``: from this worker's own downstream UDP socket (its address
    is in our Via), so the responses come back to this worker; used towards
    next hops only (towards the trunk we send from the listen address, issue
    15 #3). ``conn_id``: the TCP or TLS connection to write on (responses
    leave on the request's connection); ``None`` over TCP / TLS means connect
    to / reuse a connection to ``dest``.
    """

    data: bytes
    dest: Addr
    transport: str  # "udp" | "tcp" | "tls"
    conn_id: int | None = None
    private: bool = False


@dataclass(slots=True)
@final
class Admit:
    """Ask policy about ``call``; the adapter answers with ``ProxyCore.decided(key, ...)``."""

    key: str
    call: CallAttempt
    record_id: str


@dataclass(slots=True)
@final
class Refused:
    """The core answered an INVITE itself (400, 482, 483, 503, already sent): finish it as a decision.

    No policy question: the adapter only counts, logs and audits it, as it
    does a policy decision (SPEC §7: every attempt is audited).
    """

    call: CallAttempt
    record_id: str
    decision: Decision


@dataclass(slots=True)
@final
class Release:
    """A concurrency slot is free again (BYE, CANCEL, final error, timeout)."""

    trunk_id: str
    call_id: str


@dataclass(slots=True)
@final
class Outcome:
    """What became of an admitted call, for the audit record (SPEC §7). Times are wall-clock."""

    record_id: str
    call_id: str
    final_code: int | None
    answered_at: float | None
    ended_at: float | None


Action = Send | Admit | Refused | Release | Outcome
