"""Audit entries as plain dicts: what the sink writes, the archiver files and export joins.

Two kinds of entry travel the same path (stream → segment files):

- a *decision* entry (``k = "d"``), one per admission decision, written by the
  worker that decided;
- an *outcome* entry (``k = "o"``), written when an admitted call is
  answered, fails, or ends (the BYE may reach another worker or node);
- a *change* entry (``k = "a"``), one per change made through the
  provisioning API or the complaint intake (who, what, when: R12, SPEC §10).
  It exports as a row of the same columns: ``decision`` = ``"api"``,
  ``reason`` = the action, ``node`` = ``api:<key id>`` (the actor).

An outcome carries ``dt``, the time of its decision, so both kinds sort on
the same key ``(decision time, record id, kind)``: the archiver files an
outcome in its decision's partition and export joins them with a streaming
merge, never a lookup table. Times are integer microseconds since the epoch
(UTC); fields that are ``None`` are left out, which is most of the saving
between the Python object and the bytes on disk.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgpack

if TYPE_CHECKING:
    from policy.decision import Decision
    from policy.model import CallAttempt

Entry = dict[str, Any]
SortKey = tuple[int, str, int, int, int, int, int]

DECISION, OUTCOME, CHANGE = "d", "o", "a"

# The export's columns, in order (AuditRecord's fields, SPEC §7).
COLUMNS = (
    "record_id", "time", "call_id", "trunk_id", "enterprise_id", "caller", "callee",
    "decision", "reason", "sip_code", "consent_token", "evidence_ref", "latency_us",
    "node", "worker", "final_code", "answered_at", "ended_at",
)


def to_us(t: float) -> int:
    return round(t * 1_000_000)


def iso_us(us: int | None) -> str | None:
    """Microseconds since the epoch → ISO 8601 UTC with microseconds."""
    if us is None:
        return None
    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat(timespec="microseconds")


def decision_entry(
    record_id: str,
    call: CallAttempt,
    decision: Decision,
    latency_s: float,
    node: str,
    worker: int,
    t_us: int,
) -> Entry:
    """The decision entry for one admission decision (admit, reject, or shadow's would-reject)."""
    if decision.shadow_reject:
        verdict, reason = "would_reject", decision.shadow_reject
    else:
        verdict, reason = ("admit" if decision.admit else "reject"), decision.reason
    e: Entry = {
        "k": DECISION,
        "rid": record_id,
        "t": t_us,
        "call_id": call.call_id,
        "decision": verdict,
        "reason": reason,
        "sip_code": decision.sip_code,
        "latency_us": max(0, round(latency_s * 1_000_000)),
        "node": node,
        "worker": worker,
    }
    caller = decision.caller or call.pai_user or call.from_user
    callee = decision.callee or call.callee
    for name, value in (
        ("trunk_id", decision.trunk_id),
        ("enterprise_id", decision.enterprise_id),
        ("caller", caller),
        ("callee", callee),
        ("consent_token", decision.consent_token or call.consent_token),
        ("evidence_ref", decision.evidence_ref),
    ):
        if value:
            e[name] = value
    return e


def outcome_entry(
    record_id: str,
    call_id: str,
    decision_us: int | None,
    t_us: int,
    final_code: int | None,
    answered_at: float | None,
    ended_at: float | None,
) -> Entry:
    """An outcome; ``decision_us`` is the decision entry's ``t`` (``None``: not found)."""
    e: Entry = {"k": OUTCOME, "rid": record_id, "t": t_us, "call_id": call_id}
    if decision_us is not None:
        e["dt"] = decision_us
    if final_code is not None:
        e["final_code"] = final_code
    if answered_at is not None:
        e["answered_at"] = to_us(answered_at)
    if ended_at is not None:
        e["ended_at"] = to_us(ended_at)
    return e


def is_end(e: Entry) -> bool:
    return e.get("k") == OUTCOME and "ended_at" in e


def sort_key(e: Entry) -> SortKey:
    """Decision time, record id, decision before its outcomes, outcomes in event order.

    Two entries with the same key are the same entry written twice (the merge
    drops one), so an outcome's key also holds its fields: an answer and a
    BYE in the same microsecond stay two entries.
    """
    if e["k"] != OUTCOME:  # a decision, or a change (alone in its group)
        return (e["t"], e["rid"], 0, 0, 0, 0, 0)
    return (
        e["dt"] if "dt" in e else e["t"], e["rid"], 1, e["t"],
        e.get("final_code") or 0, e.get("answered_at") or 0, e.get("ended_at") or 0,
    )


# Every field an entry may carry, in the order of a chunk's columns and of the archive's files.
FIELDS = (
    "k", "rid", "t", "dt", "call_id", "trunk_id", "enterprise_id", "caller", "callee", "decision",
    "reason", "sip_code", "consent_token", "evidence_ref", "latency_us", "node", "worker",
    "final_code", "answered_at", "ended_at",
)
_FIELD_SET = frozenset(FIELDS)


def pack(e: Entry) -> bytes:
    return msgpack.packb(e, use_bin_type=True)


def pack_chunk(entries: list[Entry]) -> bytes:
    """Several entries as one stream entry: ``{"n": count, field: [value per entry], ...}``.

    Column-wise, so the archiver turns a chunk into Arrow arrays without
    building a dict per entry; fields no entry of the chunk has are left out.
    """
    present: set[str] = set().union(*entries)
    cols: dict[str, Any] = {"n": len(entries)}
    for f in FIELDS:
        if f in present:
            cols[f] = [e.get(f) for e in entries]
    for f in sorted(present - _FIELD_SET):  # a field this version does not know: kept, not archived
        cols[f] = [e.get(f) for e in entries]
    return msgpack.packb(cols, use_bin_type=True)


def chunk_columns(data: bytes) -> tuple[int, dict[str, list[Any]]]:
    """A chunk's entry count and columns, checked for shape (not for value types)."""
    m = msgpack.unpackb(data, raw=False)
    if not isinstance(m, dict):
        raise ValueError("not an audit chunk")
    n = m.pop("n", None)
    if not isinstance(n, int) or n < 0:
        raise ValueError("audit chunk without its count")
    for f in ("k", "rid", "t"):
        if n and f not in m:
            raise ValueError(f"audit chunk without {f!r}")
    for f, col in m.items():
        if not isinstance(col, list) or len(col) != n:
            raise ValueError(f"audit chunk column {f!r} is not {n} values")
    kinds = set(m.get("k", ()))
    if not kinds <= {DECISION, OUTCOME}:
        raise ValueError(f"audit chunk entry of kind {sorted(map(repr, kinds - {DECISION, OUTCOME}))}")
    return n, m


def unpack_chunk(data: bytes) -> list[Entry]:
    """A chunk's entries as dicts (fields that are ``None`` left out, as in ``pack``)."""
    n, cols = chunk_columns(data)
    out: list[Entry] = [{} for _ in range(n)]
    for f, col in cols.items():
        for e, v in zip(out, col, strict=True):
            if v is not None:
                e[f] = v
    for e in out:
        if "rid" not in e or "t" not in e:
            raise ValueError("not an audit entry")
    return out


def unpack(data: bytes) -> Entry:
    e = msgpack.unpackb(data, raw=False)
    if not isinstance(e, dict) or e.get("k") not in (DECISION, OUTCOME, CHANGE) or "rid" not in e or "t" not in e:
        raise ValueError("not an audit entry")
    return e


def join(group: list[Entry]) -> Entry | None:
    """One decision entry and its outcomes (any order, duplicates allowed) → an export row.

    ``None`` when the group holds no decision (an outcome whose decision is
    outside the range, or was lost before this design could see it).
    """
    if group[0]["k"] == CHANGE:
        return change_row(group[0])
    d = next((e for e in group if e["k"] == DECISION), None)
    if d is None:
        return None
    row: Entry = {c: None for c in COLUMNS}
    row.update(
        record_id=d["rid"], time=iso_us(d["t"]), call_id=d.get("call_id"),
        trunk_id=d.get("trunk_id"), enterprise_id=d.get("enterprise_id"), caller=d.get("caller"),
        callee=d.get("callee"), decision=d.get("decision"), reason=d.get("reason"),
        sip_code=d.get("sip_code"), consent_token=d.get("consent_token"),
        evidence_ref=d.get("evidence_ref"), latency_us=d.get("latency_us"), node=d.get("node"),
        worker=d.get("worker"),
    )
    for o in sorted((e for e in group if e["k"] == OUTCOME), key=lambda e: e["t"]):
        if row["final_code"] is None and o.get("final_code") is not None:
            row["final_code"] = o["final_code"]
        if row["answered_at"] is None and o.get("answered_at") is not None:
            row["answered_at"] = iso_us(o["answered_at"])
        if row["ended_at"] is None and o.get("ended_at") is not None:
            row["ended_at"] = iso_us(o["ended_at"])
    return row


# Entry fields of a change that become export columns as they are.
_CHANGE_COLUMNS = ("enterprise_id", "caller", "callee", "consent_token", "evidence_ref")


def change_entry(record_id: str, t_us: int, actor: str, action: str, **fields: Any) -> Entry:
    """A change made through the API (``actor`` = key id, or ``cli`` for the complaint command).

    Written as a decision-shaped entry (``decision = "api"``, ``reason`` = the action,
    ``node = "api:<actor>"``): exactly the row ``change_row`` exports, so the columnar
    archive, its compaction and the DuckDB views keep it like any record, with no
    kind of its own to carry. ``k = "a"`` entries from before are still read.
    """
    e: Entry = {"k": DECISION, "rid": record_id, "t": t_us, "decision": "api", "reason": action,
                "node": f"api:{actor}"}
    e.update({k: v for k, v in fields.items() if v is not None and k in _CHANGE_COLUMNS})
    return e


def change_row(e: Entry) -> Entry:
    """A change entry as an export row: same columns as a decision, so CSV stays one table."""
    row: Entry = {c: None for c in COLUMNS}
    row.update(record_id=e["rid"], time=iso_us(e["t"]), decision="api", reason=e.get("action"),
               node=f"api:{e.get('actor', '')}")
    for c in _CHANGE_COLUMNS:
        if e.get(c) is not None:
            row[c] = e[c]
    return row
