"""The in-memory snapshot of reference data (SPEC §4).

Trunks, enterprises and filings are small and change rarely, so each worker
holds an immutable snapshot and swaps in a new one when the store says the
version changed. Everything the hot path asks of it — which trunk owns this
source address (R9/R10), is this number filed (R3), is it a filed number
with its length changed (R4) — is answered from indexes built once here.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_left
from collections.abc import Iterable

from policy.model import Enterprise, NumberFiling, Trunk
from policy.numbers import national_key, normalize_number

__all__ = ["RefData", "filing_key"]

_IpNet = ipaddress.IPv4Network | ipaddress.IPv6Network
_CACHE_MAX = 65536


def filing_key(number: str, region: str = "CN") -> str:
    """The key a filing is stored under: the normalised number.

    The loader already stores normalised numbers; re-parsing every filing
    would make a snapshot rebuild slow, so numbers that are already in E.164
    form are taken as they are.
    """
    if number.startswith("+") and number[1:].isdigit():
        return number
    return normalize_number(number, region) or number


class _NetIndex:
    """Longest-prefix match for one address family: one hash lookup per distinct prefix length."""

    __slots__ = ("_levels",)

    def __init__(self) -> None:
        self._levels: list[tuple[int, int, dict[int, Trunk]]] = []

    def add(self, net: _IpNet, trunk: Trunk) -> None:
        for prefix, _mask, table in self._levels:
            if prefix == net.prefixlen:
                table.setdefault(int(net.network_address), trunk)
                return
        bits = net.max_prefixlen
        mask = ((1 << bits) - 1) ^ ((1 << (bits - net.prefixlen)) - 1)
        self._levels.append((net.prefixlen, mask, {int(net.network_address): trunk}))
        self._levels.sort(key=lambda level: -level[0])  # most specific first

    def lookup(self, addr: int) -> Trunk | None:
        for _prefix, mask, table in self._levels:
            trunk = table.get(addr & mask)
            if trunk is not None:
                return trunk
        return None


class RefData:
    """Immutable snapshot of trunks, enterprises and filings with lookup indexes.

    Build it with ``RefData.build``. The dicts are shared by every call in a
    worker and the indexes are derived from them: never mutate them, build a
    new snapshot instead.
    """

    __slots__ = (
        "_by_enterprise",
        "_cache",
        "_enterprise_sets",
        "_exact",
        "_v4",
        "_v6",
        "enterprises",
        "filings",
        "trunks",
        "version",
    )

    trunks: dict[str, Trunk]
    enterprises: dict[str, Enterprise]
    filings: dict[str, NumberFiling]  # keyed by normalised number
    version: int

    def __init__(
        self,
        trunks: dict[str, Trunk],
        enterprises: dict[str, Enterprise],
        filings: dict[str, NumberFiling],
        version: int,
    ) -> None:
        self.trunks = trunks
        self.enterprises = enterprises
        self.filings = filings
        self.version = version
        self._exact: dict[str, Trunk] = {}
        # Source address -> trunk, as looked up (parsing an address costs more than
        # the rest of the lookup). Bounded: a flood of spoofed sources just resets it.
        self._cache: dict[str, Trunk | None] = {}
        self._v4 = _NetIndex()
        self._v6 = _NetIndex()
        # R4 length test: per enterprise, the national keys of its filed numbers,
        # sorted (for "caller is a strict prefix of a filed number": one bisect)
        # and as a set (for "a filed number is a strict prefix of the caller").
        self._by_enterprise: dict[str, tuple[str, ...]] = {}
        self._enterprise_sets: dict[str, frozenset[str]] = {}

    @classmethod
    def build(
        cls,
        trunks: Iterable[Trunk],
        enterprises: Iterable[Enterprise],
        filings: Iterable[NumberFiling],
        version: int = 0,
    ) -> RefData:
        """Index a consistent set of reference records.

        When two trunks list the same network, the first one given keeps it
        (the loader rejects such overlaps; this keeps the lookup deterministic).
        """
        trunk_map = {t.trunk_id: t for t in trunks}
        ent_map = {e.enterprise_id: e for e in enterprises}
        filing_map: dict[str, NumberFiling] = {}
        for f in filings:
            filing_map[filing_key(f.number)] = f
        ref = cls(trunk_map, ent_map, filing_map, version)
        for trunk in trunk_map.values():
            for source in trunk.sources:
                net = ipaddress.ip_network(source, strict=False)
                if net.prefixlen == net.max_prefixlen:
                    ref._exact.setdefault(str(net.network_address), trunk)
                (ref._v4 if net.version == 4 else ref._v6).add(net, trunk)
        per_ent: dict[str, set[str]] = {}
        for number, f in filing_map.items():
            per_ent.setdefault(f.enterprise_id, set()).add(national_key(number))
        ref._by_enterprise = {e: tuple(sorted(keys)) for e, keys in per_ent.items()}
        ref._enterprise_sets = {e: frozenset(keys) for e, keys in per_ent.items()}
        return ref

    def trunk_for(self, ip: str) -> Trunk | None:
        """The trunk whose sources contain ``ip``, most specific prefix first (R9/R10)."""
        trunk = self._exact.get(ip)
        if trunk is not None:
            return trunk
        try:
            return self._cache[ip]
        except KeyError:
            pass
        trunk = self._lookup(ip)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[ip] = trunk
        return trunk

    def _lookup(self, ip: str) -> Trunk | None:
        try:
            addr = ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            return None
        if isinstance(addr, ipaddress.IPv6Address):
            mapped = addr.ipv4_mapped
            if mapped is not None:  # dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d
                return self._v4.lookup(int(mapped))
            return self._v6.lookup(int(addr))
        return self._v4.lookup(int(addr))

    def source_known(self, ip: str) -> bool:
        """Is ``ip`` inside some trunk's sources? Unknown sources are dropped (SPEC §3)."""
        return self.trunk_for(ip) is not None

    def length_altered(self, caller: str, enterprise_id: str) -> str | None:
        """A number filed to ``enterprise_id`` that ``caller`` is with digits appended or removed (R4).

        Returns the national key of that filed number, or None.
        """
        keys = self._enterprise_sets.get(enterprise_id)
        if not keys:
            return None
        key = national_key(caller)
        # A filed number is a strict prefix of the caller: digits appended.
        for end in range(len(key) - 1, 0, -1):
            if key[:end] in keys:
                return key[:end]
        # The caller is a strict prefix of a filed number: digits removed.
        ordered = self._by_enterprise[enterprise_id]
        i = bisect_left(ordered, key)
        while i < len(ordered) and ordered[i] == key:
            i += 1
        if i < len(ordered) and ordered[i].startswith(key):
            return ordered[i]
        return None

    def __repr__(self) -> str:
        return (
            f"RefData(version={self.version}, trunks={len(self.trunks)}, "
            f"enterprises={len(self.enterprises)}, filings={len(self.filings)})"
        )
