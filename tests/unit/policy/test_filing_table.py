"""The compact filings table: same answers as a dict of records, deltas, folding, bounded steps, bytes."""

from __future__ import annotations

import random
import tracemalloc
from bisect import bisect_left
from typing import Any

import pytest

from policy.model import NumberFiling
from policy.numbers import national_key
from policy.rules.filing_table import STEP, FilingBuilder, FilingTable, decode, encode


def _rec(number: str, ent: str, **kw: Any) -> dict[str, Any]:
    return NumberFiling(number=number, enterprise_id=ent, **kw).model_dump(mode="json")


class Oracle:
    """The earlier in-worker form (a dict of records, per-enterprise sorted keys): what the table must answer."""

    def __init__(self, recs: dict[str, dict[str, Any]]) -> None:
        self.recs = recs
        per: dict[str, set[str]] = {}
        for number, r in recs.items():
            per.setdefault(r["enterprise_id"], set()).add(national_key(number))
        self.sets = per
        self.sorted = {e: sorted(v) for e, v in per.items()}

    def length_altered(self, caller: str, ent: str) -> str | None:
        keys = self.sets.get(ent)
        if not keys:
            return None
        key = national_key(caller)
        for end in range(len(key) - 1, 0, -1):
            if key[:end] in keys:
                return key[:end]
        ordered = self.sorted[ent]
        i = bisect_left(ordered, key)
        while i < len(ordered) and ordered[i] == key:
            i += 1
        if i < len(ordered) and ordered[i].startswith(key):
            return ordered[i]
        return None


def _numbers(rng: random.Random, n: int) -> list[str]:
    out = set()
    while len(out) < n:
        kind = rng.random()
        if kind < 0.6:
            out.add("+86138" + str(rng.randrange(10**8)).zfill(8)[: rng.choice((7, 8, 8, 8))])
        elif kind < 0.8:
            out.add("9558" + str(rng.randrange(10**4))[: rng.randrange(1, 5)])
        elif kind < 0.95:
            out.add("+1212" + str(rng.randrange(10**7)).zfill(7))
        else:
            # A leading zero after '+': kept apart from the '+'-less form.
            out.add("+0" + str(rng.randrange(10**3)))
    return sorted(out)


def _table(recs: dict[str, dict[str, Any]]) -> FilingTable:
    b = FilingBuilder()
    for r in recs.values():
        b.add(r)
    for _ in b.steps():
        pass
    return b.table()


def _check(table: FilingTable, oracle: Oracle, callers: list[str]) -> None:
    assert len(table) == len(oracle.recs)
    assert sorted(table) == sorted(oracle.recs)
    for number, r in oracle.recs.items():
        p = table.profile(number)
        assert p is not None and (p.enterprise_id, p.status, p.outbound) == (
            r["enterprise_id"],
            r["status"],
            r["outbound"],
        )
        got = table.get(number)
        assert got is not None and got.model_dump(mode="json") == r
    for c in callers:
        assert (c in table) == (c in oracle.recs)
        for ent in ("e1", "e2", "e3"):
            assert table.length_altered(c, ent) == oracle.length_altered(c, ent), (c, ent)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_answers_as_the_dict_of_records_did_through_deltas_and_a_fold(seed: int) -> None:
    rng = random.Random(seed)
    numbers = _numbers(rng, 3000)
    recs = {
        n: _rec(
            n,
            rng.choice(("e1", "e2", "e3")),
            outbound=rng.random() < 0.8,
            status=rng.choice(("active", "active", "suspended")),
            carrier=rng.choice(("", "cm")),
        )
        for n in numbers
    }
    # Callers: filed numbers, with a digit appended or removed, and strangers.
    callers = [
        *rng.sample(numbers, 300),
        *(n + "7" for n in rng.sample(numbers, 200)),
        *(n[:-1] for n in rng.sample(numbers, 200)),
        *(n[:-3] for n in rng.sample(numbers, 50)),
        *_numbers(random.Random(seed + 100), 200),
    ]
    table = _table(recs)
    _check(table, Oracle(recs), callers)

    # A delta: some removed, some changed (another enterprise), some added.
    changes: dict[str, dict[str, Any] | None] = {}
    for n in rng.sample(numbers, 200):
        changes[n] = None
    for n in rng.sample(numbers, 200):
        changes[n] = _rec(n, rng.choice(("e1", "e2", "e3")), outbound=True)
    for n in _numbers(random.Random(seed + 7), 300):
        changes[n] = _rec(n, "e2", outbound=True)
    before = dict(recs)
    changed = table.with_changes(changes)
    for n, r in changes.items():
        if r is None:
            recs.pop(n, None)
        else:
            recs[n] = r
    _check(changed, Oracle(recs), callers + list(changes))
    _check(table, Oracle(before), callers)  # the old snapshot did not move

    # A large delta goes into new arrays directly: the same answers.
    b = table.rebuild(changes)
    for _ in b.steps():
        pass
    _check(b.table(), Oracle(recs), callers + list(changes))

    # Folding the overlay into new arrays answers the same.
    b = changed.rebuild()
    for _ in b.steps():
        pass
    folded = b.table()
    assert folded.overlay_size == 0 and changed.overlay_size > 0
    _check(folded, Oracle(recs), callers + list(changes))


def test_numbers_as_integers_one_to_one() -> None:
    for key in ("+8613800138000", "95588", "+0123", "0123", "123", "+1", "1", "+" + "9" * 17):
        assert decode(encode(key)) == key
    assert len({encode(k) for k in ("+0123", "0123", "123", "+123")}) == 4
    for odd in ("", "+", "abc", "+86-1", "1" * 18, "١٢٣"):
        assert encode(odd) == -1


def test_odd_keys_are_kept_too() -> None:
    t = FilingTable.of([NumberFiling(number="x-1", enterprise_id="e", outbound=True)])
    assert "x-1" in t and len(t) == 1 and t["x-1"].enterprise_id == "e"


def test_the_same_number_twice_is_one_filing_the_last_scanned_kept() -> None:
    b = FilingBuilder()
    b.add(_rec("+8613800138000", "e1"))
    b.add(_rec("+8613800138000", "e1"))
    for _ in b.steps():
        pass
    assert len(b.table()) == 1


def test_a_build_yields_between_bounded_pieces_of_work() -> None:
    b = FilingBuilder()
    n = 5 * STEP
    for i in range(n):
        b.add({"number": f"+86138{i:08d}", "enterprise_id": f"e{i % 7}"})
    yields = sum(1 for _ in b.steps())
    assert yields >= 2 * n // STEP  # sorting and indexing each in STEP-sized pieces
    t = b.table()
    assert (
        len(t) == n
        and "+8613800000042" in t
        and t.length_altered("+86138000000421", "e0") == "13800000042"
    )


def test_a_delta_shares_the_arrays() -> None:
    t = FilingTable.of(
        [NumberFiling(number=f"+86138{i:08d}", enterprise_id="e") for i in range(1000)]
    )
    t2 = t.with_changes({"+8613800000001": None, "+8613900000000": _rec("+8613900000000", "e")})
    assert (
        t2._keys is t._keys
        and len(t2) == 1000
        and "+8613800000001" not in t2
        and "+8613800000001" in t
    )
    t3 = t2.with_changes({"+8619999999999": None})  # removing what is not there: no tombstone
    assert t3.overlay_size == t2.overlay_size


def test_bytes_per_filing() -> None:
    """50k filings (10 enterprises, 3 profiles each): under 40 B each all told (target: 1M in 200 MiB)."""
    n = 50_000
    tracemalloc.start()
    b = FilingBuilder()
    for i in range(n):
        b.add(
            {
                "number": f"+86138{i * 37 % 10**8:08d}",
                "enterprise_id": f"e{i % 10}",
                "status": ("active", "suspended", "active")[i % 3],
                "outbound": True,
            }
        )
    for _ in b.steps():
        pass
    t = b.table()
    del b
    held, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(t) == n
    assert held / n < 40, held / n
