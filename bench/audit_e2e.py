"""The audit trail's cost on the INVITE path, end to end: same run, audit on vs off.

    python -m bench.audit_e2e [--rate 500] [--seconds 10] [--rounds 4] [--no-archiver] [--control]

Starts one private ``redis-server``, one SIPp callee and two gateways side by
side — ``cag serve`` (audit on, with its archiver child) and ``cag serve
--no-audit`` — then runs rounds in which both take the same call rate at the
same time, each from its own SIPp caller. INVITE → final response latency
comes from a tcpdump capture of each gateway's listen port (µs timestamps;
needs root, as the sweep). Prints each round's p99 per mode and how long the
box kept runnable threads off the CPU in that round, then p50/p90/p99/p99.9
per mode over all rounds, and writes a JSON report under ``bench/results/``.

Why simultaneous: on a 2-core VM shared with SIPp and Redis, the host's own
stalls (tens of ms, at random) land in one step or another; run one after
the other, the same code measured ±20 ms apart at p99 in either direction.
Run together, both modes see the same stalls and the difference is the
audit's. ``--control`` runs both gateways without audit: the difference it
prints is the comparison's noise floor.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import redis as redis_sync

from bench import capture, pcap, stats
from bench.peers import GatewayProc, SippUas, run_uac
from gateway.audit.sink import STREAM, count_key
from gateway.embedded_redis import EmbeddedRedis
from tests.integration.harness import standard_policy

ROOT = Path(__file__).resolve().parent.parent


def _step(
    tmp: Path,
    gws: dict[str, GatewayProc],
    rows: list[list[str]],
    rate: int,
    seconds: float,
    tag: str,
) -> dict[str, dict[str, Any]]:
    """One round: both gateways take the same rate at the same time, each from its own SIPp caller.

    Simultaneous rather than one after the other: on a shared 2-core VM the
    host takes the CPU away for tens of ms at unpredictable moments (see
    ``_Starvation``), and a stall that lands in one mode's step only is what
    made sequential comparisons swing by ±20 ms at p99 either way.
    """
    paths = {m: tmp / f"{tag}-{m}.pcap" for m in gws}
    caps = {m: capture.Capture(paths[m], [gw.port]).start() for m, gw in gws.items()}
    try:
        with ThreadPoolExecutor(len(gws)) as pool:
            futs = {
                m: pool.submit(
                    run_uac,
                    tmp,
                    gw.port,
                    rows,
                    calls=int(rate * seconds),
                    rate=rate,
                    limit=max(2000, rate * 5),
                    timeout=seconds + 30,
                )
                for m, gw in gws.items()
            }
            results = {m: f.result() for m, f in futs.items()}
        time.sleep(0.5)
    finally:
        cstats = {m: c.stop() for m, c in caps.items()}
    out: dict[str, dict[str, Any]] = {}
    for m, path in paths.items():
        answered, unanswered = pcap.latencies(path)
        path.unlink(missing_ok=True)
        # "unanswered" = an INVITE in the capture without its final response there: with
        # capture_dropped > 0 that is tcpdump's loss, not the gateway's (SIPp counts failures).
        out[m] = {
            "successful": results[m].successful,
            "failed": results[m].failed,
            "unanswered": unanswered,
            "capture_dropped": cstats[m].get("dropped_by_kernel", 0),
            "latency_ms": [a.latency_ms for a in answered],
        }
    return out


class _Starvation:
    """How long this box kept a runnable thread off the CPU: the noise floor of any tail figure.

    A thread asks to sleep 1 ms in a loop and adds up every oversleep beyond
    5 ms. Such stalls hit every process at once (the host's scheduler, not
    the gateway), so a round with seconds of them says its p99 is the
    machine's, not the code's.
    """

    def __init__(self) -> None:
        self.stalled_ms = 0.0
        self.worst_ms = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            time.sleep(0.001)
            late = (time.perf_counter() - t0 - 0.001) * 1000.0
            if late > 5.0:
                self.stalled_ms += late
                self.worst_ms = max(self.worst_ms, late)

    def __enter__(self) -> _Starvation:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--rate", type=int, default=500, help="calls/s offered in every step (default 500)"
    )
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each step (default 10)")
    ap.add_argument(
        "--rounds", type=int, default=4, help="on/off pairs, order alternating (default 4)"
    )
    ap.add_argument(
        "--no-archiver",
        action="store_true",
        help="no archiver child on this box (production runs it elsewhere): the stream just grows",
    )
    ap.add_argument(
        "--control",
        action="store_true",
        help="A/A control: the 'on' gateway runs --no-audit too, so the on-off difference "
        "printed is the comparison's own noise floor on this box",
    )
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
        round_p99: dict[str, list[float]] = {"on": [], "off": []}
        stalls: list[float] = []
        counts: dict[str, dict[str, int]] = {
            m: {"successful": 0, "failed": 0, "unanswered": 0, "capture_dropped": 0}
            for m in samples
        }
        try:
            rs.start()
            rows = standard_policy(rs.url, callees=2000)
            uas.start()
            env = {"CAG_UNCONSENTED_THRESHOLD": "1000000000", "CAG_CALLEE_DAILY_CAP": "0"}
            archiver = ("off",) if args.no_archiver else ("on", "--audit-dir", str(tmp / "archive"))
            gws["on"] = GatewayProc(
                rs.url,
                tmp / "gw-on",
                [uas.hop],
                env=env,
                extra=("--no-audit",)
                if args.control
                else ("--audit", "--audit-archiver", *archiver),
            )
            gws["off"] = GatewayProc(
                rs.url, tmp / "gw-off", [uas.hop], env=env, extra=("--no-audit",)
            )
            for gw in gws.values():
                gw.state_dir.mkdir(parents=True)
                gw.start()
            _step(
                tmp, gws, rows, args.rate, 2.0, "warm"
            )  # caches, connections, first touches: not counted
            for r in range(args.rounds):
                with _Starvation() as starved:
                    outs = _step(tmp, gws, rows, args.rate, args.seconds, f"round-{r}")
                line = []
                for mode, out in outs.items():
                    lat = out.pop("latency_ms")
                    samples[mode] += lat
                    p99 = stats.percentiles(lat).get("p99", 0.0)
                    round_p99[mode].append(p99)
                    for k, v in out.items():
                        counts[mode][k] += v
                    line.append(
                        f"{mode} p99 {p99:7.3f} ms ({out['successful']} ok, {out['failed']} failed)"
                    )
                stalls.append(round(starved.stalled_ms, 1))
                print(
                    f"round {r}: "
                    + "; ".join(line)
                    + f"; box stalled {starved.stalled_ms:.0f} ms (worst {starved.worst_ms:.0f} ms)",
                    flush=True,
                )
            time.sleep(2.5)  # one flush interval and an archiver pass
            client = redis_sync.Redis.from_url(rs.url)
            in_stream = int(client.get(count_key(STREAM)) or 0)  # audit entries (XLEN counts chunks)
            client.close()
        finally:
            for gw in gws.values():
                gw.stop()
            uas.stop()
            rs.stop()
        archived = (
            sum(1 for _ in (tmp / "archive").rglob("*.parquet")) if not args.no_archiver else 0
        )
    report: dict[str, Any] = {
        "rate": args.rate,
        "seconds_per_step": args.seconds,
        "rounds": args.rounds,
        "archiver_on_this_box": not args.no_archiver,
        "latency_ms": {m: stats.percentiles(v) for m, v in samples.items()},
        "round_p99_ms": round_p99,
        "median_round_p99_ms": {m: statistics.median(v) for m, v in round_p99.items() if v},
        "box_stalled_ms_per_round": stalls,
        "control": args.control,
        "calls": counts,
        "audit_stream_left": in_stream,
        "archive_segments": archived,
    }
    on, off = report["latency_ms"]["on"], report["latency_ms"]["off"]
    print(
        f"{'':>10} {'p50':>8} {'p90':>8} {'p99':>8} {'p99.9':>8}   (ms, INVITE → final, on the wire)"
    )
    for m, p in (("audit on", on), ("audit off", off)):
        print(
            f"{m:>10} " + " ".join(f"{p.get(k, 0):>8.3f}" for k in ("p50", "p90", "p99", "p99.9"))
        )
    print(
        f"p99 difference (on - off): {on.get('p99', 0) - off.get('p99', 0):+.3f} ms; median of the rounds' p99: "
        + " vs ".join(f"{report['median_round_p99_ms'].get(m, 0):.3f}" for m in ("on", "off"))
        + " ms"
    )
    out_path = (
        args.out or ROOT / "bench" / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-audit-e2e.json"
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2))
    print(f"report: {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
