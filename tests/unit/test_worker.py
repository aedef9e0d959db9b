"""The worker's one way to finish an INVITE (``Worker._finish``): decisions, shedding, the core's refusals.

The worker is driven without sockets or Redis: a fake engine, a fake audit
sink and the real proxy core; what is checked is that every attempt is
answered once, counted and audited (SPEC §7).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

import gateway.worker as worker_mod
from gateway.config import Settings
from gateway.proxy import Admit, Outcome, Refused, Send
from policy.decision import Decision, admitted, reject
from policy.model import CallAttempt
from tests.unit.proxy._support import TRUNK, invite, make_core, status_of


class _Labelled:
    def __init__(self, counts: Counter[tuple[str, ...]], key: tuple[str, ...]) -> None:
        self.counts, self.key = counts, key

    def inc(self, n: float = 1) -> None:
        self.counts[self.key] += int(n)

    def observe(self, v: float) -> None:
        self.counts[self.key] += 1


class _Metric:
    def __init__(self) -> None:
        self.counts: Counter[tuple[str, ...]] = Counter()

    def labels(self, *key: str) -> _Labelled:
        return _Labelled(self.counts, key)

    def inc(self, n: float = 1) -> None:
        self.counts[()] += int(n)

    def observe(self, v: float) -> None:
        self.counts[()] += 1


class _Meter:
    """The worker's Meter, flushing at once so counts can be read straight after a call."""

    def count(self, metric: _Metric, *labels: str, n: int = 1) -> None:
        metric.labels(*labels).inc(n)

    def observe(self, hist: _Metric, seconds: float) -> None:
        hist.observe(seconds)

    def start(self, loop: Any) -> None:
        pass

    def stop(self) -> None:
        pass


class _Metrics:
    def __init__(self) -> None:
        self.DECISIONS = _Metric()
        self.INVITES = _Metric()
        self.DECISION_SECONDS = _Metric()
        self.Meter = _Meter


class _Audit:
    def __init__(self) -> None:
        self.decisions: list[tuple[str, CallAttempt, Decision]] = []
        self.outcomes: list[Outcome] = []

    def decision(self, record_id: str, call: CallAttempt, d: Decision, latency: float, node: str, worker: int) -> None:
        self.decisions.append((record_id, call, d))

    def outcome(self, o: Outcome) -> None:
        self.outcomes.append(o)


class _Engine:
    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        self.released: list[tuple[str, str]] = []
        self.batches: list[int] = []

    def admit_many(self, items: Any, on_decided: Any) -> None:
        self.batches.append(len(items))
        for token, _call in items:
            on_decided(token, self.decision)

    def release(self, trunk_id: str, call_id: str) -> None:
        self.released.append((trunk_id, call_id))


@pytest.fixture
def fake_metrics(monkeypatch: pytest.MonkeyPatch) -> _Metrics:
    m = _Metrics()
    monkeypatch.setattr(worker_mod, "metrics", m)
    return m


async def _worker(decision: Decision, **core_kw: Any) -> tuple[worker_mod.Worker, list[Send], _Audit]:
    spec = worker_mod.WorkerSpec(0, Settings(), "redis://unused", b"k", [], "gw")
    w = worker_mod.Worker(spec)
    w.engine = _Engine(decision)
    w.audit = _Audit()  # type: ignore[assignment]
    w.core = make_core(**core_kw)
    sent: list[Send] = []
    w._send = sent.append  # type: ignore[method-assign]
    return w, sent, w.audit  # type: ignore[return-value]


async def _settle(w: worker_mod.Worker) -> None:
    while w.deciding_n or w._admits:  # the batch leaves on the next loop turn
        await asyncio.sleep(0)


async def test_policy_decisions_are_answered_counted_and_audited(fake_metrics: _Metrics) -> None:
    w, sent, audit = await _worker(reject("consent_unknown", trunk_id="t-a"))
    w._dispatch(w.core.receive(invite(), TRUNK, "udp", None, 1000.0))  # type: ignore[union-attr]
    await _settle(w)
    assert [status_of(s.data) for s in sent] == [608]
    assert [(d.reason, call.call_id) for _, call, d in audit.decisions] == [("consent_unknown", "1-123@10.0.0.1")]
    assert fake_metrics.DECISIONS.counts == {("reject", "consent_unknown"): 1}
    assert fake_metrics.INVITES.counts == {(): 1}


async def test_shedding_ends_the_same_way(fake_metrics: _Metrics) -> None:
    w, sent, audit = await _worker(admitted(trunk_id="t-a"))
    w.draining = True
    w._dispatch(w.core.receive(invite(), TRUNK, "udp", None, 1000.0))  # type: ignore[union-attr]
    assert not w.deciding_n and not w._admits  # no question to policy
    assert [status_of(s.data) for s in sent] == [503]
    assert [d.reason for _, _, d in audit.decisions] == ["overload"]
    assert fake_metrics.DECISIONS.counts == {("reject", "overload"): 1}
    assert w.pending_events["shed_draining"] == 1


async def test_the_cores_own_refusals_are_audited_too(fake_metrics: _Metrics) -> None:
    w, sent, audit = await _worker(admitted(trunk_id="t-a"))
    acts = w.core.receive(invite(max_forwards="0"), TRUNK, "udp", None, 1000.0)  # type: ignore[union-attr]
    assert any(isinstance(a, Refused) for a in acts) and not any(isinstance(a, Admit) for a in acts)
    w._dispatch(acts)
    assert not w.deciding_n and not w._admits
    assert [status_of(s.data) for s in sent] == [483]  # answered once, by the core
    assert [d.reason for _, _, d in audit.decisions] == ["too_many_hops"]
    assert fake_metrics.DECISIONS.counts == {("reject", "too_many_hops"): 1}
    assert fake_metrics.INVITES.counts == {}  # never handed to the admission decision


def test_core_time_is_the_loop_clock_base() -> None:
    """call_at(core.next_deadline()) needs the core's time on loop.time()'s base (CLOCK_MONOTONIC)."""
    import time

    assert worker_mod.core_time is time.monotonic


async def test_invites_of_one_loop_turn_are_decided_as_one_batch(fake_metrics: _Metrics) -> None:
    w, sent, audit = await _worker(reject("consent_unknown", trunk_id="t-a"))
    for n in range(3):
        w._dispatch(w.core.receive(invite(call_id=f"b{n}@x", branch=f"z9hG4bKb{n}"), TRUNK, "udp", None, 1000.0))  # type: ignore[union-attr]
    assert w.deciding_n == 3 and not sent  # nothing decided before the loop turn ends
    await _settle(w)
    assert w.engine.batches == [3]
    assert [status_of(s.data) for s in sent] == [608, 608, 608]
    assert len(audit.decisions) == 3 and fake_metrics.DECISIONS.counts == {("reject", "consent_unknown"): 3}
