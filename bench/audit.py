"""Audit trail benchmark: record size, hot-path cost, archiver and export rates.

    python -m bench.audit [--records 40000] [--rate 2000] [--seconds 5]

1. bytes per record (msgpack in the stream, chunks in Redis, the Parquet
   records file an hour is compacted into) and the disk per day at 1,000 calls/s;
2. the INVITE path: the cost of ``sink.decision()`` (the only audit work on
   it) and, in one run, the p99 event-loop delay seen by a simulated INVITE
   every 1/rate s with the audit sink off and on (the flusher shares the
   loop; a delay there is a delay for every INVITE the worker handles);
3. the archiver's sustained entries/s and records/s (one process);
4. export records/s over the archive.

Uses a private redis-server under a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from gateway.audit import segments
from gateway.audit.archiver import Archiver
from gateway.audit.record import Entry, decision_entry, outcome_entry, pack, pack_chunk
from gateway.audit.sink import SCRIPT_BATCH, AuditSink
from gateway.embedded_redis import EmbeddedRedis
from gateway.proxy.actions import Outcome
from policy.decision import Decision, admitted, reject
from policy.model import CallAttempt

_RUNS = [0x9E3779B9 * (w + 1) % 2**32 for w in range(8)]  # each worker's (gateway/proxy/server.py _record_id)


def sample(i: int) -> tuple[str, CallAttempt, Decision]:
    """A realistic record: UUID Call-ID, 11-digit callee, consent token, evidence URL; 1 in 5 rejected."""
    callee = f"+86138{random.randrange(10**8):08d}"
    call = CallAttempt(
        call_id=f"{uuid.uuid4()}@10.1.2.3", branch="z9hG4bK", source_ip="10.0.0.1", source_port=5060,
        callee=callee[3:], from_user="01058001234", pai_user=None, consent_token=f"ctk-{uuid.uuid4().hex[:16]}",
    )
    rid = f"gw-node-01-{i % 8}-{i:x}-{_RUNS[i % 8]:08x}"  # one random part per worker life (proxy)
    ctx: dict[str, Any] = {"trunk_id": "trunk-0042", "enterprise_id": "ent-0007", "caller": "+861058001234",
                           "callee": callee}
    if i % 5 == 0:
        return rid, call, reject("consent_unknown", **ctx)
    ev = f"s3://consent-evidence/ent-0007/{uuid.uuid4().hex}.wav"
    return rid, call, admitted(consent_token=call.consent_token, evidence_ref=ev, **ctx)


def entries_for(n: int, t0: int) -> list[Entry]:
    out: list[Entry] = []
    for i in range(n):
        rid, call, d = sample(i)
        t = t0 + i * 1000
        out.append(decision_entry(rid, call, d, random.uniform(0.0002, 0.002), "gw-node-01", i % 8, t))
        if d.admit:  # answered after 3 s, ended after 60 s
            out.append(outcome_entry(rid, call.call_id, t, t + 3_000_000, 200, (t + 3_000_000) / 1e6, None))
            out.append(outcome_entry(rid, call.call_id, t, t + 60_000_000, None, None, (t + 60_000_000) / 1e6))
    return out


def sizes(tmp: Path, n: int, redis_sock: Path) -> None:
    t0 = segments.hour_of(int(time.time()) * 1_000_000)
    es = entries_for(n, t0)
    packed = sum(len(pack(e)) for e in es)
    by_hour: dict[int, list[Entry]] = {}
    for e in es:
        by_hour.setdefault(segments.hour_of(e.get("dt", e["t"])), []).append(e)
    for h, part in by_hour.items():
        segments.write_segment(tmp / "sizes", h, part, "size")
    for _, part in segments.partitions(tmp / "sizes"):
        segments.compact(part, lambda p, m: None, min_segments=1)
    per = sum(p.stat().st_size for p in (tmp / "sizes").rglob("*.parquet")) / n
    client = redis.Redis(unix_socket_path=str(redis_sock))
    client.delete("bench:stream")
    base = int(client.info("memory")["used_memory"])
    pipe = client.pipeline(transaction=False)
    for i in range(0, len(es), SCRIPT_BATCH):
        pipe.xadd("bench:stream", {"c": pack_chunk(es[i : i + SCRIPT_BATCH])})
    pipe.execute()
    mem = (int(client.info("memory")["used_memory"]) - base) / n
    client.delete("bench:stream")
    print(f"record size: msgpack {packed / n:.0f} B (decision + 2 outcomes), stream memory {mem:.0f} B "
          f"(chunks of {SCRIPT_BATCH} entries), on disk (Parquet records, compacted hour) {per:.0f} B")
    print(f"disk at 1,000 calls/s: {per * 86_400_000 / 1e9:.1f} GB/day, {per * 86_400_000 * 30 / 1e9:.0f} GB for 30 days")


async def loop_delay(url: str, spool: Path, rate: int, seconds: float, with_audit: bool) -> list[float]:
    """Decisions at ``rate``/s; returns every gap (µs) between two turns of the event loop.

    A probe task yields to the loop continuously, so each gap is one stretch
    during which the loop ran something else: an INVITE arriving then waits
    that long. The flusher's work (building, packing, parsing replies) shows
    up here; with the audit off the gaps are the loop's own.
    """
    sink = AuditSink(url, spool) if with_audit else None
    if sink is not None:
        await sink.start()
    samples = [sample(i) for i in range(2000)]
    period = 1.0 / rate
    gaps: list[float] = []
    start = last = time.perf_counter()
    due = start
    i = 0
    while last - start < seconds:
        await asyncio.sleep(0)
        now = time.perf_counter()
        gaps.append((now - last) * 1e6)
        last = now
        while due <= now:
            if sink is not None:
                rid, call, d = samples[i % len(samples)]
                sink.decision(f"{rid}-{i}", call, d, 0.0005, "bench", 0)
                if d.admit:
                    sink.outcome(Outcome(f"{rid}-{i}", call.call_id, 200, time.time(), None))
            due += period
            i += 1
    if sink is not None:
        await sink.close()
    return gaps


def p(xs: list[float], q: float) -> float:
    ys = sorted(xs)
    return ys[min(len(ys) - 1, int(q * len(ys)))] if ys else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.audit")
    ap.add_argument("--records", type=int, default=40_000)
    ap.add_argument("--rate", type=int, default=2000, help="simulated decisions/s for the latency test")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args(argv)
    random.seed(1)
    tmp = Path(tempfile.mkdtemp(prefix="cag-bench-audit-"))
    server = EmbeddedRedis(tmp / "redis")
    server.start()
    try:
        sizes(tmp, args.records, server.sock)

        # hot path: sink.decision() itself
        async def call_cost() -> float:
            sink = AuditSink(server.url, tmp / "spool-cost", interval=3600, batch=10**9, buffer_max=10**9)
            rid, call, d = sample(1)
            t = time.perf_counter()
            for _ in range(100_000):
                sink.decision(rid, call, d, 0.0005, "bench", 0)
            return (time.perf_counter() - t) / 100_000 * 1e9

        print(f"sink.decision(): {asyncio.run(call_cost()):.0f} ns per call (the only audit work on the INVITE path)")
        import uvloop

        off = uvloop.run(loop_delay(server.url, tmp / "spool-off", args.rate, args.seconds, False))
        on = uvloop.run(loop_delay(server.url, tmp / "spool-on", args.rate, args.seconds, True))
        print(f"event-loop stalls at {args.rate} decisions/s, p99 / p99.99 / max: without audit "
              f"{p(off, .99):.0f} / {p(off, .9999):.0f} / {max(off):.0f} µs; with audit "
              f"{p(on, .99):.0f} / {p(on, .9999):.0f} / {max(on):.0f} µs")

        client = redis.Redis(unix_socket_path=str(server.sock))
        client.delete("{cag:audit}:stream")
        n = args.records
        es = entries_for(n, int(time.time()) * 1_000_000)

        async def fill() -> None:  # as the workers' sinks write them: chunks
            sink = AuditSink(server.url, tmp / "spool-fill", max_stream=10**9)
            await sink.start()
            for i in range(0, len(es), 20_000):
                await sink._xadd(es[i : i + 20_000])
            await sink.close()

        asyncio.run(fill())
        arch = Archiver(client, tmp / "archive", name="bench", block_ms=1)
        arch.ensure_group()
        t = time.perf_counter()
        total = arch.drain()
        dt = time.perf_counter() - t
        print(f"archiver (one process): {total / dt:,.0f} entries/s = {n / dt:,.0f} records/s sustained over {n} records")
        t = time.perf_counter()
        out = subprocess.run(
            [str(Path(sys.executable).parent / "cag"), "audit", "export", "--archive-only",
             "--archive-dir", str(tmp / "archive"), "--redis-url", server.url],
            capture_output=True, check=True,
        ).stdout
        dt = time.perf_counter() - t
        rows = out.count(b"\n")
        print(f"export: {rows:,} records in {dt:.2f} s = {rows / dt:,.0f} records/s")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
