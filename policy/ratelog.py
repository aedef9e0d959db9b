"""Warnings that repeat at most once per interval per key.

While Redis is away every decision fails the same way; one line every few
seconds says so without flooding the journal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

LOG_EVERY_S = 5.0


class LimitedLog:
    """``warning(key, msg, *args)`` logs once per ``every_s`` for each ``key``."""

    def __init__(
        self,
        log: logging.Logger,
        every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._every_s = every_s
        self._clock = clock
        self._last: dict[str, float] = {}

    def warning(self, key: str, msg: str, *args: object) -> None:
        now = self._clock()
        if now - self._last.get(key, -self._every_s) >= self._every_s:
            self._last[key] = now
            self._log.warning(msg, *args)
