"""The audit trail's cost on the INVITE path, end to end: same run, audit on vs off.

    python -m bench.audit_e2e [--rate 500] [--seconds 10] [--rounds 4] [--no-archiver]

Starts one private ``redis-server``, one SIPp callee and two gateways side by
side — ``cag serve`` (audit on, with its archiver child) and ``cag serve
--no-audit`` — then alternates SIPp caller steps at one rate through each
(on, off, off, on, …, after a warm-up step each) so both see the same machine
state. INVITE → final
response latency comes from a tcpdump capture of each gateway's listen port
(µs timestamps; needs root, as the sweep). Prints p50/p90/p99/p99.9 per
mode, the records the audited gateway wrote, and writes a JSON report under
``bench/results/``.

Why alternate instead of two sweeps: on a 2-core box shared with SIPp and
Redis, minutes apart is enough for the machine's own noise to exceed the few
microseconds the audit path costs; alternating rounds makes the comparison a
difference within one run, which is what the issue asks for.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import redis as redis_sync

from bench import capture, pcap, stats
from bench.peers import GatewayProc, SippUas, run_uac
from gateway.audit.sink import STREAM
from gateway.embedded_redis import EmbeddedRedis
from tests.integration.harness import standard_policy

ROOT = Path(__file__).resolve().parent.parent


def _step(tmp: Path, gw: GatewayProc, rows: list[list[str]], rate: int, seconds: float, tag: str) -> dict[str, Any]:
    path = tmp / f"{tag}.pcap"
    cap = capture.Capture(path, [gw.port]).start()
    try:
        res = run_uac(tmp, gw.port, rows, calls=int(rate * seconds), rate=rate, limit=max(2000, rate * 5),
                      timeout=seconds + 30)
        time.sleep(0.5)
    finally:
        cstats = cap.stop()
    answered, unanswered = pcap.latencies(path)
    path.unlink(missing_ok=True)
    # "unanswered" = an INVITE in the capture without its final response there: with
    # capture_dropped > 0 that is tcpdump's loss, not the gateway's (SIPp counts failures).
    return {"successful": res.successful, "failed": res.failed, "unanswered": unanswered,
            "capture_dropped": cstats.get("dropped_by_kernel", 0), "latency_ms": [a.latency_ms for a in answered]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=500, help="calls/s offered in every step (default 500)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each step (default 10)")
    ap.add_argument("--rounds", type=int, default=4, help="on/off pairs, order alternating (default 4)")
    ap.add_argument("--no-archiver", action="store_true",
                    help="no archiver child on this box (production runs it elsewhere): the stream just grows")
    ap.add_argument("--out", type=Path, default=None, help="JSON report path")
    args = ap.parse_args(argv)
    why = capture.available()
    if why:
        print(f"bench.audit_e2e: {why}")
        return 2
    with tempfile.TemporaryDirectory(prefix="cag-audit-e2e-") as d:
        tmp = Path(d)
        rs = EmbeddedRedis(tmp / "redis")
        uas = SippUas(tmp)
        gws: dict[str, GatewayProc] = {}
        samples: dict[str, list[float]] = {"on": [], "off": []}
        counts: dict[str, dict[str, int]] = {
            m: {"successful": 0, "failed": 0, "unanswered": 0, "capture_dropped": 0} for m in samples
        }
        try:
            rs.start()
            rows = standard_policy(rs.url, callees=2000)
            uas.start()
            env = {"CAG_UNCONSENTED_THRESHOLD": "1000000000", "CAG_CALLEE_DAILY_CAP": "0"}
            archiver = ("off",) if args.no_archiver else ("on", "--audit-dir", str(tmp / "archive"))
            gws["on"] = GatewayProc(rs.url, tmp / "gw-on", [uas.hop], env=env,
                                    extra=("--audit", "--audit-archiver", *archiver))
            gws["off"] = GatewayProc(rs.url, tmp / "gw-off", [uas.hop], env=env, extra=("--no-audit",))
            for gw in gws.values():
                gw.state_dir.mkdir(parents=True)
                gw.start()
            for mode in ("on", "off"):  # warm-up (caches, connections, first touches of keys): not counted
                _step(tmp, gws[mode], rows, args.rate, 2.0, f"warm-{mode}")
            for r in range(args.rounds):
                for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):  # neither always goes first
                    out = _step(tmp, gws[mode], rows, args.rate, args.seconds, f"{mode}-{r}")
                    samples[mode] += out.pop("latency_ms")
                    for k, v in out.items():
                        counts[mode][k] += v
                    p = stats.percentiles(samples[mode])
                    print(f"round {r} audit {mode:>3}: {out}  cumulative p99 {p.get('p99', 0):.3f} ms", flush=True)
            time.sleep(2.5)  # one flush interval and an archiver pass
            client = redis_sync.Redis.from_url(rs.url)
            in_stream = int(client.xlen(STREAM))
            client.close()
        finally:
            for gw in gws.values():
                gw.stop()
            uas.stop()
            rs.stop()
        archived = sum(1 for _ in (tmp / "archive").rglob("*.jsonl.gz")) if not args.no_archiver else 0
    report: dict[str, Any] = {
        "rate": args.rate, "seconds_per_step": args.seconds, "rounds": args.rounds,
        "archiver_on_this_box": not args.no_archiver,
        "latency_ms": {m: stats.percentiles(v) for m, v in samples.items()},
        "calls": counts, "audit_stream_left": in_stream, "archive_segments": archived,
    }
    on, off = report["latency_ms"]["on"], report["latency_ms"]["off"]
    print(f"{'':>10} {'p50':>8} {'p90':>8} {'p99':>8} {'p99.9':>8}   (ms, INVITE → final, on the wire)")
    for m, p in (("audit on", on), ("audit off", off)):
        print(f"{m:>10} " + " ".join(f"{p.get(k, 0):>8.3f}" for k in ("p50", "p90", "p99", "p99.9")))
    print(f"p99 difference (on - off): {on.get('p99', 0) - off.get('p99', 0):+.3f} ms")
    out_path = args.out or ROOT / "bench" / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-audit-e2e.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2))
    print(f"report: {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
