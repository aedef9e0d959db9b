"""The audit archive at carrier scale (issue 17): look-ups, export, archiver, bytes per record.

    python -m bench audit-scale --records N [--rate 1000] [--dir DIR] [--keep]
                                [--archiver-records 200000] [--export-hours 1]

1. **Generates** a synthetic archive of N records at ``--rate`` calls/s
   (86.4M = one day at 1,000 calls/s): hourly partitions holding one packed
   records file and its index each, as the archiver's compaction leaves a
   closed hour — same layout (``columnar.packed_table``: the compaction's
   own ``engine.pack_sql``), sort, row groups, statistics and Bloom filters
   (``gateway.audit.columnar``), built from numpy/Arrow columns, no
   per-record Python. Values: see ``Model``.
2. **Look-ups** through ``gateway.audit.export.find`` (the complaint trace's
   path) and through ``cag audit export`` (a process, start-up included):
   a (caller, callee) pair over the last 72 h, one Call-ID over a day; page
   cache warm (just written) and, as root, cold (caches dropped first).
3. **Export**: ``cag audit export --since --until`` of ``--export-hours``
   to /dev/null: records/s.
4. **Archiver**, the real path: ``AuditSink`` chunks of realistic entries
   (``bench.audit``) in a private redis-server's stream, then
   ``Archiver.drain()`` (XREADGROUP → Arrow → Parquet, fsync → XACK/XDEL):
   records/s and CPU per record; then the compaction of what it wrote.

Prints one JSON object (and writes it to DIR/audit-scale.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from gateway.audit import columnar, segments

HOUR_US = segments.HOUR_US
T_START = 1_773_100_800_000_000  # 2026-03-10T00:00:00Z

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_DIGITS = np.frombuffer(b"0123456789", dtype=np.uint8)

# reason → share of calls (the benchmark data set's default mix, bench/dataset.py) and SIP code
MIX = (("admitted", 90.0, 0), ("consent_unknown", 2.0, 608), ("callee_dnc", 2.0, 608),
       ("caller_not_filed", 2.0, 403), ("purpose_marketing", 2.0, 608), ("consent_expired", 0.5, 608),
       ("consent_missing", 0.5, 608), ("caller_outbound_disabled", 1.0, 403))
FAIL_CODES = np.array([486, 480, 487, 603, 404], dtype=np.int32)


@dataclass(frozen=True)
class Model:
    """What the synthetic records look like (per call, at ``rate`` calls/s).

    - Call-ID: a random UUID4 ``@`` the trunk's SBC address (what dialers send);
    - record id: ``NODE-WORKER-COUNTER-RUN`` as ``gateway.proxy.server`` makes it,
      ``nodes`` gateway nodes x 8 workers, each drawing its 32-bit ``RUN`` once (a
      worker's life: the whole archive here; before 2026-12-07 a fresh one per record);
    - ``enterprises`` enterprises, 4 trunks and 200 filed access numbers each (callers);
    - consents: ``consents`` of them (default: two call attempts per callee a day), each
      a callee number, a token (16 random hex) and an evidence URL (32 random hex);
      a call draws one at random: its callee, and its enterprise's trunk and caller;
    - decisions: the benchmark mix (90 % admitted); a rejection keeps the token presented
      (none for consent_missing) and has no evidence reference;
    - outcomes of admitted calls: 65 % answered (200; ring 2-20 s; talk exponential,
      mean 120 s), the rest a failure code after the ring;
    - decision latency log-normal around 350 µs.
    """

    rate: float = 1000.0
    nodes: int = 4
    enterprises: int = 50
    consents: int = 43_200_000
    seed: int = 1


def _mix64(x: np.ndarray, salt: int) -> np.ndarray:
    """splitmix64: a consent index → 64 random-looking bits (same index, same bits)."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64((0x9E3779B97F4A7C15 * (salt + 1)) & 0xFFFFFFFFFFFFFFFF)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _hex(words: np.ndarray, width: int) -> np.ndarray:
    """uint64 → (n, width) ASCII hex digits (the low ``width`` nibbles)."""
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64) * np.uint64(4)
    return _HEX[((words[:, None] >> shifts) & np.uint64(15)).astype(np.intp)]


def _digits(values: np.ndarray, width: int) -> np.ndarray:
    p = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return _DIGITS[((values[:, None] // p) % 10).astype(np.intp)]


def _strings(*parts: np.ndarray | bytes) -> pa.Array:
    """Fixed-width pieces (2-D uint8 arrays, or constant bytes) → one string per row, no Python loop."""
    n = next(p.shape[0] for p in parts if isinstance(p, np.ndarray))
    cols = [p if isinstance(p, np.ndarray) else np.broadcast_to(np.frombuffer(p, np.uint8), (n, len(p)))
            for p in parts]
    block = np.ascontiguousarray(np.concatenate(cols, axis=1))
    width = block.shape[1]
    offsets = np.arange(n + 1, dtype=np.int32) * width
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(block)])


def _pick(labels: list[str], idx: np.ndarray) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(idx.astype(np.int32)), pa.array(labels)).cast(pa.string())


def hour_table(m: Model, hour_us: int, n: int, rng: np.random.Generator, counter0: int) -> pa.Table:
    """One hour's ``n`` records, in the order a compaction writes them (time; times are distinct)."""
    t = hour_us + np.sort(rng.choice(HOUR_US, size=n, replace=False)).astype(np.int64)
    consent = rng.integers(0, m.consents, n, dtype=np.int64)
    ent = consent % m.enterprises
    trunk = ent * 4 + rng.integers(0, 4, n)
    caller_num = 4_000_000 + ent * 200 + rng.integers(0, 200, n)  # +86400xxxxxxx
    callee_num = (_mix64(consent, 0) % np.uint64(1_000_000_000)).astype(np.int64)  # +8613xxxxxxxxx
    # decisions
    shares = np.array([s for _, s, _ in MIX]) / sum(s for _, s, _ in MIX)
    reason_i = rng.choice(len(MIX), size=n, p=shares)
    admitted = reason_i == 0
    decision_i = np.where(admitted, 0, 1)  # shadow mode (would_reject) off in the model
    sip = np.array([c for *_, c in MIX], dtype=np.int32)[reason_i]
    # the record id: node-worker-counter-rand
    node = rng.integers(0, m.nodes, n)
    worker = rng.integers(0, 8, n).astype(np.int32)
    counter = counter0 + np.arange(n, dtype=np.int64) // (m.nodes * 8)
    rnd = _mix64(np.arange(m.nodes * 8, dtype=np.int64), 4)[node * 8 + worker] & np.uint64(0xFFFFFFFF)
    node_names = [f"gw-node-{i + 1:02d}" for i in range(m.nodes)]
    node_d = np.array([[*f"gw-node-{i + 1:02d}".encode()] for i in range(m.nodes)], dtype=np.uint8)[node]
    rid = _strings(node_d, b"-", _DIGITS[worker.astype(np.intp)][:, None], b"-",
                   _hex(counter.astype(np.uint64), 7), b"-", _hex(rnd, 8))
    # Call-ID: uuid4@sbc-of-trunk
    u1, u2 = rng.integers(0, 1 << 63, n, dtype=np.uint64), rng.integers(0, 1 << 63, n, dtype=np.uint64)
    h1, h2 = _hex(u1, 16), _hex(u2, 16)
    h2[:, 0] = ord("4")
    host = np.array([[*f"10.{20 + i // 250:03d}.{i % 250:03d}.{(i * 7) % 250:03d}".encode()]
                     for i in range(m.enterprises * 4)], dtype=np.uint8)[trunk]
    call_id = _strings(h1[:, :8], b"-", h1[:, 8:12], b"-", h1[:, 12:16], b"-", h2[:, :4], b"-", h2[:, 4:16],
                       b"@", host)
    token_words = _mix64(consent, 1)
    presented = np.where(reason_i == 1, rng.integers(0, 1 << 63, n, dtype=np.uint64), token_words)
    token = _strings(_hex(presented, 16))
    ent_d = _digits(ent, 4)
    evidence = _strings(b"s3://consent-evidence/ent-", ent_d, b"/", _hex(_mix64(consent, 2), 16),
                        _hex(_mix64(consent, 3), 16), b".wav")
    no_token = reason_i == 6  # consent_missing
    # outcomes
    answered = admitted & (rng.random(n) < 0.65)
    ring = rng.integers(2_000_000, 20_000_000, n)
    talk = rng.exponential(120e6, n).astype(np.int64)
    final = np.where(answered, 200, FAIL_CODES[rng.integers(0, len(FAIL_CODES), n)]).astype(np.int32)
    ans_at = t + ring
    end_at = np.where(answered, ans_at + talk, t + ring)
    latency = np.maximum(50, rng.lognormal(np.log(350), 0.5, n)).astype(np.int64)
    cols = {
        "t": pa.array(t),
        "rid": rid,
        "call_id": call_id,
        "trunk_id": _strings(b"trunk-", _digits(trunk, 4)),
        "enterprise_id": _strings(b"ent-", ent_d),
        "caller": _strings(b"+86", _digits(caller_num, 10)),
        "callee": _strings(b"+8613", _digits(callee_num, 9)),
        "decision": _pick(["admit", "reject", "would_reject"], decision_i),
        "reason": _pick([r for r, *_ in MIX], reason_i),
        "sip_code": pa.array(sip),
        "consent_token": _mask(token, no_token),
        "evidence_ref": _mask(evidence, ~admitted),
        "latency_us": pa.array(latency),
        "node": _pick(node_names, node),
        "worker": pa.array(worker),
        "final_code": pa.array(final, mask=~admitted),
        "answered_at": pa.array(ans_at, mask=~answered),
        "ended_at": pa.array(end_at, mask=~admitted),
    }
    return pa.Table.from_arrays([cols[f] for f in columnar.RECORD_FIELDS], schema=columnar.RECORD_SCHEMA)


def _mask(arr: pa.Array, null: np.ndarray) -> pa.Array:
    import pyarrow.compute as pc

    return pc.if_else(pa.array(null), pa.nulls(len(arr), arr.type), arr)


def generate(root: Path, records: int, m: Model) -> dict[str, Any]:
    rng = np.random.default_rng(m.seed)
    per_hour = int(m.rate * 3600)
    left, hour, counter = records, T_START, 1 << 24
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    sample: dict[str, Any] = {}
    while left > 0:
        n = min(per_hour, left)
        table = hour_table(m, hour, n, rng, counter)
        counter += n // (m.nodes * 8) + 1
        part = segments.partition_dir(root, hour)
        name = segments.file_name(segments.PACKED, "records")
        index = columnar.index_table(table)
        columnar.write_file(part, segments.index_of(part / name).name, index, "index")
        columnar.write_file(part, name, columnar.packed_table(table), "packed")
        if not sample or left - n <= 0:
            i = int(rng.integers(0, n))
            sample = {k: table.column(k)[i].as_py() for k in ("t", "rid", "call_id", "caller", "callee")}
        left -= n
        hour += HOUR_US
    dt = time.perf_counter() - t0
    return {"generate_s": round(dt, 1), "generate_records_per_s": round(records / dt),
            "generate_cpu_s": round(time.process_time() - cpu0, 1), "end_us": hour, "sample": sample}


def _du(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.parquet"))


def _column_bytes(root: Path) -> dict[str, float]:
    import pyarrow.parquet as pq

    sizes: dict[str, int] = {}
    rows = 0
    for p in [*root.rglob("*.records.parquet"), *root.rglob("*.index.parquet")]:
        md = pq.read_metadata(p)
        index = p.name.endswith(".index.parquet")
        rows += 0 if index else md.num_rows
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            for c in range(rg.num_columns):
                col = rg.column(c)
                key = ("index." if index else "") + col.path_in_schema
                sizes[key] = sizes.get(key, 0) + col.total_compressed_size
    return {k: round(v / rows, 2) for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])}


def _drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _iso(us: int) -> str:
    from gateway.audit.record import iso_us

    return str(iso_us(us))


def lookups(root: Path, gen: dict[str, Any], cag: str) -> dict[str, Any]:
    from gateway.audit.export import Query, find

    s = gen["sample"]
    end = gen["end_us"]
    pair = Query(since_us=end - 72 * HOUR_US, until_us=end, caller=frozenset({s["caller"]}),
                 callee=frozenset({s["callee"]}))
    day0 = segments.hour_of(s["t"]) - 12 * HOUR_US
    cid = Query(since_us=day0, until_us=day0 + 24 * HOUR_US, call_id=s["call_id"])
    out: dict[str, Any] = {}
    for cache in ("warm", "cold"):
        for name, q in (("caller_callee_72h", pair), ("call_id_1day", cid)):
            if cache == "cold" and not _drop_caches():
                continue
            t = time.perf_counter()
            rows = find([root], q)
            dt = time.perf_counter() - t
            assert any(r["record_id"] == s["rid"] for r in rows), (name, rows)
            out[f"{name}_{cache}"] = round(dt, 3)
            out[f"{name}_rows"] = len(rows)
    # the command, start-up included
    for name, args in (("caller_callee_72h", ["--caller", s["caller"], "--callee", s["callee"],
                                              "--since", _iso(pair.since_us or 0), "--until", _iso(end)]),
                       ("call_id_1day", ["--call-id", s["call_id"], "--since", _iso(day0),
                                         "--until", _iso(day0 + 24 * HOUR_US)])):
        t = time.perf_counter()
        p = subprocess.run([cag, "audit", "export", "--archive-only", "--archive-dir", str(root), *args],
                           capture_output=True, text=True, check=True)
        out[f"{name}_cli"] = round(time.perf_counter() - t, 3)
        assert s["rid"] in p.stdout
    return out


def export_rate(root: Path, hours: int, cag: str) -> dict[str, Any]:
    since = T_START
    until = T_START + hours * HOUR_US
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    with open(os.devnull, "w") as null:
        p = subprocess.Popen([cag, "audit", "export", "--archive-only", "--archive-dir", str(root),
                              "--since", _iso(since), "--until", _iso(until)], stdout=subprocess.PIPE)
        n = 0
        assert p.stdout is not None
        for chunk in iter(lambda: p.stdout.read(1 << 20), b""):  # type: ignore[union-attr]
            n += chunk.count(b"\n")
        p.wait()
        del null
    dt = time.perf_counter() - t
    ru2 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru2.ru_utime - ru.ru_utime) + (ru2.ru_stime - ru.ru_stime)
    return {"export_records": n, "export_s": round(dt, 2), "export_records_per_s": round(n / dt),
            "export_cpu_s": round(cpu, 2), "export_records_per_cpu_s": round(n / cpu)}


def archiver_rate(records: int, tmp: Path) -> dict[str, Any]:
    """The real path: sink chunks in redis-server's stream → Archiver.drain() → Parquet files."""
    import redis

    from bench.audit import entries_for
    from gateway.audit.archiver import Archiver
    from gateway.audit.sink import AuditSink
    from gateway.embedded_redis import EmbeddedRedis

    random.seed(1)
    shutil.rmtree(tmp, ignore_errors=True)
    server = EmbeddedRedis(tmp / "redis")
    server.start()
    try:
        entries = entries_for(records, int(time.time()) * 1_000_000)

        async def fill() -> None:
            sink = AuditSink(server.url, tmp / "spool", max_stream=10**9)
            await sink.start()
            for i in range(0, len(entries), 20_000):
                await sink._xadd(entries[i : i + 20_000])
            await sink.close()

        asyncio.run(fill())
        client = redis.Redis(unix_socket_path=str(server.sock))
        arch = Archiver(client, tmp / "archive", name="bench", block_ms=1, maintain_s=1e9)
        arch.ensure_group()
        arch._next_maintain = time.monotonic() + 1e9
        t, c = time.perf_counter(), time.process_time()
        got = arch.drain()
        dt, cpu = time.perf_counter() - t, time.process_time() - c
        assert got == len(entries), (got, len(entries))
        redis_cpu = _redis_cpu(server)
        part = segments.partitions(tmp / "archive")
        t, c = time.perf_counter(), time.process_time()
        for _, p in part:
            segments.compact(p, lambda p, m: print(p, m, file=sys.stderr), min_segments=1, threads=1)
        cdt, ccpu = time.perf_counter() - t, time.process_time() - c
        per_rec = _du(tmp / "archive") / records
        client.close()
    finally:
        server.stop()
    return {
        "archive_records": records, "archive_entries": len(entries), "archive_s": round(dt, 2),
        "archive_records_per_s": round(records / dt), "archive_entries_per_s": round(len(entries) / dt),
        "archiver_cpu_us_per_record": round(cpu / records * 1e6, 2),
        "redis_cpu_s_total": redis_cpu,
        "compact_s": round(cdt, 2), "compact_cpu_us_per_record": round(ccpu / records * 1e6, 2),
        "compacted_bytes_per_record_bench_audit_values": round(per_rec, 1),
    }


def _redis_cpu(server: Any) -> float | None:
    try:
        import redis

        c = redis.Redis(unix_socket_path=str(server.sock))
        info = c.info("cpu")
        c.close()
        return round(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]), 2)
    except Exception:
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench audit-scale", description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=2_000_000, help="records in the synthetic archive")
    ap.add_argument("--rate", type=float, default=1000.0, help="calls/s the archive spans (86.4M = 1 day at 1,000)")
    ap.add_argument("--consents", type=int, default=None,
                    help="consent universe (default: two attempts per callee a day at --rate)")
    ap.add_argument("--dir", type=Path, default=None, help="where to build it (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the archive")
    ap.add_argument("--reuse", action="store_true", help="use the archive already in --dir (skip generation)")
    ap.add_argument("--archiver-records", type=int, default=200_000, help="records through the real archiver")
    ap.add_argument("--export-hours", type=int, default=1, help="hours exported for export_records_per_s")
    args = ap.parse_args(argv)
    m = Model(rate=args.rate, consents=args.consents or int(args.rate * 86_400 / 2))
    base = args.dir or Path(tempfile.mkdtemp(prefix="cag-audit-scale-"))
    root = base / "archive"
    cag = str(Path(sys.executable).parent / "cag")
    try:
        res: dict[str, Any] = {"records": args.records, "rate": args.rate, "model": m.__dict__,
                               "load_average_at_start": os.getloadavg(), "cpus": os.cpu_count(),
                               "bloom_filters": columnar.HAVE_BLOOM, "row_group": columnar.ROW_GROUP}
        if args.reuse and (base / "gen.json").exists():
            gen = json.loads((base / "gen.json").read_text())
        else:
            shutil.rmtree(root, ignore_errors=True)
            gen = generate(root, args.records, m)
            (base / "gen.json").write_text(json.dumps(gen))
        res.update({k: v for k, v in gen.items() if k != "sample"})
        size = _du(root)
        res["bytes_on_disk"] = size
        res["bytes_per_record"] = round(size / args.records, 1)
        res["column_bytes_per_record"] = _column_bytes(root)
        look = lookups(root, gen, cag)
        res["lookups"] = look
        res["lookup_s"] = {"caller_callee_72h": look.get("caller_callee_72h_cold", look["caller_callee_72h_warm"]),
                           "call_id_1day": look.get("call_id_1day_cold", look["call_id_1day_warm"])}
        res.update(export_rate(root, args.export_hours, cag))
        if args.archiver_records:
            res.update(archiver_rate(args.archiver_records, base / "arch"))
        days = 30
        per_day = args.rate * 86_400
        res["projection_30_days"] = {
            "records": int(per_day * days), "disk_gb": round(res["bytes_per_record"] * per_day * days / 1e9, 1),
            "note": "look-ups read one row group per hourly file for a callee (sorted) and one Bloom "
                    "filter per row group for a Call-ID: time grows with the hours in the range, "
                    "not with the records in them",
        }
        res["load_average_at_end"] = os.getloadavg()
        res["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        text = json.dumps(res, indent=2)
        print(text)
        (base / "audit-scale.json").write_text(text)
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
        elif not args.keep:
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(base / "arch", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
