"""The worker's in-memory reference data: trunks and enterprises reloaded, filings changed by deltas.

The in-memory checks run on this snapshot, so a decision needs no Redis
round trip for them. A change is seen within a second: a pub/sub
notification wakes the refresh at once, and a version poll every
``refresh_interval_s`` is the back-stop. When Redis is away the last
snapshot stays in service and ``confirmed_at`` (when the snapshot was last
known current) is the age a NOC watches.

Two versions drive it (policy/store_keys.py): when ``REF_VERSION -
FILINGS_VERSION`` moves (a suspension, a trunks or enterprises load) only
trunks and enterprises are read again, a few kB; when the filings version
moves, the numbers those versions changed are read (``filing_changes``,
``filing_records``) and applied to the compact table as a delta. A filings
rewrite (``--replace``), or a worker too far behind the log, builds a new
table from bounded HSCAN batches in a background task, in steps that let
calls through, and swaps it in; the old table serves until then. So
suspending a trunk with a million filings loaded costs what it costs
without them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from policy.numbers import national_key
from policy.ports import RefSource, StoreError
from policy.ratelog import LimitedLog
from policy.rules import RefData
from policy.rules.filing_table import FOLD_AT, FilingBuilder, FilingTable

log = logging.getLogger(__name__)

RELOAD_TIMEOUT_S = 5.0
SCAN_COUNT = 1000  # filings read and indexed between two turns of the loop (~3 ms)
BUILD_ATTEMPTS = 3  # a filings rewrite landing during a build makes it start over


class RefCache:
    """The current ``RefData`` snapshot and the loop that keeps it fresh."""

    def __init__(
        self,
        source: RefSource,
        *,
        wall: Callable[[], float] = time.time,
        limited: LimitedLog | None = None,
    ) -> None:
        self.source = source
        self.ref: RefData = RefData.build([], [], FilingTable.empty(), version=-1)
        self.loaded = False  # trunks, enterprises and filings have been loaded once
        self.refresh_ok = False  # the last load or version check reached Redis
        # When the snapshot was last known current (loaded, or its version checked
        # against Redis); wall-clock seconds, 0 before the first load.
        self.confirmed_at = 0.0
        self._wall = wall
        self._limited = limited or LimitedLog(log)
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._small = -1  # REF_VERSION - FILINGS_VERSION of the trunks/enterprises held
        self._small_loaded = False
        self._fver = -1  # FILINGS_VERSION of the filings table held
        self._build: asyncio.Task[None] | None = None
        self.builds = 0  # whole-table builds (tests and the bench watch this)
        self.deltas = 0  # filings deltas applied

    def on_change(self, version: int) -> None:
        """Pub/sub callback: a write bumped the version; refresh now unless we hold it."""
        if version != self.ref.version:
            self._wake.set()

    def wake(self) -> None:
        """Check the version now (a suspension just written, the breaker just closed)."""
        self._wake.set()

    async def reload(self) -> None:
        """Load everything afresh (start-up); raises what the source raises.

        The filings build runs as its own task: a caller's timeout (the
        engine waits ``RELOAD_TIMEOUT_S`` at start) does not cancel it, and
        the next refresh waits for the same build instead of starting over.
        """
        async with self._lock:
            await self._load_small()
        await asyncio.shield(self._start_build(None))
        self.refresh_ok = True
        self.confirmed_at = self._wall()

    async def _load_small(self) -> None:
        trunks, enterprises, version, fver = await self.source.load_ref_small()
        self.ref = RefData.build(trunks, enterprises, self.ref.filings, version=version)
        self._small = version - fver
        self._small_loaded = True
        log.info("reference data version %d: %r", version, self.ref)

    async def refresh(self, poll_timeout: float = 1.0) -> None:
        """One check: reload what moved (or everything if nothing is loaded yet); never raises."""
        try:
            version, fver = await asyncio.wait_for(self.source.ref_versions(), poll_timeout)
            if not self._small_loaded or version - fver != self._small:
                async with self._lock:
                    await asyncio.wait_for(self._load_small(), RELOAD_TIMEOUT_S)
            if not self.loaded:
                # The first table: a background build (the running one, if any), waited for a while.
                try:
                    await asyncio.wait_for(
                        asyncio.shield(self._start_build(None)), RELOAD_TIMEOUT_S
                    )
                except TimeoutError:
                    log.info("filings table still building (%s)", self.ref)
            elif fver != self._fver and self._build is None:
                await asyncio.wait_for(self._apply_delta(fver), RELOAD_TIMEOUT_S)
            if self._small == version - fver and self._fver == fver and self.ref.version != version:
                self.ref = self.ref.with_filings(self.ref.filings, version)
            self.refresh_ok = True
            self.confirmed_at = self._wall()
        except (StoreError, TimeoutError, OSError) as e:
            self.refresh_ok = False
            self._limited.warning(
                "refresh", "reference refresh failed (serving version %d): %s", self.ref.version, e
            )
        except Exception:
            self.refresh_ok = False
            log.exception("reference refresh failed")

    async def _apply_delta(self, fver: int) -> None:
        """Apply the filings versions after ours up to ``fver``; a rewrite starts a build instead."""
        since = self._fver
        changes = await self.source.filing_changes(since, fver)
        if changes is None:
            self._start_build(None)
            return
        records = await self.source.filing_records(changes)
        if self._build is not None or self._fver != since:
            return  # a build or another delta got there first
        if len(records) + self.ref.filings.overlay_size > FOLD_AT:
            # A large delta: into new arrays, in steps (the overlay is re-indexed per delta).
            self._start_build(self.ref.filings, records, fver)
            return
        table = self.ref.filings.with_changes(records)
        self.ref = self.ref.with_filings(table, self.ref.version)
        self._fver = fver
        self.deltas += 1
        log.info(
            "filings version %d: %d numbers changed (%d filings)", fver, len(records), len(table)
        )

    def _start_build(
        self,
        fold: FilingTable | None,
        changes: dict[str, dict[str, Any] | None] | None = None,
        at: int = -1,
    ) -> asyncio.Task[None]:
        """Build a new filings table in the background: from Redis, or ``fold``'s arrays with its
        overlay and ``changes`` (those bring it to filings version ``at``) folded in.

        Returns the build task (the one already running, if any).
        """
        if self._build is not None:
            return self._build
        task = asyncio.get_running_loop().create_task(self._build_table(fold, changes, at))
        self._build = task

        def done(t: asyncio.Task[None]) -> None:
            self._build = None
            if not t.cancelled() and t.exception() is not None:
                self._limited.warning("build", "filings table build failed: %s", t.exception())
            self._wake.set()  # catch up with whatever moved meanwhile

        task.add_done_callback(done)
        return task

    async def _build_table(
        self, fold: FilingTable | None, changes: dict[str, dict[str, Any] | None] | None, at: int
    ) -> None:
        for _ in range(BUILD_ATTEMPTS):
            if fold is not None:
                fv0 = at
                builder = fold.rebuild(changes)
            else:
                _, fv0 = await self.source.ref_versions()
                builder = FilingBuilder()
                async for batch in self.source.scan_filing_records(SCAN_COUNT):
                    # HSCAN's COUNT is a hint (a rehashing hash returns more): bounded pieces.
                    for i in range(0, len(batch), SCAN_COUNT):
                        for rec in batch[i : i + SCAN_COUNT]:
                            builder.add(rec)
                        await asyncio.sleep(0)  # calls go through between pieces
            for _ in builder.steps():
                await asyncio.sleep(0)
            table = builder.table()
            _, fv1 = await self.source.ref_versions()
            if fv1 != fv0:
                # Writes landed during the build: apply them (their records are read now).
                moved = await self.source.filing_changes(fv0, fv1)
                if moved is None:
                    fold = None
                    continue
                table = table.with_changes(await self.source.filing_records(moved))
            self.ref = self.ref.with_filings(table, self.ref.version)
            self._fver = fv1
            self.builds += 1
            if self._small_loaded:
                self.loaded = True
            log.info(
                "filings version %d: table of %d filings built (%.1f MiB)",
                fv1,
                len(table),
                table.nbytes() / 2**20,
            )
            return
        raise StoreError(f"filings rewritten {BUILD_ATTEMPTS} times during a build")

    async def load_for_call(self, caller: str | None) -> None:
        """What ``cag explain`` needs for one call, without reading every filing.

        Trunks and enterprises in full (small), and of the filings only
        those R3-R5 can touch for this caller: the caller itself, every
        number its national key's prefixes can be, and the filed numbers it
        is a strict prefix of (``filings_extending``: by the filed key lengths).
        """
        async with self._lock:
            await self._load_small()
        numbers: list[str] = []
        longer: list[str] = []
        if caller:
            key = national_key(caller)
            numbers.append(caller)
            for end in range(len(key) - 1, 0, -1):
                p = key[:end]
                numbers.extend([p] if p.startswith("+") else ["+86" + p, p])
            longer = await self.source.filings_extending(key)
        records = await self.source.filing_records([*numbers, *longer])
        table = FilingTable.empty().with_changes(records)
        self.ref = self.ref.with_filings(table, self.ref.version)
        self.loaded = True
        self.refresh_ok = True
        self.confirmed_at = self._wall()

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        """Refresh on every notification, and every ``interval`` s, until ``stop``."""
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(self._wake.wait(), interval)
                except TimeoutError:
                    pass
                self._wake.clear()
                if stop.is_set():
                    return
                await self.refresh(max(interval, 1.0))
        finally:
            if self._build is not None:
                self._build.cancel()
