"""The worker's memory diagnostic (gateway/memtrace.py): off by default, one JSON line per sample."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import pytest

from gateway import memtrace


class _Leaf:
    __slots__ = ("items", "small")

    def __init__(self) -> None:
        self.items = {i: i for i in range(100)}
        self.small = [1, 2, 3]


class _Root:
    def __init__(self) -> None:
        self.leaf = _Leaf()
        self.queue: deque[int] = deque(range(70))
        self.again = self.leaf  # visited once
        self.deep = type("D", (), {})()
        self.deep.x = type("E", (), {})()
        self.deep.x.y = type("F", (), {})()
        self.deep.x.y.w = type("G", (), {})()
        self.deep.x.y.w.z = list(range(200))  # five steps away: beyond the walk


def test_sizes_reports_large_containers_by_path_and_stops_at_the_depth() -> None:
    got = memtrace.sizes(_Root(), "w")
    items = [v for k, v in got.items() if k.endswith(".items")]
    assert items == [[100, items[0][1]]]  # reached twice (leaf, again), reported once
    assert got["w.queue"][0] == 70
    assert "w.leaf.small" not in got
    assert not any(k.endswith(".z") for k in got)


def test_a_sample_is_one_json_line_with_the_kernel_and_allocator_figures(tmp_path: Path) -> None:
    tracer = memtrace.MemTrace(str(tmp_path / "m.w0.jsonl"), _Root())
    tracer.sample()
    tracer.sample()
    lines = (tmp_path / "m.w0.jsonl").read_text().splitlines()
    assert len(lines) == 2
    rec = json.loads(lines[1])
    assert rec["rss"]["VmRSS"] > 0
    assert rec["pymalloc"]["blocks"] > 0
    assert "collections" in rec["gc"]
    assert [v[0] for k, v in rec["sizes"].items() if k.endswith(".items")] == [100]


def test_off_unless_the_variable_is_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(memtrace.ENV, raising=False)
    assert memtrace.from_env(0, object()) is None
    monkeypatch.setenv(memtrace.ENV, str(tmp_path / "t"))
    monkeypatch.setenv(memtrace.ENV + "_S", "5")
    got = memtrace.from_env(1, object())
    assert got is not None
    assert got[0].path.endswith("t.w1.jsonl") and got[1] == 5.0


class Node:
    other: Node


def test_cycles_are_counted_once_and_then_freed() -> None:
    memtrace.cycles()
    for _ in range(50):
        a, b = Node(), Node()
        a.other, b.other = b, a
    del a, b
    first = memtrace.cycles()
    assert dict(first["types"]).get("Node") == 100
    assert dict(memtrace.cycles()["types"]).get("Node") is None  # freed, not found again
