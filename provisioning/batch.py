"""Coalescing writes made in one event-loop turn into one store call.

At a few hundred CRM requests a second, several consents are being
registered at any moment; each needs the store's two round trips
(``put_records``: read the token owners, then one MULTI/EXEC). Handing all
the consents that reach this point in the same loop turn to ONE
``put_records`` call costs those two round trips once for the lot: on the
reference box most of the API's CPU per request was spent in the Redis
client, not in the web framework. Each request still waits for its own
write to be done (or failed) before it answers, so nothing is acknowledged
that is not in Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Coalescer(Generic[T]):
    """``await submit(item)`` returns once ``write(items)`` has run for the items of that loop turn."""

    def __init__(self, write: Callable[[list[T]], Awaitable[object]], max_batch: int = 500) -> None:
        self._write = write
        self._max = max_batch
        self._queue: list[tuple[T, asyncio.Future[None]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if not self._queue:
            loop.call_soon(self._flush)
        self._queue.append((item, fut))
        await fut

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        for i in range(0, len(batch), self._max):
            task = asyncio.get_running_loop().create_task(self._run(batch[i : i + self._max]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[T, asyncio.Future[None]]]) -> None:
        try:
            await self._write([item for item, _ in batch])
        except BaseException as e:  # every waiter learns the outcome, cancellation included
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e if isinstance(e, Exception) else RuntimeError(f"write cancelled: {e!r}"))
            if not isinstance(e, Exception):
                raise
            return
        for _, fut in batch:
            if not fut.done():
                fut.set_result(None)
