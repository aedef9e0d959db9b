"""Every change made through the API goes into the audit trail (who, what, when; SPEC §10).

The entry (``gateway.audit.record.change_entry``) is XADDed to the same
stream as the workers' decisions, so the archiver files it and ``cag audit
export`` shows it among the calls (``decision`` = ``api``).

A request is answered only after its record is in the stream, but
concurrent requests' records go out together, one pipeline per write
(``provisioning.batch``): at a few hundred consents a second that saves a
Redis round trip, and its kernel send, per request. A change whose record
cannot be written is still made (the write succeeded and refusing
afterwards would be a lie): the failure is logged loudly and counted.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from gateway.audit.record import Entry, change_entry, pack, to_us
from gateway.audit.sink import FIELD, STREAM
from provisioning.batch import Coalescer

log = logging.getLogger("cag.api.audit")


class ChangeLog:
    """``record`` writes one change (batched with its neighbours); ``entry`` + ``write`` let a
    caller put a change's record into a write stage of its own (the consent grants)."""

    def __init__(self, client: Any, stream: str = STREAM,
                 pipeline: Callable[[Sequence[tuple[Any, ...]]], Awaitable[list[Any]]] | None = None) -> None:
        self.client = client
        self.stream = stream
        # PolicyStore.bulk_pipeline where there is one: packed by hiredis, no Pipeline object.
        self.pipeline = pipeline
        self.failed = 0
        self._batch: Coalescer[Entry] = Coalescer(self.write)

    @staticmethod
    def entry(actor: str, action: str, **fields: Any) -> Entry:
        return change_entry(f"api-{uuid.uuid4().hex}", to_us(time.time()), actor, action, **fields)

    async def record(self, actor: str, action: str, **fields: Any) -> str:
        """Write one change entry; returns its record id (``api-…``) once it is in the stream."""
        e = self.entry(actor, action, **fields)
        await self._batch.submit(e)
        return str(e["rid"])

    async def write(self, entries: list[Entry]) -> None:
        """XADD the entries in one pipeline; a failure is logged and counted, never raised."""
        try:
            if self.pipeline is not None:
                replies = await self.pipeline([("XADD", self.stream, "*", FIELD, pack(e)) for e in entries])
                bad = next((r for r in replies if isinstance(r, Exception)), None)
                if bad is not None:
                    raise bad
            else:
                pipe = self.client.pipeline(transaction=False)
                for entry in entries:
                    pipe.xadd(self.stream, {FIELD: pack(entry)})
                await pipe.execute()
        except Exception as e:  # RedisError, OSError: the changes themselves are already made
            self.failed += len(entries)
            for entry in entries:
                log.error("audit record of %s by %s not written: %s (%s)",
                          entry.get("reason"), entry.get("node"), e, entry)
