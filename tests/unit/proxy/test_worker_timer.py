"""The worker's one timer for the core (STYLE §7): armed from ``next_deadline()``, never a polling tick.

Driven with a fake loop that records ``call_at`` and a fake core whose
deadline the test moves; then once with the real core, through ``_receive``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import gateway.worker as worker_mod
from gateway.config import Settings
from tests.unit.proxy._support import TRUNK, invite, make_core

INF = float("inf")


class _Meter:
    def count(self, *a: Any, **kw: Any) -> None:
        pass

    def observe(self, *a: Any) -> None:
        pass


@pytest.fixture(autouse=True)
def _no_prometheus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's metrics module is bound in the worker process only (multiprocess mode)."""
    monkeypatch.setattr(worker_mod, "metrics", type("M", (), {"Meter": _Meter, "INVITES": None}))


class _Handle:
    def __init__(self, when: float, cb: Callable[[], None]) -> None:
        self.when, self.cb, self.cancelled = when, cb, False

    def cancel(self) -> None:
        self.cancelled = True


class _Loop:
    def __init__(self) -> None:
        self.armed: list[_Handle] = []

    def call_at(self, when: float, cb: Callable[[], None]) -> _Handle:
        h = _Handle(when, cb)
        self.armed.append(h)
        return h

    def live(self) -> list[_Handle]:
        return [h for h in self.armed if not h.cancelled]


class _Core:
    def __init__(self) -> None:
        self.deadline = INF
        self.ticks: list[float] = []

    def next_deadline(self) -> float:
        return self.deadline

    def tick(self, now: float) -> list[Any]:
        self.ticks.append(now)
        return []


async def _worker(core: Any) -> tuple[worker_mod.Worker, _Loop]:
    w = worker_mod.Worker(worker_mod.WorkerSpec(0, Settings(), "redis://unused", b"k", [], "gw"))
    loop = _Loop()
    w.loop = loop  # type: ignore[assignment]
    w.core = core
    return w, loop


async def test_an_idle_core_arms_nothing() -> None:
    w, loop = await _worker(_Core())
    w._arm()
    assert loop.armed == []


async def test_rearmed_only_when_the_deadline_moves_earlier() -> None:
    core = _Core()
    w, loop = await _worker(core)
    core.deadline = 10.0
    w._arm()
    w._arm()  # unchanged: nothing new
    core.deadline = 12.0
    w._arm()  # later: the armed timer stays (it wakes the core early once)
    assert [h.when for h in loop.live()] == [10.0 + worker_mod.TIMER_SLACK_S]
    core.deadline = 5.0
    w._arm()
    assert [h.when for h in loop.live()] == [5.0 + worker_mod.TIMER_SLACK_S]
    assert len(loop.armed) == 2 and loop.armed[0].cancelled


async def test_the_timer_ticks_the_core_and_arms_the_next_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    core = _Core()
    w, loop = await _worker(core)
    core.deadline = 10.0
    w._arm()
    monkeypatch.setattr(worker_mod, "core_time", lambda: 10.002)
    core.deadline = 42.0  # what the tick leaves
    loop.live()[0].cb()
    assert core.ticks == [10.002]
    assert [h.when for h in loop.live()] == [10.0 + worker_mod.TIMER_SLACK_S, 42.0 + worker_mod.TIMER_SLACK_S]
    core.deadline = INF  # nothing left: the worker sleeps
    loop.live()[-1].cb()
    assert len(loop.armed) == 2


async def test_a_message_arms_the_real_cores_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    core = make_core(probe_interval=0.0)
    w, loop = await _worker(core)
    monkeypatch.setattr(worker_mod, "metrics", _NoMetrics())
    monkeypatch.setattr(worker_mod, "core_time", lambda: 1000.0)
    w._dispatch = lambda actions: None  # type: ignore[method-assign]
    # UDP: the timer is armed once per read pass (UdpReader's ``after`` is ``Worker._arm``), not per datagram.
    w._receive(invite(), TRUNK, "udp", None, False)  # a pending server transaction: its bound is a deadline
    assert core.next_deadline() < INF
    assert loop.live() == []
    w._arm()  # the end of the read pass
    assert [h.when for h in loop.live()] == [core.next_deadline() + worker_mod.TIMER_SLACK_S]


async def test_a_stream_message_arms_the_real_cores_deadline_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    core = make_core(probe_interval=0.0)
    w, loop = await _worker(core)
    monkeypatch.setattr(worker_mod, "metrics", _NoMetrics())
    monkeypatch.setattr(worker_mod, "core_time", lambda: 1000.0)
    w._dispatch = lambda actions: None  # type: ignore[method-assign]
    w._receive(invite(), TRUNK, "tcp", 7, False)  # no read pass around a stream message: armed at once
    assert core.next_deadline() < INF
    assert [h.when for h in loop.live()] == [core.next_deadline() + worker_mod.TIMER_SLACK_S]


class _NoMetrics:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"metrics.{name} used")
