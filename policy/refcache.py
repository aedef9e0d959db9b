"""The worker's in-memory reference data: trunks, enterprises, filings, reloaded on version change.

The in-memory checks run on this snapshot, so a decision needs no Redis
round trip for them. A change is seen within a second: a pub/sub
notification wakes the refresh at once, and a version poll every
``refresh_interval_s`` is the back-stop. When Redis is away the last
snapshot stays in service and ``confirmed_at`` (when the snapshot was last
known current) is the age a NOC watches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from policy.ports import RefSource, StoreError
from policy.ratelog import LimitedLog
from policy.rules import RefData

log = logging.getLogger(__name__)

RELOAD_TIMEOUT_S = 5.0


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
        self.ref: RefData = RefData.build([], [], [], version=-1)
        self.loaded = False  # a snapshot has been loaded once
        self.refresh_ok = False  # the last load or version check reached Redis
        # When the snapshot was last known current (loaded, or its version checked
        # against Redis); wall-clock seconds, 0 before the first load.
        self.confirmed_at = 0.0
        self._wall = wall
        self._limited = limited or LimitedLog(log)
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    def on_change(self, version: int) -> None:
        """Pub/sub callback: a write bumped the version; refresh now unless we hold it."""
        if version != self.ref.version:
            self._wake.set()

    def wake(self) -> None:
        """Check the version now (a suspension just written, the breaker just closed)."""
        self._wake.set()

    async def reload(self) -> None:
        """Load a consistent snapshot; raises what the source raises."""
        async with self._lock:
            trunks, enterprises, filings, version = await self.source.load_refdata()
            self.ref = RefData.build(trunks, enterprises, filings, version=version)
            self.loaded = True
            self.refresh_ok = True
            self.confirmed_at = self._wall()
            log.info("reference data version %d: %r", version, self.ref)

    async def refresh(self, poll_timeout: float = 1.0) -> None:
        """One check: reload if the version moved (or nothing is loaded yet); never raises."""
        try:
            version = await asyncio.wait_for(self.source.ref_version(), poll_timeout)
            if version != self.ref.version or not self.loaded:
                await asyncio.wait_for(self.reload(), RELOAD_TIMEOUT_S)
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

    async def run(self, interval: float, stop: asyncio.Event) -> None:
        """Refresh on every notification, and every ``interval`` s, until ``stop``."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
            except TimeoutError:
                pass
            self._wake.clear()
            if stop.is_set():
                return
            await self.refresh(max(interval, 1.0))
