"""Coalescing concurrent writes into one store call.

At a few hundred CRM requests a second, several consents are being
registered at any moment; each needs the store's round trips (read the
token's owner, then the writes). Handing all the consents waiting at that
point to one write call (``PolicyStore.grant_consents``, then the audit
records' XADDs) lets them share its round trips: each costs the Redis
client tens of µs of CPU, a large part of a consent's CPU.

One write is in flight at a time. Items that arrive while it runs wait for
it and go out together as the next write, so batches grow with the load
and an idle API adds no delay (the first item is written at the end of its
loop turn). Each request still waits for its own write to be done (or
failed) before it answers, so nothing is acknowledged that is not in Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Coalescer(Generic[T]):
    """``await submit(item)`` returns once a ``write(items)`` that held ``item`` has run."""

    def __init__(self, write: Callable[[list[T]], Awaitable[object]], max_batch: int = 500) -> None:
        self._write = write
        self._max = max_batch
        self._queue: list[tuple[T, asyncio.Future[None]]] = []
        self._busy = False
        self._scheduled = False
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._queue.append((item, fut))
        if not self._busy and not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._start)
        await fut

    def _start(self) -> None:
        self._scheduled = False
        if not self._busy and self._queue:
            self._busy = True
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue[: self._max], self._queue[self._max :]
                await self._run(batch)
        finally:
            self._busy = False

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
