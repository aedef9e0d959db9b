"""Admission micro-benchmark: one worker's AdmissionEngine against a local redis-server.

Not a test. It answers "how many admission decisions can one worker make per
second, and how much of its CPU does each cost?" — the policy half of the
gateway's per-call budget (one pipelined FCALL costs ~11 µs of client CPU:
docs/performance.md, reference figures). Every decision here is a full one: in-memory checks, the
callee script (consent + DNC + caps, counted), the token index and, in the
``all_slots`` scenario, the caller-number and trunk rate / concurrency scripts.

    python -m bench.admission [--calls 20000] [--concurrency 200] [--no-uvloop]
    python -m bench.admission --batch 1,8,32 [--calls 3000] [--repeat 3]

``--batch`` measures the decision path per loop turn (issue 13): B INVITEs
handed over in one turn, either as B tasks awaiting ``admit`` (the worker
before issue 13) or as one ``admit_many`` call, the next B once all B are
decided. The figure is this thread's CPU per decision (``time.thread_time``:
other sessions on a shared box do not count), the best of ``--repeat`` runs.

Client CPU is ``time.process_time()`` of this process only (redis-server is
another process); results go to bench/results/admission.json. The load is a
closed loop (``--concurrency`` calls always in flight), so the latency
figures are mostly queueing: p50 ≈ concurrency / throughput. Callees are
never-seen numbers (cold number-normalisation caches, as in real traffic)
except in ``callee_only_warm_numbers``; ``evaluate_local_only`` is the
in-memory half alone, so the rest of an admission is engine + Redis client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway.embedded_redis import EmbeddedRedis
from policy.engine import AdmissionEngine, EngineConfig
from policy.model import CallAttempt, Consent, Enterprise, FrequencyCap, NumberFiling, Trunk
from policy.rules import RuleConfig, evaluate_local
from policy.store import PolicyStore

RESULTS = Path(__file__).resolve().parent / "results" / "admission.json"
NOON = datetime(2026, 3, 10, 12, 0, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()
CALLEES = 20_000  # distinct callees per scenario, each with a consent (3 calls/day each)


def _callee(i: int) -> str:
    return f"138{i:08d}"


async def _load(store: PolicyStore, base: int) -> None:
    await store.put_records(
        "trunks",
        [
            Trunk(trunk_id="t-plain", enterprise_id="ent", sources=("192.0.2.0/24",)),
            Trunk(
                trunk_id="t-limited",
                enterprise_id="ent",
                sources=("198.51.100.0/24",),
                max_cps=10**9,
                max_concurrent=10**9,
            ),
        ],
    )
    await store.put_records(
        "enterprises", [Enterprise(enterprise_id="ent", name="bench", quiet_hours="none")]
    )
    await store.put_records(
        "filings", [NumberFiling(number="+861058001234", enterprise_id="ent", outbound=True)]
    )
    granted = datetime(2026, 1, 1, tzinfo=UTC)
    consents = [
        Consent(
            token=f"tok-{i}", callee="+86" + _callee(i), enterprise_id="ent", granted_at=granted
        )
        for i in range(base, base + CALLEES)
    ]
    for i in range(0, len(consents), 2000):
        await store.put_records("consents", consents[i : i + 2000])


def _attempts(name: str, base: int, calls: int, source: str) -> list[CallAttempt]:
    """Calls to never-seen callees (cold number caches, as with real traffic)."""
    return [
        CallAttempt(
            call_id=f"{name}-{n}",
            branch=f"z9hG4bK{n}",
            source_ip=source,
            source_port=5060,
            callee=_callee(base + n % CALLEES),
            from_user="01058001234",
            pai_user=None,
            consent_token=f"tok-{base + n % CALLEES}",
        )
        for n in range(calls)
    ]


def _local_only(calls: int, base: int, engine: AdmissionEngine) -> dict[str, Any]:
    """CPU of the in-memory half alone (policy.rules.evaluate_local), for the split."""
    now = datetime.fromtimestamp(NOON, UTC)
    attempts = _attempts("local", base, calls, "192.0.2.10")
    cpu0 = time.process_time()
    for a in attempts:
        evaluate_local(a, engine.ref, now, engine.cfg.rules)
    cpu = time.process_time() - cpu0
    return {
        "scenario": "evaluate_local_only",
        "calls": calls,
        "client_cpu_us_per_admission": round(cpu / calls * 1e6, 1),
    }


async def _scenario(
    name: str,
    store: PolicyStore,
    calls: int,
    concurrency: int,
    source: str,
    rules: RuleConfig,
    base: int,
) -> dict[str, Any]:
    await store.client.flushall()
    await _load(store, base)
    engine = AdmissionEngine(store, EngineConfig(rules=rules, budget_ms=1000), clock=lambda: NOON)
    await engine.start()
    # warm-up (connections, function load, code paths) on other callees
    await asyncio.gather(
        *(engine.admit(a) for a in _attempts(name + "w", base + CALLEES // 2, 200, source))
    )
    await store.client.flushall()
    await _load(store, base)
    await asyncio.sleep(0.6)  # engine picks up the reloaded reference version
    attempts = _attempts(name, base, calls, source)

    latencies: list[float] = []
    reasons: Counter[str] = Counter()
    it = iter(attempts)

    async def worker() -> None:
        for a in it:
            t = time.perf_counter()
            d = await engine.admit(a)
            latencies.append(time.perf_counter() - t)
            reasons[d.reason] += 1

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    await engine.stop()
    latencies.sort()
    return {
        "scenario": name,
        "calls": calls,
        "concurrency": concurrency,
        "admissions_per_s": round(calls / wall),
        "client_cpu_us_per_admission": round(cpu / calls * 1e6, 1),
        "latency_ms_p50": round(statistics.median(latencies) * 1000, 3),
        "latency_ms_p99": round(latencies[int(len(latencies) * 0.99)] * 1000, 3),
        "reasons": dict(reasons),
        "store_errors": engine.stats["store_errors"] + engine.stats["store_timeouts"],
    }


async def _batch_run(
    engine: AdmissionEngine, attempts: list[CallAttempt], size: int, mode: str
) -> tuple[float, Counter[str]]:
    """Thread CPU per decision, deciding ``size`` attempts per loop turn."""
    loop = asyncio.get_running_loop()
    reasons: Counter[str] = Counter()
    cpu0 = time.thread_time()
    for i in range(0, len(attempts), size):
        chunk = attempts[i : i + size]
        done: asyncio.Future[None] = loop.create_future()
        left = len(chunk)

        def decided(_token: object, d: Any, done: asyncio.Future[None] = done) -> None:
            nonlocal left
            reasons[d.reason] += 1
            left -= 1
            if left == 0:
                done.set_result(None)

        if mode == "tasks":
            for a in chunk:
                t = loop.create_task(engine.admit(a))
                t.add_done_callback(lambda t: decided(None, t.result()))
        else:
            engine.admit_many(((None, a) for a in chunk), decided)
        await done
    return (time.thread_time() - cpu0) / len(attempts), reasons


async def run_batch(
    sizes: list[int], calls: int, repeat: int, modes: tuple[str, ...] = ("tasks", "admit_many")
) -> list[dict[str, Any]]:
    """Per-decision CPU at batch sizes ``sizes``, task per decision vs ``admit_many``."""
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp), extra_args=("--appendonly", "no"))
        server.start()
        try:
            store = await PolicyStore.connect(server.url)
            try:
                for size in sizes:
                    for mode in modes:
                        await store.client.flushall()
                        await _load(store, 0)
                        engine = AdmissionEngine(
                            store, EngineConfig(budget_ms=1000), clock=lambda: NOON
                        )
                        await engine.start()
                        warm = _attempts("w", CALLEES // 2, 400, "198.51.100.10")
                        await _batch_run(engine, warm, size, mode)
                        per = min(calls, CALLEES // repeat)
                        everything = _attempts(f"{mode}{size}", 0, per * repeat, "198.51.100.10")
                        best, reasons = float("inf"), Counter[str]()
                        for r in range(repeat):
                            cpu, rs = await _batch_run(
                                engine, everything[r * per : (r + 1) * per], size, mode
                            )
                            best = min(best, cpu)
                            reasons.update(rs)
                        await engine.stop()
                        out.append(
                            {
                                "scenario": f"batch_{mode}",
                                "batch": size,
                                "calls": per,
                                "repeat": repeat,
                                "thread_cpu_us_per_decision": round(best * 1e6, 1),
                                "reasons": dict(reasons),
                            }
                        )
            finally:
                await store.close()
        finally:
            server.stop()
    return out


async def run(calls: int, concurrency: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp), extra_args=("--appendonly", "no"))
        server.start()
        try:
            store = await PolicyStore.connect(server.url)
            try:
                calls = min(calls, CALLEES * 3)
                out = [
                    await _scenario(
                        "callee_only", store, calls, concurrency, "192.0.2.10", RuleConfig(), 0
                    ),
                    # The same callees again: number normalisation caches are warm.
                    await _scenario(
                        "callee_only_warm_numbers",
                        store,
                        calls,
                        concurrency,
                        "192.0.2.10",
                        RuleConfig(),
                        0,
                    ),
                    await _scenario(
                        "all_slots",
                        store,
                        calls,
                        concurrency,
                        "198.51.100.10",
                        RuleConfig(caps=FrequencyCap(caller_per_second=10**9)),
                        1_000_000,
                    ),
                    await _scenario(
                        "sequential",
                        store,
                        min(calls, 5000),
                        1,
                        "192.0.2.10",
                        RuleConfig(),
                        2_000_000,
                    ),
                ]
                engine = AdmissionEngine(store, EngineConfig())
                await engine.start()
                out.append(_local_only(calls, 3_000_000, engine))
                await engine.stop()
                return out
            finally:
                await store.close()
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--no-uvloop", action="store_true")
    ap.add_argument("--batch", help="batch sizes, e.g. 1,8,32: the per-turn decision path")
    ap.add_argument("--repeat", type=int, default=3, help="--batch runs per figure (best kept)")
    ap.add_argument("--modes", default="tasks,admit_many", help="--batch: tasks and/or admit_many")
    ap.add_argument(
        "--instructions",
        action="store_true",
        help="--batch: client instructions per decision under callgrind (valgrind), "
        "the same figure however busy the box is; --calls 600 is plenty",
    )
    ap.add_argument("--under-callgrind", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.batch and (args.instructions or args.under_callgrind):
        return _main_instructions(args)
    if args.batch:
        return _main_batch(args)
    use_uvloop = False
    if not args.no_uvloop:
        try:
            import uvloop

            use_uvloop = True
            results = uvloop.run(run(args.calls, args.concurrency))
        except ImportError:
            results = asyncio.run(run(args.calls, args.concurrency))
    else:
        results = asyncio.run(run(args.calls, args.concurrency))
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True
    ).stdout.strip()
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "uvloop": use_uvloop,
        "redis": redis_version,
        "transport": "unix socket",
        "results": results,
    }
    for r in results:
        if "admissions_per_s" not in r:
            print(
                f"{r['scenario']:>24}: {r['client_cpu_us_per_admission']:>6} µs CPU/call (in-memory checks only)"
            )
            continue
        print(
            f"{r['scenario']:>24}: {r['admissions_per_s']:>7} admissions/s, "
            f"{r['client_cpu_us_per_admission']:>6} µs client CPU/admission, "
            f"p50 {r['latency_ms_p50']} ms, p99 {r['latency_ms_p99']} ms "
            f"(concurrency {r['concurrency']}, {r['calls']} calls, {r['reasons']})"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {RESULTS}")
    return 0


def _main_batch(args: argparse.Namespace) -> int:
    sizes = [int(x) for x in args.batch.split(",")]
    calls = min(args.calls, 3000)
    coro = run_batch(sizes, calls, args.repeat, tuple(args.modes.split(",")))
    if args.no_uvloop:
        results = asyncio.run(coro)
    else:
        import uvloop

        results = uvloop.run(coro)
    for r in results:
        print(
            f"batch {r['batch']:>3} {r['scenario']:>17}: {r['thread_cpu_us_per_decision']:>6} µs "
            f"thread CPU/decision (best of {r['repeat']} x {r['calls']}, {r['reasons']})"
        )
    out = RESULTS.with_name("admission_batch.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "uvloop": not args.no_uvloop,
        "results": results,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {out}")
    return 0


def _instr_run(sizes: list[int], calls: int, modes: tuple[str, ...]) -> None:
    """Inside valgrind: per size and mode, the decisions run inside ``sys.call_tracing`` (collected)."""
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedRedis(Path(tmp), extra_args=("--appendonly", "no"))
        server.start()
        try:
            store = loop.run_until_complete(PolicyStore.connect(server.url))
            for size in sizes:
                for mode in modes:
                    loop.run_until_complete(store.client.flushall())
                    loop.run_until_complete(_load(store, 0))
                    engine = AdmissionEngine(
                        store, EngineConfig(budget_ms=10_000), clock=lambda: NOON
                    )
                    loop.run_until_complete(engine.start())
                    warm = _attempts("w", CALLEES // 2, 400, "198.51.100.10")
                    loop.run_until_complete(_batch_run(engine, warm, size, mode))
                    timed = _attempts(f"{mode}{size}", 0, calls, "198.51.100.10")
                    sys.call_tracing(
                        loop.run_until_complete, (_batch_run(engine, timed, size, mode),)
                    )
                    loop.run_until_complete(engine.stop())
            loop.run_until_complete(store.close())
        finally:
            server.stop()


def _main_instructions(args: argparse.Namespace) -> int:
    """Client instructions per decision, one callgrind dump per (size, mode): deterministic on a busy box."""
    import os
    import re

    sizes = [int(x) for x in args.batch.split(",")]
    modes = tuple(args.modes.split(","))
    calls = min(args.calls, 3000)
    if args.under_callgrind:
        _instr_run(sizes, calls, modes)
        return 0
    with tempfile.TemporaryDirectory(prefix="cag-admission-cg-") as tmp:
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=sys_call_tracing",
            "--dump-after=sys_call_tracing",
            f"--callgrind-out-file={tmp}/cg.%p",
            sys.executable,
            "-m",
            "bench.admission",
            "--under-callgrind",
            "--batch",
            args.batch,
            "--modes",
            args.modes,
            "--calls",
            str(calls),
        ]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        subprocess.run(
            cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        dumps = sorted(Path(tmp).glob("cg.*.*"), key=lambda p: int(p.name.rsplit(".", 1)[1]))
        totals = []
        for d in dumps:
            m = re.search(r"^(?:totals|summary): (\d+)", d.read_text(errors="replace"), re.M)
            totals.append(int(m.group(1)) if m else 0)
    names = [(size, mode) for size in sizes for mode in modes]
    if len(totals) != len(names):
        raise SystemExit(f"admission: expected {len(names)} callgrind dumps, got {len(totals)}")
    for (size, mode), t in zip(names, totals, strict=True):
        print(
            f"batch {size:>3} {mode:>10}: {t / calls / 1000:8.1f} k instructions/decision (client, {calls} calls)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
