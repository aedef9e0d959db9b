"""Every change made through the API goes into the audit trail (who, what, when; SPEC §10).

The entry (``gateway.audit.record.change_entry``) is XADDed to the same
stream as the workers' decisions, so the archiver files it and ``cag audit
export`` shows it among the calls (``decision`` = ``api``). A change whose
record cannot be written is still made: the write succeeded and refusing
afterwards would be a lie, so the failure is logged loudly and counted.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from gateway.audit.record import change_entry, pack, to_us
from gateway.audit.sink import FIELD, STREAM

log = logging.getLogger("cag.api.audit")


class ChangeLog:
    def __init__(self, client: Any, stream: str = STREAM) -> None:
        self.client = client
        self.stream = stream
        self.failed = 0

    async def record(self, actor: str, action: str, **fields: Any) -> str:
        """Write one change entry; returns its record id (``api-…``)."""
        rid = f"api-{uuid.uuid4().hex}"
        entry = change_entry(rid, to_us(time.time()), actor, action, **fields)
        try:
            await self.client.xadd(self.stream, {FIELD: pack(entry)})
        except Exception as e:  # RedisError, OSError: the change itself is already made
            self.failed += 1
            log.error("audit record of %s by %s not written: %s (%s)", action, actor, e, fields)
        return rid
