"""Shared builders for the archive tests: entries, and the reference every reader must agree with."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from gateway.audit import segments
from gateway.audit.export import Query, records
from gateway.audit.record import COLUMNS, Entry, sort_key

H = segments.HOUR_US
T0 = 1_773_115_200_000_000  # 2026-03-10T04:00:00Z


def dec(rid: str, t: int, **kw: Any) -> Entry:
    e: Entry = {"k": "d", "rid": rid, "t": t, "call_id": f"c-{rid}", "decision": "admit", "reason": "admitted",
                "sip_code": 0, "latency_us": 7, "node": "gw", "worker": 1, "caller": "+8640010001",
                "callee": f"+86138{abs(hash(rid)) % 10**8:08d}", "trunk_id": "T1", "enterprise_id": "E1"}
    e.update(kw)
    return {k: v for k, v in e.items() if v is not None}


def out(rid: str, dt: int | None, t: int, **kw: Any) -> Entry:
    e: Entry = {"k": "o", "rid": rid, "t": t, "call_id": f"c-{rid}", **kw}
    if dt is not None:
        e["dt"] = dt
    return e


def reference(entries: list[Entry], q: Query | None = None) -> list[Entry]:
    """What export must give: the Python merge and join of every entry (record.join)."""
    return list(records([sorted(entries, key=sort_key)], q or Query()))


def jsonl(rows: list[Entry]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows)


def csv_text(rows: list[Entry]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


class Errors(list[tuple[Path, str]]):
    def __call__(self, path: Path, msg: str) -> None:
        self.append((path, msg))
