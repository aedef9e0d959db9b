"""``python -m bench.refdata``: filings at carrier scale in a worker (issue 14, item 4).

Loads N filings (default 1M) into a fresh redis-server through the loader's
writer (``RefWriter``, a ``--replace``), then, in this process as a worker
would:

* builds the worker's filings table (``RefCache.reload``) and reports the
  bytes it holds (tracemalloc: allocated and kept; the peak during the
  build), the CPU it took, and the longest event-loop stall during it (a
  5 ms ticker: what a call waiting in that worker would have seen);
* suspends a trunk with the table loaded, with the refresh loop and the
  pub/sub subscription running as in the engine: time until the snapshot
  says suspended, the CPU of that refresh, and whether filings were read;
* upserts one filing: time until the table has it (a delta);
* times ``cag explain``'s reads (``RefCache.load_for_call`` and the
  evaluation) for a filed caller, one with digits appended, one with digits
  removed and an unfiled one, and ``cag policy show filings NUMBER``
  (``get_ref``); and both CLI commands end to end as child processes
  (interpreter start-up included);
* estimates the alternative: filings read from Redis in the INVITE's batch
  (client CPU per extra HGET in a pipeline, Redis's usec_per_call);
* for comparison, the earlier in-worker form (a dict of ``NumberFiling``
  models) measured on a sample and scaled.

Prints one JSON object. Compare figures only on the same machine; say the
load average (printed too).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

CAG = str(Path(sys.executable).with_name("cag"))


def _filings(start: int, n: int) -> list[Any]:
    from policy.model import NumberFiling

    ents = [f"ent-{i}" for i in range(20)]
    return [
        NumberFiling.model_construct(
            number=f"+86139{(start + i) * 7:08d}"[:14],
            enterprise_id=ents[(start + i) % 20],
            carrier="cm",
            usage="marketing" if (start + i) % 3 else "service",
            inbound=True,
            outbound=True,
            status="active" if (start + i) % 50 else "suspended",
        )
        for i in range(n)
    ]


async def _load(store: Any, rows: int) -> float:
    from policy.model import Enterprise, Trunk
    from policy.store import RefWriter

    await store.put_records(
        "enterprises", [Enterprise(enterprise_id=f"ent-{i}") for i in range(20)], replace=True
    )
    await store.put_records(
        "trunks",
        [
            Trunk(trunk_id=f"t-{i}", enterprise_id=f"ent-{i}", sources=(f"10.0.{i}.0/24",))
            for i in range(20)
        ],
        replace=True,
    )
    t0 = time.perf_counter()
    w = RefWriter(store, "filings", replace=True)
    await w.begin()
    for i in range(0, rows, 10_000):
        await w.add(_filings(i, min(10_000, rows - i)))
    await w.commit()
    return time.perf_counter() - t0


class Ticker:
    """A callback re-armed with ``call_soon``: it runs once every event-loop iteration.

    The most CPU this thread spent between two of its runs is the longest
    single piece of work the loop ran, so the longest a call's I/O, ready
    meanwhile, waited in this worker (CPU time: what the shared machine's
    scheduler adds is not the code's; the wall-clock gap is given apart).
    """

    def __init__(self) -> None:
        self.max_stall_ms = 0.0
        self.max_wall_ms = 0.0
        self._on = False
        self._c0 = self._t0 = 0.0

    def _tick(self) -> None:
        if not self._on:
            return
        c, t = time.thread_time(), time.perf_counter()
        self.max_stall_ms = max(self.max_stall_ms, (c - self._c0) * 1000)
        self.max_wall_ms = max(self.max_wall_ms, (t - self._t0) * 1000)
        self._c0, self._t0 = time.thread_time(), time.perf_counter()
        asyncio.get_running_loop().call_soon(self._tick)

    def start(self) -> None:
        self._on = True
        self._c0, self._t0 = time.thread_time(), time.perf_counter()
        asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        self._on = False


async def _until(pred: Any, timeout: float = 30.0) -> float:
    t0 = time.perf_counter()
    while not pred():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("not effective")
        await asyncio.sleep(0.001)
    return time.perf_counter() - t0


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return round(kb / 1024, 1)


def _ms(s: float) -> float:
    return round(s * 1000, 2)


async def _bench(url: str, rows: int, old_sample: int) -> dict[str, Any]:
    from datetime import UTC, datetime

    from policy.model import CallAttempt, NumberFiling
    from policy.refcache import RefCache
    from policy.rules import RuleConfig, evaluate_local
    from policy.rules.caller_id import caller_of
    from policy.store import PolicyStore

    out: dict[str, Any] = {"rows": rows, "loadavg": os.getloadavg()}
    store = await PolicyStore.connect(url)
    out["load_s"] = round(await _load(store, rows), 1)

    # --- the worker's table: CPU and loop stalls first (tracemalloc slows allocation
    # several-fold), then the same build again under tracemalloc for its bytes.
    rss0 = _rss_mib()
    cache = RefCache(store)
    ticker = Ticker()
    ticker.start()
    gc_ms: list[float] = []
    gc_t0 = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_t0[0] = time.thread_time()
        else:
            gc_ms.append((time.thread_time() - gc_t0[0]) * 1000)

    gc.callbacks.append(on_gc)
    c0, t0 = time.process_time(), time.perf_counter()
    await cache.reload()
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    gc.callbacks.remove(on_gc)
    ticker.stop()
    stall, gap = ticker.max_stall_ms, ticker.max_wall_ms
    rss1 = _rss_mib()
    del cache
    cache = RefCache(store)
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    await cache.reload()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    table = cache.ref.filings
    out["table"] = {
        "filings": len(table),
        "held_MiB": round((held - base) / 2**20, 1),
        "bytes_per_filing": round((held - base) / len(table), 1),
        "arrays_MiB": round(table.nbytes() / 2**20, 1),
        "build_peak_MiB": round((peak - base) / 2**20, 1),
        "build_cpu_s": round(cpu, 2),
        "build_wall_s": round(wall, 2),
        "longest_loop_stall_cpu_ms": round(stall, 1),
        "max_wall_gap_ms": round(gap, 1),
        "longest_gc_ms": round(max(gc_ms, default=0.0), 1),
        "process_rss_MiB_before_after": [rss0, rss1],
    }

    # --- the hot path's question (R3/R5): one look-up of a filed and of an unfiled number
    probes = [f"+86139{i * 7:08d}"[:14] for i in range(0, min(rows, 100_000))]
    misses = [f"+86136{i:08d}" for i in range(len(probes))]
    for name, numbers in (("filed", probes), ("unfiled", misses)):
        c0 = time.process_time()
        for n in numbers:
            table.profile(n)
        out["table"][f"lookup_us_{name}"] = round(
            (time.process_time() - c0) / len(numbers) * 1e6, 2
        )

    # --- a suspension and a filing upsert, with the refresh loop and pub/sub running
    stop = asyncio.Event()
    tasks = [
        asyncio.get_running_loop().create_task(cache.run(0.5, stop)),
        asyncio.get_running_loop().create_task(store.subscribe_changes(cache.on_change, stop)),
    ]
    await asyncio.sleep(0.7)  # subscribed
    builds = cache.builds
    ticker = Ticker()
    ticker.start()
    c0 = time.process_time()
    t0 = time.perf_counter()
    await store.set_status("trunk", "t-3", "suspended")
    await _until(lambda: cache.ref.trunks["t-3"].status == "suspended")
    out["suspend"] = {
        "effective_ms": _ms(time.perf_counter() - t0),
        "cpu_ms": _ms(time.process_time() - c0),
        "filings_rebuilt": cache.builds != builds,
        "longest_loop_stall_cpu_ms": round(ticker.max_stall_ms, 1),
    }
    t0 = time.perf_counter()
    await store.put_records(
        "filings", [NumberFiling(number="+8613700000001", enterprise_id="ent-1", outbound=True)]
    )
    await _until(lambda: "+8613700000001" in cache.ref.filings)
    out["filing_upsert"] = {
        "effective_ms": _ms(time.perf_counter() - t0),
        "deltas": cache.deltas,
        "filings_rebuilt": cache.builds != builds,
    }
    ticker.stop()
    # A large upsert (10,000 filings): folded with the table into new arrays, in steps.
    # (The loader runs in this process too: the clock starts once it has written.)
    builds = cache.builds
    big = [
        NumberFiling(number=f"+86135{i:08d}", enterprise_id="ent-2", outbound=True)
        for i in range(10_000)
    ]
    await store.put_records("filings", big)
    ticker = Ticker()
    ticker.start()
    t0 = time.perf_counter()
    await _until(lambda: "+8613500009999" in cache.ref.filings, 300)
    ticker.stop()
    out["filings_upsert_10k"] = {
        "effective_s": round(time.perf_counter() - t0, 2),
        "tables_built": cache.builds - builds,
        "longest_loop_stall_cpu_ms": round(ticker.max_stall_ms, 1),
    }
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    # --- explain and show: one caller's reads
    at = datetime(2026, 12, 7, 3, tzinfo=UTC)
    filed = "+86139" + f"{7 * 1234:08d}"[:8]
    callers = {
        "filed": filed,
        "appended": filed + "5",
        "removed": filed[:-1],
        "unfiled": "+8613600000000",
    }
    explain: dict[str, Any] = {}
    for name, caller in callers.items():
        call = CallAttempt(
            call_id="x",
            branch="z9hG4bK-x",
            source_ip="10.0.14.7",
            source_port=5060,
            callee="13800138000",
            from_user=caller,
            pai_user=None,
            received_at=at.timestamp(),
        )
        best = 1e9
        for _ in range(5):
            t0 = time.perf_counter()
            one = RefCache(store)
            await one.load_for_call(caller_of(call))
            local = evaluate_local(call, one.ref, at, RuleConfig(), all_checks=True)
            best = min(best, time.perf_counter() - t0)
        full = evaluate_local(call, cache.ref, at, RuleConfig(), all_checks=True)
        explain[name] = {
            "ms": _ms(best),
            "same_as_worker": local.checks == full.checks,
            "filing": next(c.reason or "pass" for c in local.checks if c.name == "filing"),
        }
    out["explain_reads"] = explain
    best = 1e9
    for _ in range(5):
        t0 = time.perf_counter()
        rec = await store.get_ref("filings", filed)
        best = min(best, time.perf_counter() - t0)
    out["show_read_ms"] = _ms(best)
    assert rec is not None

    # --- the alternative: a filing HGET in the INVITE's pipeline
    # Through the hot path's own batcher (hiredis, one pipeline per loop turn), 32 INVITEs'
    # worth per turn, against the same batches without the HGET.
    async def batches(with_hget: bool) -> float:
        c0 = time.process_time()
        for b in range(100):
            futs = []
            for i in range(32):
                futs.append(store._batcher.submit(("PING",)))
                if with_hget:
                    n = f"+86139{(b * 32 + i) * 7:08d}"[:14]
                    futs.append(store._batcher.submit(("HGET", "{cag:ref}:filings", n)))
            await asyncio.gather(*futs)
        return (time.process_time() - c0) / 3200

    runs = [(await batches(True), await batches(False)) for _ in range(3)]
    per = min(w for w, _ in runs) - min(wo for _, wo in runs)
    stats = await store.client.info("commandstats")
    out["redis_read_alternative"] = {
        "worker_cpu_us_per_extra_hget": round(per * 1e6, 1),
        "redis_usec_per_hget": stats.get("cmdstat_hget", {}).get("usec_per_call"),
        "note": "R3/R5 need one HGET; R4 (length changed) needs prefix look-ups a hash cannot do",
    }
    await store.close()

    # --- the earlier form, on a sample
    tracemalloc.start()
    b0, _ = tracemalloc.get_traced_memory()
    old = {f.number: NumberFiling.model_validate(f.model_dump()) for f in _filings(0, old_sample)}
    b1, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    out["earlier_dict_of_models"] = {
        "sample": len(old),
        "bytes_per_filing": round((b1 - b0) / len(old), 1),
        "MiB_at_rows": round((b1 - b0) / len(old) * rows / 2**20, 1),
    }
    return out


def _cli_times(url: str) -> dict[str, dict[str, float]]:
    """Both commands end to end as child processes (interpreter start-up and imports included)."""
    filed = "+86139" + f"{7 * 1234:08d}"[:8]
    cmds = {
        "cag_explain_s": [
            CAG,
            "explain",
            "--redis-url",
            url,
            "--source",
            "10.0.14.7",
            "--caller",
            filed[:-1],
            "--callee",
            "13800138000",
        ],
        "cag_policy_show_s": [CAG, "policy", "show", "filings", filed, "--redis-url", url],
        "python_startup_s": [sys.executable, "-c", "import gateway.cli"],
    }
    out = {}
    for name, cmd in cmds.items():
        best_wall = best_cpu = 1e9
        for _ in range(3):
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=False)
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            best_wall = min(best_wall, time.perf_counter() - t0)
            best_cpu = min(best_cpu, r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
        out[name] = {"wall_s": round(best_wall, 2), "cpu_s": round(best_cpu, 2)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.refdata", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--rows", type=int, default=1_000_000, help="filings (default 1,000,000)")
    p.add_argument(
        "--old-sample", type=int, default=50_000, help="filings of the earlier form to measure"
    )
    p.add_argument(
        "--redis-url", default=None, help="an empty Redis to use (default: a fresh redis-server)"
    )
    args = p.parse_args(argv)
    from gateway.embedded_redis import EmbeddedRedis

    with tempfile.TemporaryDirectory(prefix="cag-refdata-") as work:
        server = None
        url = args.redis_url
        if url is None:
            server = EmbeddedRedis(Path(work) / "redis")
            server.start()
            url = server.url
        try:
            out = asyncio.run(_bench(url, args.rows, args.old_sample))
            out["cli"] = _cli_times(url)
        finally:
            if server is not None:
                server.stop()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
