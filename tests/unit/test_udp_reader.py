"""``UdpReader``, ``next_datagram_bytes`` and ``WaitOverload`` on real sockets.

The overload signal is the time a datagram waited in the kernel queue
(SO_TIMESTAMPNS), so the tests make datagrams wait — a busy event loop —
and check the wait is seen, and not seen when the loop keeps up.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from gateway.transport import UdpReader, WaitOverload, next_datagram_bytes


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.1", 0))
    yield rx, tx
    tx.close()
    rx.close()


def _reader(rx: socket.socket, got: list[tuple[bytes, tuple[str, int]]], **kw: int) -> UdpReader:
    return UdpReader(
        rx,
        lambda data, src, tr, conn, private: got.append((data, src)),
        private=False,
        on_event=lambda e: None,
        **kw,
    )


async def _until(cond: object, timeout: float = 2.0) -> None:
    t = time.monotonic() + timeout
    while not cond() and time.monotonic() < t:  # type: ignore[operator]
        await asyncio.sleep(0.005)


async def test_datagrams_reach_the_sink_in_order_with_their_source(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    rx, tx = pair
    got: list[tuple[bytes, tuple[str, int]]] = []
    r = _reader(rx, got)
    r.start(asyncio.get_running_loop())
    try:
        for i in range(100):
            tx.sendto(b"m%d" % i, rx.getsockname())
        await _until(lambda: len(got) == 100)
        assert [d for d, _ in got] == [b"m%d" % i for i in range(100)]
        assert {s for _, s in got} == {tx.getsockname()}
        assert r.read_total == 100 and r.stamped
        r.sendto(b"answer", tx.getsockname())
        tx.settimeout(1.0)
        assert tx.recvfrom(100)[0] == b"answer"
    finally:
        r.close()


async def test_a_busy_loop_shows_as_queue_wait_and_an_idle_one_does_not(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    rx, tx = pair
    got: list[tuple[bytes, tuple[str, int]]] = []
    r = _reader(rx, got, max_per_turn=8)
    r.start(asyncio.get_running_loop())
    try:
        tx.sendto(b"x", rx.getsockname())
        await _until(lambda: len(got) == 1)
        assert r.take_max_wait() < 0.05  # the loop was idle: read at once
        for i in range(20):
            tx.sendto(b"y%d" % i, rx.getsockname())
        time.sleep(0.15)  # the worker is busy: the datagrams wait in the kernel
        await _until(lambda: len(got) == 21)
        assert r.take_max_wait() >= 0.15
        assert r.take_max_wait() == 0.0  # taken: reset
        assert r.last_read <= 8  # a bounded batch per readiness event
    finally:
        r.close()


def test_next_datagram_bytes_is_exact_and_zero_once_read(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    rx, tx = pair
    assert next_datagram_bytes(rx) == 0
    tx.sendto(b"a" * 900, rx.getsockname())
    tx.sendto(b"b" * 100, rx.getsockname())
    time.sleep(0.05)
    assert next_datagram_bytes(rx) == 900  # the next datagram, not queue memory
    rx.recv(2000)
    assert next_datagram_bytes(rx) == 100
    rx.recv(2000)
    assert next_datagram_bytes(rx) == 0


def test_wait_overload_enters_after_ticks_and_leaves_when_drained(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    rx, tx = pair
    w = WaitOverload(enter_s=0.05, leave_s=0.01, ticks=2)
    assert not w.update(0.2) and not w.overloaded  # one slow tick: a blip
    assert not w.update(0.001)
    assert not w.update(0.2)
    assert w.update(0.3) and w.overloaded
    assert not w.update(0.02)  # between leave and enter: hysteresis holds
    tx.sendto(b"z", rx.getsockname())
    time.sleep(0.05)
    assert not w.drained([rx]) and w.overloaded  # still something queued
    rx.recv(10)
    assert w.drained([rx]) and not w.overloaded
    w.update(0.2)
    w.update(0.2)
    assert w.overloaded and w.update(0.001) and not w.overloaded


async def test_after_runs_once_per_read_pass_not_per_datagram(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The worker arms its core timer in ``after``: once for a pass of many datagrams."""
    rx, tx = pair
    got: list[tuple[bytes, tuple[str, int]]] = []
    passes: list[int] = []
    r = UdpReader(
        rx,
        lambda data, src, tr, conn, private: got.append((data, src)),
        private=False,
        on_event=lambda e: None,
        after=lambda: passes.append(len(got)),
    )
    for i in range(30):
        tx.sendto(b"z%d" % i, rx.getsockname())
    time.sleep(0.05)  # all 30 queued before the first pass
    r.start(asyncio.get_running_loop())
    try:
        await _until(lambda: len(got) == 30)
        assert passes == [30]
        r._readable()  # a pass that reads nothing: no ``after``
        assert passes == [30]
    finally:
        r.close()
