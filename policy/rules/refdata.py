"""The in-memory snapshot of reference data (SPEC §4).

Trunks and enterprises are small and change rarely, so each worker holds an
immutable snapshot and swaps in a new one when the store says the version
changed. Filings can number millions: they are a compact ``FilingTable``
(policy/rules/filing_table.py) that changes by deltas, shared by snapshots
that differ only in trunks or enterprises. Everything the hot path asks —
which trunk owns this source address (R9/R10), is this number filed (R3),
is it a filed number with its length changed (R4) — is answered from
indexes built once.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from policy.model import Enterprise, NumberFiling, Trunk
from policy.rules.filing_table import FilingTable, filing_key

__all__ = ["FilingTable", "RefData", "filing_key"]

_IpNet = ipaddress.IPv4Network | ipaddress.IPv6Network
_CACHE_MAX = 65536


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
        "_cache",
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
    filings: FilingTable  # keyed by normalised number
    version: int

    def __init__(
        self,
        trunks: dict[str, Trunk],
        enterprises: dict[str, Enterprise],
        filings: FilingTable,
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

    @classmethod
    def build(
        cls,
        trunks: Iterable[Trunk],
        enterprises: Iterable[Enterprise],
        filings: Iterable[NumberFiling] | FilingTable,
        version: int = 0,
    ) -> RefData:
        """Index a consistent set of reference records.

        ``filings`` as records builds the table at once (tests, small sets);
        the cache passes a table it built in steps or changed by a delta.
        When two trunks list the same network, the first one given keeps it
        (the loader rejects such overlaps; this keeps the lookup deterministic).
        """
        table = filings if isinstance(filings, FilingTable) else FilingTable.of(filings)
        trunk_map = {t.trunk_id: t for t in trunks}
        ent_map = {e.enterprise_id: e for e in enterprises}
        ref = cls(trunk_map, ent_map, table, version)
        for trunk in trunk_map.values():
            for source in trunk.sources:
                net = ipaddress.ip_network(source, strict=False)
                if net.prefixlen == net.max_prefixlen:
                    ref._exact.setdefault(str(net.network_address), trunk)
                (ref._v4 if net.version == 4 else ref._v6).add(net, trunk)
        return ref

    def with_filings(self, filings: FilingTable, version: int) -> RefData:
        """This snapshot's trunks and enterprises (indexes shared) with another filings table."""
        ref = RefData(self.trunks, self.enterprises, filings, version)
        ref._exact, ref._v4, ref._v6, ref._cache = self._exact, self._v4, self._v6, self._cache
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
        return self.filings.length_altered(caller, enterprise_id)

    def __repr__(self) -> str:
        return (
            f"RefData(version={self.version}, trunks={len(self.trunks)}, "
            f"enterprises={len(self.enterprises)}, filings={len(self.filings)})"
        )
