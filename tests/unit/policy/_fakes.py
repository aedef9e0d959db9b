"""A fake ``AdmissionStore`` and a manual clock for the engine's seams (no Redis, no sleeping)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from policy.model import Consent, DncEntry, Enterprise, NumberFiling, Trunk
from policy.ports import AdmissionStore, CalleeResult, RateResult, StoreError
from tests.unit.policy import _fixtures as fx


@dataclass(order=True)
class _Timer:
    when: float
    seq: int
    callback: Callable[..., object] = field(compare=False)
    args: tuple[Any, ...] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class ManualTimers:
    """``Timers`` on a clock that moves only when the test says so.

    ``advance`` runs each due timer at its own time (a loop that keeps up);
    ``stall`` moves the clock first and runs the due timers afterwards, all
    late, as a loop that was busy for that long.
    """

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._heap: list[_Timer] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., object], *args: Any) -> _Timer:
        t = _Timer(when, next(self._seq), callback, args)
        heapq.heappush(self._heap, t)
        return t

    def pending(self) -> int:
        return sum(not t.cancelled for t in self._heap)

    def _run_due(self, until: float, on_time: bool) -> None:
        while self._heap and self._heap[0].when <= until + 1e-9:
            t = heapq.heappop(self._heap)
            if t.cancelled:
                continue
            if on_time:
                self.now = max(self.now, t.when)
            t.callback(*t.args)

    def advance(self, dt: float) -> None:
        until = self.now + dt
        self._run_due(until, on_time=True)
        self.now = until

    def stall(self, dt: float) -> None:
        self.now += dt
        self._run_due(self.now, on_time=False)


async def turns(n: int = 5) -> None:
    """Let the event loop run future callbacks and woken tasks (no time passes)."""
    for _ in range(n):
        await asyncio.sleep(0)


def callee_result(**overrides: Any) -> CalleeResult:
    fields: dict[str, Any] = {
        "consent_reason": None,
        "dnc_reason": None,
        "used": 0,
        "evidence_ref": "ev-1",
        "consent_purpose": "callback",
        "day_count": 0,
        "total_count": 0,
        "counted": True,
        "replay": False,
        "refunded": False,
        "keys": ("{c:x}:txn:c1|b",),
    }
    fields.update(overrides)
    return CalleeResult(**fields)


def rate_result(**overrides: Any) -> RateResult:
    fields: dict[str, Any] = {
        "rate_count": 0,
        "concurrent": 0,
        "counted": True,
        "replay": False,
        "refunded": False,
        "keys": ("{t:t-a}:txn:c1|z9hG4bK1",),
    }
    fields.update(overrides)
    return RateResult(**fields)


class FakeStore:
    """An ``AdmissionStore`` in memory; ``mode`` says how the hot-path calls answer.

    ``"answer"``: at once, every check passes; ``"hang"``: never (until the
    test resolves ``calls``); ``"error"``: a ``StoreError``.
    """

    def __init__(self) -> None:
        self.mode: Literal["answer", "hang", "error"] = "answer"
        self.calls: list[tuple[str, asyncio.Future[Any]]] = []
        self.dry_runs: list[bool] = []  # dry_run of every script call, in order
        self.refunds: list[tuple[str, tuple[str, ...], str]] = []
        self.ping_ok = False
        self.pings = 0
        self.version = 7
        self.loads = 0
        self.ref_error: Exception | None = None
        self.trunks: list[Trunk] = fx.trunks()
        # Filings as the store keeps them: number -> stored map, a version, a change log.
        self.filings: dict[str, dict[str, Any]] = {
            f.number: f.model_dump(mode="json") for f in fx.filings()
        }
        self.filings_version = 0
        self.filings_log: dict[int, list[str] | None] = {}  # None: a rewrite
        self.scans = 0  # whole-kind filings reads

    def write_filings(self, changed: dict[str, NumberFiling | None]) -> None:
        """A filings write as RefWriter makes it: both versions bumped, the numbers logged."""
        for number, f in changed.items():
            if f is None:
                self.filings.pop(number, None)
            else:
                self.filings[number] = f.model_dump(mode="json")
        self.filings_version += 1
        self.version += 1
        self.filings_log[self.filings_version] = list(changed)

    def replace_filings(self, filings: list[NumberFiling]) -> None:
        self.filings = {f.number: f.model_dump(mode="json") for f in filings}
        self.filings_version += 1
        self.version += 1
        self.filings_log[self.filings_version] = None

    def _future(self, kind: str, result: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.calls.append((kind, fut))
        if self.mode == "answer":
            fut.set_result(result)
        elif self.mode == "error":
            fut.set_exception(StoreError("redis: connection refused"))
        return fut

    def hot_calls(self) -> list[str]:
        return [k for k, _ in self.calls if k in ("callee", "token", "rate")]

    # ---------------------------------------------------------- hot path
    def admit_callee(self, **kw: Any) -> asyncio.Future[CalleeResult]:
        self.dry_runs.append(kw.get("dry_run", False))
        return self._future("callee", callee_result())

    def token_callee(self, token: str) -> asyncio.Future[str | None]:
        return self._future("token", fx.CALLEE)

    def rate(self, scope: Literal["n", "t"], ident: str, **kw: Any) -> asyncio.Future[RateResult]:
        self.dry_runs.append(kw.get("dry_run", False))
        return self._future("rate", rate_result())

    def refund(
        self, kind: Literal["admit", "rate"], keys: tuple[str, ...], call_id: str = ""
    ) -> asyncio.Future[bool]:
        self.refunds.append((kind, keys, call_id))
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        fut.set_result(True)
        return fut

    def release(self, trunk_id: str, call_id: str) -> asyncio.Future[bool]:
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        fut.set_result(True)
        return fut

    def unconsented(
        self, enterprise_id: str, threshold: int, window_s: int
    ) -> asyncio.Future[tuple[int, bool]]:
        fut: asyncio.Future[tuple[int, bool]] = asyncio.get_running_loop().create_future()
        fut.set_result((1, False))
        return fut

    # --------------------------------------------------------- off path
    async def ping(self) -> bool:
        self.pings += 1
        if not self.ping_ok:
            raise StoreError("redis: connection refused")
        return True

    async def ref_version(self) -> int:
        if self.ref_error is not None:
            raise self.ref_error
        return self.version

    async def load_refdata(
        self,
    ) -> tuple[list[Trunk], list[Enterprise], list[NumberFiling], int]:
        if self.ref_error is not None:
            raise self.ref_error
        self.loads += 1
        return list(self.trunks), fx.enterprises(), fx.filings(), self.version

    async def ref_versions(self) -> tuple[int, int]:
        if self.ref_error is not None:
            raise self.ref_error
        return self.version, self.filings_version

    async def load_ref_small(self) -> tuple[list[Trunk], list[Enterprise], int, int]:
        if self.ref_error is not None:
            raise self.ref_error
        self.loads += 1
        return list(self.trunks), fx.enterprises(), self.version, self.filings_version

    async def filing_changes(self, since: int, upto: int) -> list[str] | None:
        if since < 0:
            return None
        out: list[str] = []
        for v in range(since + 1, upto + 1):
            numbers = self.filings_log.get(v)
            if numbers is None:
                return None
            out += numbers
        return out

    async def filing_records(self, numbers: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        return {n: self.filings.get(n) for n in numbers}

    async def scan_filing_records(self, count: int = 2) -> AsyncIterator[list[dict[str, Any]]]:
        self.scans += 1
        items = list(self.filings.values())
        for i in range(0, len(items), count):
            yield items[i : i + count]

    async def filings_extending(self, key: str, max_candidates: int = 0) -> list[str]:
        forms = [key] if key.startswith("+") else [key, "+86" + key]
        return [n for n in self.filings for p in forms if n.startswith(p) and len(n) > len(p)]

    async def subscribe_changes(
        self, on_change: Callable[[int], None], stop: asyncio.Event
    ) -> None:
        await stop.wait()

    async def set_status(
        self, kind: Literal["enterprise", "trunk"], ident: str, status: str, **kw: Any
    ) -> bool:
        return True

    async def get_consent(self, token: str) -> Consent | None:
        return fx.consent()

    async def get_dnc(self, number: str) -> DncEntry | None:
        return None


def answer_calls(store: FakeStore, start: int = 0, end: int | None = None) -> None:
    """Answer the store calls ``start:end`` not answered yet, each with its kind's default result."""
    for kind, fut in store.calls[start:end]:
        if not fut.done():
            fut.set_result(
                callee_result()
                if kind == "callee"
                else rate_result()
                if kind == "rate"
                else fx.CALLEE
            )


def _is_an_admission_store(store: FakeStore) -> AdmissionStore:
    """mypy: the fake satisfies the same protocol as ``PolicyStore``."""
    return store
