"""Every change made through the API goes into the audit trail (who, what, when; SPEC §10).

The entry (``gateway.audit.record.change_entry``) is XADDed to the same
stream as the workers' decisions, so the archiver files it and ``cag audit
export`` shows it among the calls (``decision`` = ``api``).

A request is answered only after its record is in the stream, but the
records of all requests that reach this point in the same event-loop turn
go out as ONE pipeline (as ``policy.store``'s batcher does for FCALLs): at
a few hundred consents a second that saves a Redis round trip, and its
kernel send, per request. A change whose record cannot be written is still
made (the write succeeded and refusing afterwards would be a lie): the
failure is logged loudly and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from gateway.audit.record import Entry, change_entry, pack, to_us
from gateway.audit.sink import FIELD, STREAM

log = logging.getLogger("cag.api.audit")


class ChangeLog:
    def __init__(self, client: Any, stream: str = STREAM) -> None:
        self.client = client
        self.stream = stream
        self.failed = 0
        self._queue: list[tuple[Entry, asyncio.Future[None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def record(self, actor: str, action: str, **fields: Any) -> str:
        """Write one change entry; returns its record id (``api-…``) once it is in the stream."""
        rid = f"api-{uuid.uuid4().hex}"
        entry = change_entry(rid, to_us(time.time()), actor, action, **fields)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if not self._queue:
            loop.call_soon(self._flush)
        self._queue.append((entry, fut))
        await fut
        return rid

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[Entry, asyncio.Future[None]]]) -> None:
        try:
            pipe = self.client.pipeline(transaction=False)
            for entry, _ in batch:
                pipe.xadd(self.stream, {FIELD: pack(entry)})
            await pipe.execute()
        except Exception as e:  # RedisError, OSError: the changes themselves are already made
            self.failed += len(batch)
            for entry, _ in batch:
                log.error("audit record of %s by %s not written: %s (%s)",
                          entry.get("action"), entry.get("actor"), e, entry)
        finally:
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)
