"""The sink's map of calls this worker admitted stays bounded, oldest out first, cheaply."""

from __future__ import annotations

from pathlib import Path

from gateway.audit.sink import AuditSink


def test_open_calls_bounded_oldest_evicted_first(tmp_path: Path) -> None:
    sink = AuditSink("redis://127.0.0.1:1", tmp_path, open_max=64)
    for i in range(1000):
        sink._remember(f"r{i}", i)
        if i % 3 == 0:  # calls end out of order: their entries leave the middle of the map
            sink._open.pop(f"r{i // 2}", None)
        assert len(sink._open) <= 64
    kept = list(sink._open)
    assert kept == sorted(kept, key=lambda r: int(r[1:]))  # insertion order = age
    assert "r999" in sink._open and "r0" not in sink._open
    assert len(sink._open) >= 64 - 64 // 16  # evicts a sixteenth at a time, not everything
