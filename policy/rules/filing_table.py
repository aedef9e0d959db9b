"""The filings a worker holds: a compact table, built in bounded steps, changed by deltas.

A carrier files a million numbers or more, and every worker needs them for
R3-R5 (is the caller filed, to whom, with its length changed?). As pydantic
models in a dict that cost ~1.3 KB per filing (1.5 GB per worker at 1M);
here a filing is two array slots, 12 bytes (the number as an integer, the
index of its *profile*), plus 8 bytes in its enterprise's sorted array of
national keys (for R4). A profile is what the filing says besides its
number (enterprise, carrier, usage, flags, status); a carrier's million
numbers share a handful of them.

* **Numbers as integers.** ``encode`` maps ``[+]digits`` (up to 17 digits)
  one-to-one onto an int64: ``"11" + digits`` with a '+', ``"10" + digits``
  without, so leading zeros and the '+' survive. Anything else (never
  produced by ``normalize_number``, but a filing file is data) lives in the
  overlay.
* **Sorted, built in steps.** Sorting a million integers in one call holds
  the event loop for ~0.4 s; ``FilingBuilder.steps`` sorts bucket by bucket
  (quantile splitters from a sample) and yields between pieces of bounded
  work, so the caller (``policy.refcache``) lets calls through meanwhile.
* **Deltas in an overlay.** A change (a filing added, changed, removed)
  goes into a small dict above the arrays, so a table with changes is a new
  object sharing the arrays: old snapshots stay valid, nothing is copied.
  Past ``FOLD_AT`` entries the cache folds the overlay into new arrays
  (``rebuild``), in steps again.

One module on purpose (over ~400 lines): the table and its builder share
the integer encoding and the layout of the arrays (the builder fills them,
a fold reads them back), which are checked best side by side.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping
from random import Random
from typing import Any

from policy.model import NumberFiling
from policy.numbers import national_key, normalize_number

__all__ = [
    "FOLD_AT",
    "FilingBuilder",
    "FilingProfile",
    "FilingTable",
    "decode",
    "encode",
    "filing_key",
]

MAX_DIGITS = 17  # "11" + 17 digits < 2**63
# Overlay entries before the cache folds them into the arrays: every delta re-indexes
# the overlay for R4 (~1 µs an entry), so it stays small.
FOLD_AT = 4096
STEP = 20000  # elements handled between two yields of a build
_BUCKET = 4096  # target elements per sort bucket
_SHIFT = 32  # packed build element: code << 32 | profile index
_MASK = (1 << _SHIFT) - 1
_GONE = -1  # overlay: the filing was removed
_ABSENT = -2


def filing_key(number: str, region: str = "CN") -> str:
    """The key a filing is stored under: the normalised number.

    The loader already stores normalised numbers; re-parsing every filing
    would make a table build slow, so numbers already in E.164 form are
    taken as they are.
    """
    if number.startswith("+") and number[1:].isdigit():
        return number
    return normalize_number(number, region) or number


def encode(key: str) -> int:
    """The integer of a ``[+]digits`` key (one-to-one), or -1 when it has no such form."""
    if key.startswith("+"):
        digits, head = key[1:], "11"
    else:
        digits, head = key, "10"
    if not digits or len(digits) > MAX_DIGITS or not digits.isascii() or not digits.isdigit():
        return -1
    return int(head + digits)


def decode(code: int) -> str:
    s = str(code)
    return ("+" if s[1] == "1" else "") + s[2:]


class FilingProfile:
    """What a filing says besides its number; shared by every number filed alike."""

    __slots__ = ("carrier", "enterprise_id", "inbound", "outbound", "status", "usage")

    def __init__(
        self,
        enterprise_id: str,
        carrier: str,
        usage: str,
        inbound: bool,
        outbound: bool,
        status: str,
    ) -> None:
        self.enterprise_id = enterprise_id
        self.carrier = carrier
        self.usage = usage
        self.inbound = inbound
        self.outbound = outbound
        self.status = status

    def filing(self, number: str) -> NumberFiling:
        return NumberFiling.model_construct(
            number=number,
            enterprise_id=self.enterprise_id,
            carrier=self.carrier,
            usage=self.usage,
            inbound=self.inbound,
            outbound=self.outbound,
            status=self.status,  # type: ignore[arg-type]
        )


class _Profiles:
    """Interned profiles: append-only, so tables sharing it never see an index change."""

    __slots__ = ("ids", "items")

    def __init__(self) -> None:
        self.ids: dict[tuple[str, str, str, bool, bool, str], int] = {}
        self.items: list[FilingProfile] = []

    def intern(self, rec: Mapping[str, Any]) -> int:
        k = (
            str(rec["enterprise_id"]),
            str(rec.get("carrier") or ""),
            str(rec.get("usage") or ""),
            bool(rec.get("inbound", True)),
            bool(rec.get("outbound", False)),
            str(rec.get("status") or "active"),
        )
        i = self.ids.get(k)
        if i is None:
            i = len(self.items)
            self.ids[k] = i
            self.items.append(FilingProfile(*k))
        return i


class FilingTable:
    """Number → filing, read-only; ``with_changes`` gives a new table (see the module doc).

    Reads as a mapping of normalised number → ``NumberFiling`` (``get``,
    ``in``, ``len``); the hot path asks ``profile(number)``, which builds
    nothing.
    """

    __slots__ = ("_ent_nat", "_keys", "_len", "_ov_nat", "_overlay", "_profiles", "_profs")

    def __init__(
        self,
        keys: array[int],
        profs: array[int],
        profiles: _Profiles,
        ent_nat: dict[str, array[int]],
        overlay: dict[str, int],
        length: int,
    ) -> None:
        self._keys = keys
        self._profs = profs
        self._profiles = profiles
        self._ent_nat = ent_nat
        self._overlay = overlay
        self._len = length
        # R4 over the overlay: per enterprise, the sorted national keys it holds.
        per: dict[str, list[str]] = {}
        items = profiles.items
        for number, idx in overlay.items():
            if idx >= 0:
                per.setdefault(items[idx].enterprise_id, []).append(national_key(number))
        self._ov_nat: dict[str, list[str]] = {e: sorted(v) for e, v in per.items()}

    @classmethod
    def empty(cls) -> FilingTable:
        return cls(array("q"), array("I"), _Profiles(), {}, {}, 0)

    @classmethod
    def of(cls, filings: Iterable[NumberFiling]) -> FilingTable:
        """A table of these filings, built at once (tests, small sets)."""
        b = FilingBuilder()
        for f in filings:
            b.add(f.model_dump())
        for _ in b.steps():
            pass
        return b.table()

    # ----------------------------------------------------------------- reads
    def profile(self, number: str) -> FilingProfile | None:
        """The filing of this normalised number, as its shared profile (no allocation)."""
        if self._overlay:
            idx = self._overlay.get(number, _ABSENT)
            if idx != _ABSENT:
                return self._profiles.items[idx] if idx >= 0 else None
        return self._base(number)

    def _base(self, number: str) -> FilingProfile | None:
        code = encode(number)
        if code < 0:
            return None
        keys = self._keys
        i = bisect_left(keys, code)
        if i < len(keys) and keys[i] == code:
            return self._profiles.items[self._profs[i]]
        return None

    def get(self, number: str, default: NumberFiling | None = None) -> NumberFiling | None:
        p = self.profile(number)
        return p.filing(number) if p is not None else default

    def __getitem__(self, number: str) -> NumberFiling:
        p = self.profile(number)
        if p is None:
            raise KeyError(number)
        return p.filing(number)

    def __contains__(self, number: object) -> bool:
        return isinstance(number, str) and self.profile(number) is not None

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[str]:
        """Every number (base order, then the overlay's); a whole-table walk, not for the hot path."""
        overlay = self._overlay
        for code in self._keys:
            number = decode(code)
            if number not in overlay:
                yield number
        for number, idx in overlay.items():
            if idx >= 0:
                yield number

    def items(self) -> Iterator[tuple[str, FilingProfile]]:
        for number in self:
            p = self.profile(number)
            if p is not None:
                yield number, p

    @property
    def overlay_size(self) -> int:
        return len(self._overlay)

    def nbytes(self) -> int:
        """The arrays' bytes (the bulk of the table; the overlay and profiles are small)."""
        n = self._keys.itemsize * len(self._keys) + self._profs.itemsize * len(self._profs)
        return n + sum(a.itemsize * len(a) for a in self._ent_nat.values())

    # ------------------------------------------------------------------- R4
    def length_altered(self, caller: str, enterprise_id: str) -> str | None:
        """A number filed to ``enterprise_id`` that ``caller`` is with digits appended or removed.

        Returns that number's national key, or None. "Removed": the
        lexicographically first filed key that ``caller``'s key is a strict
        prefix of (what a sorted list of keys gives).
        """
        key = national_key(caller)
        # A filed number is a strict prefix of the caller: digits appended.
        for end in range(len(key) - 1, 0, -1):
            if self._owned(key[:end], enterprise_id):
                return key[:end]
        # The caller is a strict prefix of a filed number: digits removed.
        found: list[str] = []
        ordered = self._ov_nat.get(enterprise_id)
        if ordered:
            i = bisect_right(ordered, key)
            if i < len(ordered) and ordered[i].startswith(key):
                found.append(ordered[i])
        arr = self._ent_nat.get(enterprise_id)
        code = encode(key)
        if arr is not None and code >= 0:
            width = len(str(code))
            scale = 10
            for _extra in range(1, MAX_DIGITS + 3 - width):
                lo, hi = code * scale, (code + 1) * scale
                i = bisect_left(arr, lo)
                while i < len(arr) and arr[i] < hi:
                    cand = decode(arr[i])
                    if self._owned(cand, enterprise_id):  # not changed since by the overlay
                        found.append(cand)
                        break
                    i += 1
                scale *= 10
        return min(found) if found else None

    def _owned(self, nat: str, enterprise_id: str) -> bool:
        """Is a number with this national key filed to ``enterprise_id``?"""
        if nat.startswith("+"):
            p = self.profile(nat)
            return p is not None and p.enterprise_id == enterprise_id
        p = self.profile("+86" + nat)
        if p is not None and p.enterprise_id == enterprise_id:
            return True
        p = self.profile(nat)
        return p is not None and p.enterprise_id == enterprise_id

    # ---------------------------------------------------------------- changes
    def with_changes(self, changes: Mapping[str, Mapping[str, Any] | None]) -> FilingTable:
        """A new table: ``changes`` maps a stored number to its record, or None (removed).

        The arrays are shared; the overlay is copied (it is small: the cache
        folds it past ``FOLD_AT``).
        """
        overlay = dict(self._overlay)
        length = self._len
        for field, rec in changes.items():
            # The hash field is the normalised number (RefWriter); a record says its own.
            number = filing_key(str(rec["number"])) if rec is not None else field
            had = self.profile(number) is not None
            if rec is None:
                overlay[number] = _GONE
                length -= had
            else:
                overlay[number] = self._profiles.intern(rec)
                length += not had
        # A removal of a number the base never had needs no tombstone.
        for number in [n for n, i in overlay.items() if i == _GONE and self._base(n) is None]:
            del overlay[number]
        return FilingTable(self._keys, self._profs, self._profiles, self._ent_nat, overlay, length)

    def rebuild(
        self, changes: Mapping[str, Mapping[str, Any] | None] | None = None
    ) -> FilingBuilder:
        """A builder of this table's filings, overlay and ``changes`` folded in; run its ``steps``.

        ``changes`` as for ``with_changes``: a large delta goes this way, in
        steps, rather than into the overlay at once.
        """
        b = FilingBuilder()
        b.add_table(self, changes)
        return b


class FilingBuilder:
    """Collects filings, then sorts them in bounded ``steps`` into a ``FilingTable``."""

    def __init__(self) -> None:
        self._profiles = _Profiles()
        self._packed: list[int] = []
        self._odd: dict[str, int] = {}
        self._source: FilingTable | None = None
        self._changes: dict[str, Mapping[str, Any] | None] = {}
        self._table: FilingTable | None = None

    def add(self, rec: Mapping[str, Any]) -> None:
        """One stored filing (its msgpack map, or a model dump); a later one of a number wins."""
        key = filing_key(str(rec["number"]))
        prof = self._profiles.intern(rec)
        code = encode(key)
        if code < 0:
            self._odd[key] = prof
        else:
            self._packed.append(code << _SHIFT | prof)

    def add_table(
        self, table: FilingTable, changes: Mapping[str, Mapping[str, Any] | None] | None = None
    ) -> None:
        self._source = table
        self._changes = dict(changes or {})

    def __len__(self) -> int:
        return len(self._packed) + len(self._odd)

    def steps(self) -> Iterator[None]:
        """Do the work, yielding after each bounded piece (~``STEP`` elements)."""
        src = self._source
        if src is not None:  # fold a table: re-intern its profiles, skip what the overlay changed
            items, overlay, changes = src._profiles.items, src._overlay, self._changes
            remap: dict[int, int] = {}
            keys, profs = src._keys, src._profs
            for start in range(0, len(keys), STEP):
                for i in range(start, min(start + STEP, len(keys))):
                    code = keys[i]
                    if overlay or changes:
                        number = decode(code)
                        if number in overlay or number in changes:
                            continue
                    p = profs[i]
                    q = remap.get(p)
                    if q is None:
                        q = remap[p] = self._reintern(items[p])
                    self._packed.append(code << _SHIFT | q)
                yield
            for number, idx in overlay.items():
                if idx >= 0 and number not in changes:
                    q = self._reintern(items[idx])
                    code = encode(number)
                    if code < 0:
                        self._odd[number] = q
                    else:
                        self._packed.append(code << _SHIFT | q)
            yield
            for rec in changes.values():
                if rec is not None:
                    self.add(rec)
            yield
        keys = array("q")
        profs = array("I")
        runs: list[list[int]] = []
        for _ in _bucket_sort(self._packed, runs):
            while runs:
                run = runs.pop(0)
                for x in run:
                    code = x >> _SHIFT
                    if keys and keys[-1] == code:
                        profs[-1] = x & _MASK  # the same number twice (a scan repeats): keep one
                    else:
                        keys.append(code)
                        profs.append(x & _MASK)
            yield
        self._packed = []
        # Per enterprise, the sorted national keys (R4): enterprise index << 64 | key code.
        ents: dict[str, int] = {}
        ent_of = [ents.setdefault(p.enterprise_id, len(ents)) for p in self._profiles.items]
        nat: list[int] = []
        for start in range(0, len(keys), STEP // 4):  # ~1.4 µs an element here: smaller pieces
            for i in range(start, min(start + STEP // 4, len(keys))):
                nat.append(ent_of[profs[i]] << 64 | encode(national_key(decode(keys[i]))))
            yield
        names = list(ents)
        ent_nat: dict[str, array[int]] = {}
        for _ in _bucket_sort(nat, runs):
            while runs:
                for x in runs.pop(0):
                    e = names[x >> 64]
                    a = ent_nat.get(e)
                    if a is None:
                        a = ent_nat[e] = array("q")
                    c = x & ((1 << 64) - 1)
                    if not a or a[-1] != c:
                        a.append(c)
            yield
        length = len(keys) + len(self._odd)
        self._table = FilingTable(keys, profs, self._profiles, ent_nat, dict(self._odd), length)

    def _reintern(self, p: FilingProfile) -> int:
        return self._profiles.intern(
            {
                "enterprise_id": p.enterprise_id,
                "carrier": p.carrier,
                "usage": p.usage,
                "inbound": p.inbound,
                "outbound": p.outbound,
                "status": p.status,
            }
        )

    def table(self) -> FilingTable:
        """The built table (after ``steps`` ran to the end)."""
        if self._table is None:
            raise RuntimeError("FilingBuilder.table() before its steps ran")
        return self._table


def _bucket_sort(items: list[int], out: list[list[int]]) -> Iterator[None]:
    """Sort ``items`` into ascending runs appended to ``out``, yielding between bounded pieces.

    Quantile splitters from a sample route every element to a bucket of
    ~``_BUCKET`` elements; each bucket is then sorted alone (a millisecond).
    ``items`` is emptied.
    """
    n = len(items)
    if n <= STEP:
        items.sort()
        out.append(list(items))
        items.clear()
        yield
        return
    # A random sample: a strided one can miss whole key ranges (keys of 20 enterprises
    # interleaved, stride a multiple of 4) and leave one bucket with 150k elements.
    sample = sorted(Random(n).sample(items, _BUCKET))
    nb = max(2, n // _BUCKET)
    splitters = [sample[(i * len(sample)) // nb] for i in range(1, nb)]
    buckets: list[list[int]] = [[] for _ in range(nb)]
    for start in range(0, n, STEP):
        for x in items[start : start + STEP]:
            buckets[bisect_right(splitters, x)].append(x)
        yield
    items.clear()
    for i in range(nb):
        # Handed over and forgotten here: the caller frees each bucket's integers as it
        # goes (freeing a million at the end in one go held the loop ~40 ms).
        b, buckets[i] = buckets[i], []
        b.sort()
        out.append(b)
        yield
