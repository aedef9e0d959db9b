"""What the engine needs from the outside: the admission store and the timers.

The engine and its helpers (breaker, budget, reference cache) depend on
these protocols, not on ``PolicyStore`` or the event loop, so their logic is
unit-tested with a fake store and a manual clock (tests/unit/policy); the
Redis adapter, ``policy.store.PolicyStore``, satisfies ``AdmissionStore``
structurally and has its own real-Redis tests (tests/integration).

The result types still live in ``policy.store`` (another change owns that
module's layout); they are plain frozen dataclasses and move here unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from policy.model import Consent, DncEntry, Enterprise, NumberFiling, Trunk
from policy.store import CalleeResult, RateResult, StoreError

__all__ = [
    "AdmissionStore",
    "CalleeResult",
    "Handle",
    "RateResult",
    "RefSource",
    "StoreError",
    "Timers",
]


class Handle(Protocol):
    """A scheduled callback (``asyncio.TimerHandle``)."""

    def cancel(self) -> None: ...


class Timers(Protocol):
    """The part of the event loop that keeps time: ``asyncio.AbstractEventLoop`` fits.

    Budget timers, the late-answer judge and the breaker's probes are armed
    here, so a test drives them with a manual clock instead of sleeping.
    """

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> Handle: ...


class RefSource(Protocol):
    """Where the reference data (trunks, enterprises, filings) and its versions come from.

    Filings are read apart (policy.refcache): a delta by the numbers a
    version changed, or every record in bounded batches; trunks and
    enterprises are read whole with both versions.
    """

    async def ref_version(self) -> int: ...

    async def ref_versions(self) -> tuple[int, int]: ...

    async def load_refdata(
        self,
    ) -> tuple[list[Trunk], list[Enterprise], list[NumberFiling], int]: ...

    async def load_ref_small(self) -> tuple[list[Trunk], list[Enterprise], int, int]: ...

    async def filing_changes(self, since: int, upto: int) -> list[str] | None: ...

    async def filing_records(self, numbers: Sequence[str]) -> dict[str, dict[str, Any] | None]: ...

    def scan_filing_records(self, count: int = ...) -> AsyncIterator[list[dict[str, Any]]]: ...

    async def filings_extending(self, key: str, max_candidates: int = ...) -> list[str]: ...

    async def subscribe_changes(
        self, on_change: Callable[[int], None], stop: asyncio.Event
    ) -> None: ...


class AdmissionStore(RefSource, Protocol):
    """The store under the admission engine (SPEC §4: the counters and the per-callee records).

    Hot-path calls return futures at once: every call made in one event-loop
    turn leaves in one pipeline, and a future that fails carries a
    ``StoreError``. The async calls are off the hot path.
    """

    def admit_callee(
        self,
        *,
        callee: str,
        token: str | None,
        enterprise_id: str,
        purpose: str | None,
        allowed_purposes: tuple[str, ...],
        now_ms: int,
        quiet_fail: bool,
        daily_limit: int,
        total_limit: int,
        day: str,
        day_ttl: int,
        txn: str,
        dry_run: bool = False,
    ) -> asyncio.Future[CalleeResult]: ...

    def token_callee(self, token: str) -> asyncio.Future[str | None]: ...

    def rate(
        self,
        scope: Literal["n", "t"],
        ident: str,
        *,
        limit: int,
        max_concurrent: int = 0,
        now_ms: int,
        call_id: str,
        txn: str,
        concurrency_timeout_s: int = 14400,
        dry_run: bool = False,
    ) -> asyncio.Future[RateResult]: ...

    def refund(
        self, kind: Literal["admit", "rate"], keys: tuple[str, ...], call_id: str = ""
    ) -> asyncio.Future[bool]: ...

    def release(self, trunk_id: str, call_id: str) -> asyncio.Future[bool]: ...

    def unconsented(
        self, enterprise_id: str, threshold: int, window_s: int
    ) -> asyncio.Future[tuple[int, bool]]: ...

    async def ping(self) -> bool: ...

    async def set_status(
        self,
        kind: Literal["enterprise", "trunk"],
        ident: str,
        status: str,
        *,
        cause: str | None = None,
        at: datetime | None = None,
    ) -> bool: ...

    async def get_consent(self, token: str) -> Consent | None: ...

    async def get_dnc(self, number: str) -> DncEntry | None: ...


if TYPE_CHECKING:
    from policy.store import PolicyStore

    def _redis_store_is_an_admission_store(store: PolicyStore) -> AdmissionStore:
        """Never called: mypy checks here that ``PolicyStore`` satisfies the protocol."""
        return store
