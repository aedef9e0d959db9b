"""What every part of the store shares: the keys, the result types, ``StoreError``.

The key layout itself is told in ``policy/store.py``'s docstring; this module
holds the names and the small decoders that ``policy.store``,
``policy.store_refdata`` and ``policy.store_writes`` all use, so none of them
imports another for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from policy.layout import callee_tag

LIBRARY = "cag"
CHANNEL = "cag:ref:changed"
LAYERS_CHANGED = "layers"  # message on CHANNEL: the consent/DNC layer pointer moved
REF_VERSION = "{cag:ref}:version"
REF_KINDS = ("trunks", "enterprises", "filings")
# Filings change by deltas (policy.refcache): every filings write bumps FILINGS_VERSION
# with REF_VERSION in one MULTI and records, in FILINGS_LOG, version -> the numbers it
# changed (msgpack list), or FILINGS_FULL for a rewrite (--replace, or more than
# FILINGS_DELTA_MAX rows). The log keeps the last FILINGS_LOG_KEEP versions; a worker
# further behind reads the whole kind again. REF_VERSION - FILINGS_VERSION moves only
# when trunks, enterprises or operator statuses change: what a worker reloads then.
FILINGS_VERSION = "{cag:ref}:filings:version"
FILINGS_LOG = "{cag:ref}:filings:log"
# Filed national-key lengths -> count (a superset after upserts; exact after --replace):
# what lets `cag explain` look up the longer forms of a caller (R4) by HMGET.
FILINGS_LENS = "{cag:ref}:filings:lens"
FILINGS_FULL = b"*"
FILINGS_LOG_KEEP = 1024
FILINGS_DELTA_MAX = 50_000
REF_MULTI_MAX = 5000  # reference records written in one MULTI; more are staged (RefWriter)
TXN_TTL = 64  # s; SPEC section 4 asks for >= 32 s
DAY_TTL_SLACK = 3600  # s kept after callee-local midnight (clock skew, late refunds)
SOCKET_TIMEOUT = 2.0  # s; the engine's budget cuts a decision much earlier


def ref_key(kind: str) -> str:
    return f"{{cag:ref}}:{kind}"


def day_key(callee: str, enterprise_id: str, day: str) -> str:
    return f"{callee_tag(callee)}:day:{enterprise_id}:{day}"


def total_day_key(callee: str, day: str) -> str:
    return f"{callee_tag(callee)}:day:*:{day}"


def callee_txn_key(callee: str, txn: str) -> str:
    return f"{callee_tag(callee)}:txn:{txn}"


def txn_key(tag: str, txn: str) -> str:
    return f"{{{tag}}}:txn:{txn}"


def rate_key(tag: str, second: int) -> str:
    return f"{{{tag}}}:rate:{second}"


def conc_key(trunk_id: str) -> str:
    return f"{{t:{trunk_id}}}:conc"


def unconsented_key(enterprise_id: str) -> str:
    return f"{{e:{enterprise_id}}}:unconsented"


class StoreError(Exception):
    """Redis is unreachable or answered with an error; the engine applies its fail mode."""


@dataclass(frozen=True, slots=True)
class CalleeResult:
    """What ``cag_admit`` said; counts are the values before this call."""

    consent_reason: str | None
    dnc_reason: str | None
    used: int
    evidence_ref: str | None
    consent_purpose: str | None
    day_count: int
    total_count: int
    counted: bool
    replay: bool
    refunded: bool  # replay of a transaction that was refunded (its decision was a rejection)
    keys: tuple[str, ...]  # for cag_refund


@dataclass(frozen=True, slots=True)
class RateResult:
    """What ``cag_rate`` said; counts are the values before this call."""

    rate_count: int
    concurrent: int
    counted: bool
    replay: bool
    refunded: bool
    keys: tuple[str, ...]  # for cag_refund


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _opt(v: Any) -> str | None:
    s = _s(v) if v is not None else ""
    return s or None


def _pairs(flat: Any) -> dict[str, Any]:
    if isinstance(flat, dict):
        return {_s(k): v for k, v in flat.items()}
    return {_s(flat[i]): flat[i + 1] for i in range(0, len(flat) - 1, 2)}
