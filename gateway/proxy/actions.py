"""What the proxy core asks its adapter to do (aioquic style: the core returns work, never does I/O).

One is built per message on the hot path, so they carry no validation and no
behaviour. Each is a slotted dataclass (``__eq__``, ``__repr__`` for the
tests) with an explicit ``__init__`` over ``Final`` fields: mypyc compiles
that to direct slot stores (~30 ns) where a dataclass-generated ``__init__``
stays interpreted Python (~180 ns; docs/perf-objects-2026-12-07.md). ``Final``
also makes them read-only: mypy rejects an assignment, the compiled class has
no setter. Keep ``__init__``'s parameters the fields' names, in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, final

from policy.decision import Decision
from policy.model import CallAttempt

Addr = tuple[str, int]


@final
@dataclass(slots=True, init=False)
class Send:
    """Send ``data`` to ``dest``.

    ``private=True``: from this worker's own downstream UDP socket (its address
    is in our Via), so the responses come back to this worker; used towards
    next hops only (towards the trunk we send from the listen address, issue
    15 #3). ``conn_id``: the TCP or TLS connection to write on (responses
    leave on the request's connection); ``None`` over TCP / TLS means connect
    to / reuse a connection to ``dest``.
    """

    data: Final[bytes]
    dest: Final[Addr]
    transport: Final[str]  # "udp" | "tcp" | "tls"
    conn_id: Final[int | None]
    private: Final[bool]

    def __init__(
        self,
        data: bytes,
        dest: Addr,
        transport: str,
        conn_id: int | None = None,
        private: bool = False,
    ) -> None:
        self.data = data
        self.dest = dest
        self.transport = transport
        self.conn_id = conn_id
        self.private = private


@final
@dataclass(slots=True, init=False)
class Admit:
    """Ask policy about ``call``; the adapter answers with ``ProxyCore.decided(key, ...)``."""

    key: Final[str]
    call: Final[CallAttempt]
    record_id: Final[str]

    def __init__(self, key: str, call: CallAttempt, record_id: str) -> None:
        self.key = key
        self.call = call
        self.record_id = record_id


@final
@dataclass(slots=True, init=False)
class Refused:
    """The core answered an INVITE itself (400, 482, 483, 503, already sent): finish it as a decision.

    No policy question: the adapter only counts, logs and audits it, as it
    does a policy decision (SPEC §7: every attempt is audited).
    """

    call: Final[CallAttempt]
    record_id: Final[str]
    decision: Final[Decision]

    def __init__(self, call: CallAttempt, record_id: str, decision: Decision) -> None:
        self.call = call
        self.record_id = record_id
        self.decision = decision


@final
@dataclass(slots=True, init=False)
class Release:
    """A concurrency slot is free again (BYE, CANCEL, final error, timeout)."""

    trunk_id: Final[str]
    call_id: Final[str]

    def __init__(self, trunk_id: str, call_id: str) -> None:
        self.trunk_id = trunk_id
        self.call_id = call_id


@final
@dataclass(slots=True, init=False)
class Outcome:
    """What became of an admitted call, for the audit record (SPEC §7). Times are wall-clock."""

    record_id: Final[str]
    call_id: Final[str]
    final_code: Final[int | None]
    answered_at: Final[float | None]
    ended_at: Final[float | None]

    def __init__(
        self,
        record_id: str,
        call_id: str,
        final_code: int | None,
        answered_at: float | None,
        ended_at: float | None,
    ) -> None:
        self.record_id = record_id
        self.call_id = call_id
        self.final_code = final_code
        self.answered_at = answered_at
        self.ended_at = ended_at


Action = Send | Admit | Refused | Release | Outcome
