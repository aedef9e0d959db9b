"""Soak (issue 7): steady load shows no growth in transactions, memory or file descriptors.

The CI variant runs three short rounds and checks descriptors and memory
between them; the slow one (``pytest -m slow``; ``CAG_SOAK_SECONDS``,
default 180) runs past the 32 s transactions linger for, so the number in
flight must level off, and compares the last third of the run with the
level reached after the first minute.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from tests.integration.harness import GatewayProc, SippResult, SippUas, run_uac, standard_policy

pytestmark = pytest.mark.integration


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _sample(gw: GatewayProc) -> dict[str, float]:
    """Summed over the workers: RSS (KiB), open descriptors, transactions in flight."""
    pids = gw.worker_pids()
    return {
        "rss_kb": sum(_rss_kb(p) for p in pids),
        "fds": sum(len(os.listdir(f"/proc/{p}/fd")) for p in pids),
        "in_flight": gw.metric("cag_transactions_in_flight"),
        "workers": len(pids),
    }


def test_short_soak_no_descriptor_or_memory_growth(redis_url: str, uas: SippUas, tmp_path: Path) -> None:
    rows = standard_policy(redis_url, callees=50)
    gw = GatewayProc(redis_url, tmp_path / "gw", [uas.hop])
    gw.start()
    try:
        samples = []
        for _ in range(3):
            r = run_uac(tmp_path, gw.port, rows, calls=400, rate=200, limit=2000)
            assert r.failed == 0 and r.successful == 400, r.stdout
            time.sleep(1.2)  # metrics flush
            samples.append(_sample(gw))
        print(f"short soak samples: {samples}")
        first, last = samples[0], samples[-1]
        assert last["workers"] == first["workers"] == 2
        assert last["fds"] - first["fds"] <= 4, "no descriptor leak per call"
        # 800 more transactions linger (32 s) between the first and the last sample: a few MiB.
        assert last["rss_kb"] - first["rss_kb"] < 40_000
    finally:
        gw.stop()


@pytest.mark.slow
def test_soak_levels_off(redis_url: str, uas: SippUas, tmp_path: Path) -> None:
    seconds = int(os.environ.get("CAG_SOAK_SECONDS", "180"))
    rate = int(os.environ.get("CAG_SOAK_RATE", "200"))
    rows = standard_policy(redis_url, callees=200)
    gw = GatewayProc(redis_url, tmp_path / "gw", [uas.hop])
    gw.start()
    try:
        result: list[SippResult] = []
        load = threading.Thread(target=lambda: result.append(
            run_uac(tmp_path, gw.port, rows, calls=seconds * rate, rate=rate, limit=5000,
                    timeout=seconds + 60)
        ))
        t0 = time.monotonic()
        load.start()
        samples: list[tuple[float, dict[str, float]]] = []
        while load.is_alive():
            time.sleep(10)
            samples.append((time.monotonic() - t0, _sample(gw)))
        load.join()
        for t, s in samples:
            print(f"t={t:5.0f}s rss={s['rss_kb'] / 1024:.1f} MiB fds={s['fds']:.0f} in_flight={s['in_flight']:.0f}")
        r = result[0]
        assert r.failed <= 0.001 * seconds * rate, r.stats
        settled = [s for t, s in samples if 60 <= t <= seconds * 2 / 3]
        tail = [s for t, s in samples if t > seconds * 2 / 3 and t <= seconds]
        assert settled and tail
        ref = max(s["in_flight"] for s in settled)
        assert max(s["in_flight"] for s in tail) <= 1.25 * ref + 50, "transactions level off"
        ref_rss = max(s["rss_kb"] for s in settled)
        assert max(s["rss_kb"] for s in tail) <= 1.10 * ref_rss, "memory levels off"
        assert max(s["fds"] for s in tail) <= max(s["fds"] for s in settled) + 4, "no descriptor growth"
    finally:
        gw.stop()
