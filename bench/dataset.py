"""The benchmarks' policy world, generated deterministically, and the calls that exercise it.

Every benchmark (sweep, replay, the synthetic capture of ``gen-pcap``) must
agree on which numbers are filed, which tokens are consents and which callees
are on the DNC list, without shipping a data file: so everything here is a
pure function of an index. Consent ``i`` is token ``bt{i:07d}`` for callee
``+86138{i:08d}``, all of enterprise ``E-MAIN`` (no quiet hours, no daily
cap, so an admitted call stays admitted however often a benchmark repeats
it); its family is fixed by ``i % 100`` so a call of any family can be drawn
from any part of a large data set:

- ``i % 100 == 99``: a consent that expired (``consent_expired``);
- ``i % 100 == 98``: a consent whose callee is also on the DNC list
  (``callee_dnc``: the consent is valid, DNC must still refuse);
- anything else: a valid consent (admitted calls and the other families).

Callers are access numbers, as call centres present: filed ones
``4001{i:06d}`` (every 100th filed inbound-only, ``caller_outbound_disabled``),
unfiled ones ``4009{i:06d}`` (``caller_not_filed``; an unfiled *subscriber*
number would be ``caller_subscriber_number`` instead).

Every family comes from the one trunk on loopback, so one SIPp caller can
place the whole mix. Families that hang on the trunk or the enterprise
(quiet hours per enterprise, suspended trunks) would need a second source
address and are not part of it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from policy.model import Consent, DncEntry, Enterprise, NumberFiling, QuietHours, Trunk

MAIN = "E-MAIN"
GRANTED = datetime(2026, 1, 1, tzinfo=UTC)
EXPIRED = datetime(2026, 2, 1, tzinfo=UTC)  # expires_at of the expired consents
CHUNK = 20_000  # records per put_records call

# Call families: name → the reason the gateway must give ("admit" for admitted calls).
FAMILIES: dict[str, str] = {
    "admit": "admit",
    "consent_unknown": "consent_unknown",
    "callee_dnc": "callee_dnc",
    "caller_not_filed": "caller_not_filed",
    "purpose_marketing": "purpose_marketing",
    "consent_expired": "consent_expired",
    "consent_missing": "consent_missing",
    "caller_outbound_disabled": "caller_outbound_disabled",
}

# The default mix: mostly admitted calls with consent, and every rejection family.
DEFAULT_MIX: dict[str, float] = {
    "admit": 90.0,
    "consent_unknown": 2.0,
    "callee_dnc": 2.0,
    "caller_not_filed": 2.0,
    "purpose_marketing": 2.0,
    "consent_expired": 0.5,
    "consent_missing": 0.5,
    "caller_outbound_disabled": 1.0,
}


@dataclass(frozen=True)
class DatasetSpec:
    """Sizes of the generated world; ``consents`` is the big one (Redis keys per callee)."""

    filed: int = 10_000
    consents: int = 1_000_000
    dnc_extra: int = 40_000  # DNC entries beyond the consented DNC callees (never called)
    sources: str = "127.0.0.0/8"  # the trunk's sources: the SIPp peers are on loopback

    def __post_init__(self) -> None:
        if self.filed < 100 or self.consents < 100:
            raise ValueError("need at least 100 filed numbers and 100 consents (families are i % 100)")

    @property
    def dnc_total(self) -> int:
        return self.consents // 100 + (1 if self.consents % 100 > 98 else 0) + self.dnc_extra


def filed_caller(i: int) -> str:
    return f"4001{i:06d}"


def unfiled_caller(i: int) -> str:
    return f"4009{i:06d}"


def consent_callee(i: int) -> str:
    return f"+86138{i:08d}"


def consent_token(i: int) -> str:
    return f"bt{i:07d}"


def parse_mix(text: str | None) -> dict[str, float]:
    """``admit=90,callee_dnc=5,...`` → weights; unknown families are an error, not a typo ignored."""
    if not text:
        return dict(DEFAULT_MIX)
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, weight = part.strip().partition("=")
        if not sep or name not in FAMILIES:
            raise ValueError(f"bad mix entry {part!r}: expected FAMILY=WEIGHT, FAMILY one of {', '.join(FAMILIES)}")
        mix[name] = float(weight)
    if sum(mix.values()) <= 0:
        raise ValueError("the mix has no positive weight")
    return mix


# ------------------------------------------------------------------ records
def trunks(spec: DatasetSpec) -> list[Trunk]:
    return [Trunk(trunk_id="T-BENCH", enterprise_id=MAIN, sources=tuple(spec.sources.split()))]


def enterprises() -> list[Enterprise]:
    return [
        Enterprise(enterprise_id=MAIN, name="Bench callback centre", callee_daily_cap=0,
                   quiet_hours=QuietHours.parse("none")),
    ]


def filings(spec: DatasetSpec) -> list[NumberFiling]:
    return [
        NumberFiling(number=filed_caller(i), enterprise_id=MAIN, carrier="bench",
                     usage="callback", inbound=True, outbound=i % 100 != 99, status="active")
        for i in range(spec.filed)
    ]


def consent_range(start: int, stop: int) -> list[Consent]:
    """Consents ``start`` ≤ i < ``stop``; ``model_construct`` skips validation (our values are valid).

    Validating a million pydantic models would take about as long as loading them.
    """
    return [
        Consent.model_construct(
            token=consent_token(i), callee=consent_callee(i), enterprise_id=MAIN,
            purpose="callback", granted_at=GRANTED, expires_at=EXPIRED if i % 100 == 99 else None, max_calls=None,
            evidence_ref=f"bench://{i}", revoked_at=None,
        )
        for i in range(start, stop)
    ]


def dnc_entries(spec: DatasetSpec) -> list[DncEntry]:
    out = [
        DncEntry.model_construct(number=consent_callee(i), scope="all", registered_at=GRANTED)
        for i in range(98, spec.consents, 100)
    ]
    out += [
        DncEntry.model_construct(number=f"+86139{j:08d}", scope="all", registered_at=GRANTED)
        for j in range(spec.dnc_extra)
    ]
    return out


# ------------------------------------------------------------------ calls
@dataclass(frozen=True)
class Call:
    """One call to place: the fields of the SIPp injection row, and what the gateway should say."""

    family: str
    caller: str
    callee: str
    token: str
    purpose: str

    def row(self) -> list[str]:
        return [self.caller, self.callee, self.token, self.purpose, self.family]


def _index(rng: random.Random, n: int, residue: int | None) -> int:
    """A consent index below ``n``: with ``i % 100 == residue``, or (None) of the admit pool."""
    while True:
        i = rng.randrange(n)
        if residue is None:
            if i % 100 < 98:
                return i
        else:
            i = i - i % 100 + residue
            if i < n:
                return i


def make_call(family: str, rng: random.Random, spec: DatasetSpec, serial: int) -> Call:
    """A call of ``family`` against ``spec``'s data (consents drawn at random across the set)."""
    n, filed = spec.consents, spec.filed

    def main_caller() -> str:
        i = rng.randrange(filed)
        return filed_caller(i - 1 if i % 100 == 99 else i)

    if family == "admit":
        i = _index(rng, n, None)
        return Call(family, main_caller(), consent_callee(i), consent_token(i), rng.choice(("callback", "")))
    if family == "consent_unknown":
        i = _index(rng, n, None)
        return Call(family, main_caller(), consent_callee(i), f"bx{serial:09d}", "callback")
    if family == "callee_dnc":
        i = _index(rng, n, 98)
        return Call(family, main_caller(), consent_callee(i), consent_token(i), "callback")
    if family == "caller_not_filed":
        i = _index(rng, n, None)
        return Call(family, unfiled_caller(rng.randrange(filed)), consent_callee(i), consent_token(i), "callback")
    if family == "purpose_marketing":
        i = _index(rng, n, None)
        return Call(family, main_caller(), consent_callee(i), consent_token(i), "marketing")
    if family == "consent_expired":
        i = _index(rng, n, 99)
        return Call(family, main_caller(), consent_callee(i), consent_token(i), "callback")
    if family == "consent_missing":
        i = _index(rng, n, None)
        return Call(family, main_caller(), consent_callee(i), "", "callback")
    if family == "caller_outbound_disabled":
        i = _index(rng, n, None)
        return Call(family, filed_caller(rng.randrange(filed // 100) * 100 + 99), consent_callee(i),
                    consent_token(i), "callback")
    raise ValueError(f"unknown family {family!r}")


def make_calls(count: int, mix: Mapping[str, float], spec: DatasetSpec, seed: int = 1) -> list[Call]:
    """``count`` calls in a shuffled order whose family shares follow ``mix`` (exact, not sampled)."""
    rng = random.Random(seed)  # not crypto: a reproducible benchmark load
    total = sum(mix.values())
    names = [f for f, w in mix.items() if w > 0]
    counts = {f: int(count * mix[f] / total) for f in names}
    # Hand the remainder to the largest families so the total is exact.
    for f in sorted(names, key=lambda f: -mix[f])[: count - sum(counts.values())]:
        counts[f] += 1
    families: list[str] = [f for f in names for _ in range(counts[f])]
    rng.shuffle(families)
    return [make_call(f, rng, spec, k) for k, f in enumerate(families)]


def rows(calls: Sequence[Call]) -> list[list[str]]:
    return [c.row() for c in calls]


# ------------------------------------------------------------------ loading
async def load(url: str, spec: DatasetSpec, progress: Callable[[str], None] = print) -> dict[str, float]:
    """Bulk-load the world through ``PolicyStore.put_records``; returns seconds per kind.

    Through the store, not a hand-written pipeline, so the keys are whatever
    the store writes today. Consents and DNC stream into one new generation
    each (policy/bulk.py), in chunks of 20,000 so memory stays flat.
    """
    from policy.store import PolicyStore, row_of

    took: dict[str, float] = {}
    store = await PolicyStore.connect(url)
    try:
        await store.ensure_functions()
        t0 = time.monotonic()
        await store.put_records("trunks", trunks(spec), replace=True)
        await store.put_records("enterprises", enterprises(), replace=True)
        await store.put_records("filings", filings(spec), replace=True)
        dnc = dnc_entries(spec)
        writer = await store.layer_writer("dnc", replace=True)
        for k in range(0, len(dnc), CHUNK):
            await writer.add([row_of(d) for d in dnc[k : k + CHUNK]])
        await writer.finish()
        await writer.commit(grace_s=0)
        took["reference_and_dnc"] = time.monotonic() - t0
        t0 = last = time.monotonic()
        # One generation for all consents (chunked upserts would each start an overlay).
        writer = await store.layer_writer("consents", replace=True)
        for lo in range(0, spec.consents, CHUNK):
            await writer.add([row_of(c) for c in consent_range(lo, min(lo + CHUNK, spec.consents))])
            if time.monotonic() - last > 5:
                last = time.monotonic()
                done = min(lo + CHUNK, spec.consents)
                progress(f"  consents {done:,}/{spec.consents:,} ({done / (last - t0):,.0f}/s)")
        await writer.finish()
        await writer.commit(grace_s=0)
        took["consents"] = time.monotonic() - t0
    finally:
        await store.close()
    return took
