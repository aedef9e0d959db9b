"""Coalescer: one write per event-loop turn, each waiter told its own outcome."""

from __future__ import annotations

import asyncio

import pytest

from provisioning.batch import Coalescer


async def test_items_of_one_loop_turn_are_written_together() -> None:
    calls: list[list[int]] = []

    async def write(items: list[int]) -> None:
        await asyncio.sleep(0)
        calls.append(items)

    c: Coalescer[int] = Coalescer(write, max_batch=3)
    await asyncio.gather(*(c.submit(i) for i in range(5)))
    assert calls == [[0, 1, 2], [3, 4]]
    await c.submit(9)  # a later turn: a write of its own
    assert calls[-1] == [9]


async def test_items_arriving_during_a_write_go_out_together_next() -> None:
    calls: list[list[int]] = []
    release = asyncio.Event()

    async def write(items: list[int]) -> None:
        calls.append(items)
        if len(calls) == 1:
            await release.wait()

    c: Coalescer[int] = Coalescer(write)
    first = asyncio.ensure_future(c.submit(0))
    await asyncio.sleep(0.01)  # the first write is in flight
    later = [asyncio.ensure_future(c.submit(i)) for i in (1, 2, 3)]
    await asyncio.sleep(0.01)
    assert calls == [[0]] and not any(f.done() for f in later)
    release.set()
    await asyncio.gather(first, *later)
    assert calls == [[0], [1, 2, 3]]


async def test_a_failed_write_fails_every_waiter_of_that_batch() -> None:
    async def write(items: list[int]) -> None:
        raise OSError("redis went away")

    c: Coalescer[int] = Coalescer(write)
    results = await asyncio.gather(c.submit(1), c.submit(2), return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)
    with pytest.raises(OSError):
        await c.submit(3)
