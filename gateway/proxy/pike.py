"""Per-source request-rate limiting with temporary blocking, after Kamailio's ``pike``.

Sans-IO: ``hit(ip, now)`` is called once per request before it is parsed and
answers "drop it". No socket, no clock, no timer: time comes in as ``now``.

Parameters (Kamailio names in brackets; Settings keys ``pike_*``):

- ``interval`` [sampling_time_unit], seconds: the window over which requests
  from one address are counted.
- ``density`` [reqs_density_per_unit]: more requests than this from one
  address within one window marks the address as flooding. 0 turns the module
  off.
- ``block`` [remove_latency], seconds: how long a flooding address stays
  blocked. Every request it sends while blocked is dropped and, like pike,
  keeps it blocked (the block is extended) so a flood that never pauses never
  gets through.
- ``max_sources``: bound on tracked addresses so a spoofed-source flood cannot
  grow memory without limit; when full, idle entries are swept and, if that is
  not enough, new addresses are simply not tracked (fail open: better to let
  a request reach the cheap unknown-source check than to block a trunk).

Unlike Kamailio's tree of IP prefixes this keeps one counter per exact
address: the gateway's trunks and next hops are few, and the unknown-source
check (a set lookup) already drops everything from addresses we do not know.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

__all__ = ["Pike", "PikeConfig"]


@dataclass(frozen=True)
@final
class PikeConfig:
    density: int = 0  # requests per interval per address before blocking; 0 = off
    interval: float = 2.0  # seconds per sampling window
    block: float = 60.0  # seconds an address stays blocked after its last excess request
    max_sources: int = 100_000  # addresses tracked at most


@final
class Pike:
    """Fixed-window counter per source address plus a block list. Not thread-safe."""

    __slots__ = ("_blocked", "_windows", "blocks", "cfg")

    def __init__(self, cfg: PikeConfig) -> None:
        self.cfg = cfg
        # ip -> [window start, count]; a list so the hot path mutates in place.
        self._windows: dict[str, list[float]] = {}
        self._blocked: dict[str, float] = {}  # ip -> blocked until
        self.blocks = 0  # addresses that went from ok to blocked (a counter for metrics)

    @property
    def enabled(self) -> bool:
        return self.cfg.density > 0

    def blocked(self) -> list[str]:
        """Addresses on the block list; an expired entry is only removed on its next hit or a sweep."""
        return sorted(self._blocked)

    def hit(self, ip: str, now: float) -> bool:
        """Count one request from ``ip`` at ``now``; True means drop it."""
        cfg = self.cfg
        until = self._blocked.get(ip)
        if until is not None:
            if now < until:
                self._blocked[ip] = now + cfg.block  # a flood that keeps going stays blocked
                return True
            del self._blocked[ip]
        w = self._windows.get(ip)
        if w is None:
            if len(self._windows) + len(self._blocked) >= cfg.max_sources:
                self._sweep(now)
                if len(self._windows) + len(self._blocked) >= cfg.max_sources:
                    return False
            self._windows[ip] = [now, 1.0]
            return False
        if now - w[0] >= cfg.interval:
            w[0] = now
            w[1] = 1.0
            return False
        w[1] += 1.0
        if w[1] > cfg.density:
            self._blocked[ip] = now + cfg.block
            del self._windows[ip]
            self.blocks += 1
            return True
        return False

    def _sweep(self, now: float) -> None:
        """Forget windows that ended and blocks that expired (only when the table is full)."""
        interval = self.cfg.interval
        for ip in [ip for ip, w in self._windows.items() if now - w[0] >= interval]:
            del self._windows[ip]
        for ip in [ip for ip, until in self._blocked.items() if now >= until]:
            del self._blocked[ip]

    def __len__(self) -> int:
        return len(self._windows) + len(self._blocked)
