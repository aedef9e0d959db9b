"""Finding the calls a complaint is about, in the audit trail (R12).

The one place that reads the audit trail for the provisioning side. It uses
the archive's indexed look-up (``gateway.audit.export.find``: only the row
groups that can hold the caller/callee are read, about a second for a 72 h
window over a day of calls at 1,000 calls/s). It is blocking (files and a
synchronous Redis client): async callers run it in a thread.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from gateway.audit.export import Query, find
from gateway.audit.record import Entry

log = logging.getLogger("cag.api.trace")

TRACE_WINDOW = timedelta(hours=72)


def calls_before(
    roots: list[Path],
    client: Any,
    *,
    callers: Iterable[str],
    callees: Iterable[str],
    reported_at: datetime,
    window: timedelta = TRACE_WINDOW,
) -> list[Entry]:
    """Decision rows for calls from any of ``callers`` to any of ``callees`` in ``window``
    before ``reported_at`` (inclusive), oldest first. ``client``: a synchronous Redis
    client for the not-yet-archived stream, or None."""
    until = reported_at
    since = until - window
    q = Query(
        since_us=round(since.timestamp() * 1_000_000),
        until_us=round(until.timestamp() * 1_000_000) + 1,
        caller=frozenset(callers),
        callee=frozenset(callees),
    )

    def on_error(path: Path, why: str) -> None:
        log.warning("audit archive %s: %s", path, why)

    roots = [r for r in roots if r.is_dir()]
    rows = find(roots, q, client=client, on_error=on_error)
    return [r for r in rows if r.get("decision") != "api"]
