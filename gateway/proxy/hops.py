"""Next hops: parsing, weighted choice and up/down health (SPEC §6 "Next hops").

Health is kept per worker: a hop is marked down when it lets an INVITE time
out or leaves an OPTIONS probe unanswered, and up again only when it answers
a probe, so a dead hop costs at most one hop timeout per worker per probe
interval instead of one per call.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final, final

# Module level, not a ClassVar of the frozen dataclass: mypyc makes that attribute read-only.
_TRANSPORTS: Final = ("udp", "tcp", "tls")


@dataclass(frozen=True)
@final
class NextHop:
    host: str
    port: int
    transport: str = "udp"
    weight: int = 1

    @classmethod
    def parse(cls, text: str) -> NextHop:
        """``[udp:|tcp:|tls:]HOST:PORT[;weight=N]`` (UDP by default; IPv6 as ``[::1]:5060``)."""
        main, _, params = text.strip().partition(";")
        transport = "udp"
        head, sep, rest = main.partition(":")
        if sep and head.lower() in _TRANSPORTS:
            transport = head.lower()
            main = rest
        if main.startswith("["):
            host, sep, port_s = main[1:].partition("]:")
        else:
            host, sep, port_s = main.rpartition(":")
        if not sep or not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise ValueError(f"bad next hop {text!r}: expected [udp:|tcp:|tls:]HOST:PORT[;weight=N]")
        weight = 1
        for p in params.split(";"):
            name, _, value = p.strip().partition("=")
            if name.lower() == "weight":
                if not value.isdigit():
                    raise ValueError(f"bad weight in next hop {text!r}")
                weight = int(value)
            elif name:
                raise ValueError(f"unknown parameter {name!r} in next hop {text!r}")
        return cls(host, int(port_s), transport, weight)

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)

    def __str__(self) -> str:
        return f"{self.transport}:{self.host}:{self.port};weight={self.weight}"


@final
class HopSet:
    """The configured hops with their health; indices are stable (they go into Record-Route tokens)."""

    __slots__ = ("addrs", "hops", "hosts", "retired", "up")

    def __init__(self, hops: tuple[NextHop, ...]) -> None:
        self.hops = hops
        self.up = [True] * len(hops)
        self.retired: frozenset[int] = frozenset()  # removed by a reload: dialogs only, no new calls
        self.hosts = frozenset(h.host for h in hops)
        self.addrs = {h.addr: i for i, h in enumerate(hops)}

    def pick(self, rng: random.Random, tried: Collection[int] = ()) -> int | None:
        """Weighted random among up hops not yet tried; on a first attempt with none up, among all."""
        hops, up, retired = self.hops, self.up, self.retired
        cands = [
            i for i in range(len(hops)) if up[i] and i not in retired and (not tried or i not in tried)
        ]
        if not cands:
            if tried:
                return None  # failover goes only to hops believed up
            cands = [i for i in range(len(hops)) if i not in retired]
            if not cands:
                return None
        if len(cands) == 1:
            return cands[0]
        total = sum(hops[i].weight for i in cands)
        if total <= 0:
            return cands[rng.randrange(len(cands))]
        r = rng.random() * total
        for i in cands:
            r -= hops[i].weight
            if r < 0:
                return i
        return cands[-1]

    def replaced(self, hops: tuple[NextHop, ...]) -> HopSet:
        """The set after a reload (SIGHUP) to ``hops``, every existing index kept.

        Record-Route tokens of established dialogs carry a hop index, so a
        hop keeps its index for as long as the worker lives: a hop still
        configured keeps it (new weight), a new one is appended, one no longer
        configured is retired (never picked for a new call, still the target
        of its dialogs' BYEs and re-INVITEs). Health carries over.
        """
        merged = list(self.hops)
        up = list(self.up)
        live: set[int] = set()
        for h in hops:
            for i, old in enumerate(merged):
                if (old.host, old.port, old.transport) == (h.host, h.port, h.transport):
                    merged[i] = h
                    live.add(i)
                    break
            else:
                merged.append(h)
                up.append(True)
                live.add(len(merged) - 1)
        new = HopSet(tuple(merged))
        new.up = up
        new.retired = frozenset(range(len(merged))) - live
        return new

    def mark(self, index: int, up: bool) -> bool:
        """Set a hop's health; True when it changed (worth a log line)."""
        if 0 <= index < len(self.up) and self.up[index] != up:
            self.up[index] = up
            return True
        return False

    def status(self) -> list[tuple[NextHop, bool]]:
        return list(zip(self.hops, self.up, strict=True))
