"""``python -m bench``: the benchmarks' command line (SPEC §9).

    python -m bench sweep [--quick] [--rates 500,1000,...] [--duration 20] ...
    python -m bench replay FILE [--speed N]
    python -m bench gen-pcap OUT.pcap [--calls N] [--cps R]
    python -m bench admission | proxy-core | sip-parse | stages | api [ARGS...]   (micro-benchmarks)
    python -m bench audit-scale --records N   (the audit archive at carrier scale, bench/audit_scale.py)
    python -m bench refdata --rows N   (filings in a worker: memory, deltas, explain/show; bench/refdata.py)

Every run writes into ``bench/results/<timestamp>-<kind>/`` (git-ignored)
and prints that path at the end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import dataset

MICRO = {
    "admission": "bench.admission",
    "proxy-core": "bench.proxy_core",
    "sip-parse": "bench.sip_parse",
    "api": "bench.api",
    "stages": "bench.stages",  # µs per call by stage, in process (issue 13's budget)
}


def _rates(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _data_args(p: argparse.ArgumentParser, consents: int) -> None:
    p.add_argument("--filed", type=int, default=10_000, help="filed caller numbers (default 10,000)")
    p.add_argument("--consents", type=int, default=consents, help=f"consents in Redis (default {consents:,})")
    p.add_argument("--dnc-extra", type=int, default=40_000,
                   help="DNC entries beyond the consented DNC callees (default 40,000)")
    p.add_argument("--mix", default=None,
                   help="call mix FAMILY=WEIGHT,...; families: " + ", ".join(dataset.FAMILIES)
                   + " (default " + ",".join(f"{k}={v:g}" for k, v in dataset.DEFAULT_MIX.items()) + ")")
    p.add_argument("--workers", type=int, default=2, help="gateway worker processes (default 2)")
    p.add_argument("--out", type=Path, default=None, help="results directory (default bench/results/<timestamp>-<kind>)")
    p.add_argument("--gateway-arg", action="append", default=[],
                   help="extra argument for `cag serve` (repeatable), e.g. --gateway-arg=--fail-mode=open")


def _proxy(text: str) -> tuple[str, str]:
    name, sep, command = text.partition("=")
    name = name.strip()
    if not sep or not name or not command.strip() or name in ("direct", "gateway"):
        raise SystemExit(f"bench: --proxy wants NAME=COMMAND (NAME not direct/gateway), got {text!r}")
    if "{port}" not in command:
        raise SystemExit(f"bench: --proxy {name}: COMMAND must say where to listen with {{port}}")
    return name, command


# Benchmarks with a command line of their own, run as they are (arguments passed on).
OWN = {**MICRO, "audit-scale": "bench.audit_scale", "refdata": "bench.refdata"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["load"]:  # reference-data loads (issue 14): its own parser, own --help
        from bench import load

        return load.main(argv[1:])
    if argv and argv[0] in OWN:
        import importlib

        mod = importlib.import_module(OWN[argv[0]])
        sys.argv = [f"python -m {OWN[argv[0]]}", *argv[1:]]
        rc = mod.main()
        return int(rc or 0)

    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    sw = sub.add_parser("sweep", help="rate sweep: gateway vs direct SIPp → SIPp, real peers on loopback")
    sw.add_argument("--quick", action="store_true",
                    help="CI smoke: 2 short low-rate steps on a small data set (seconds, not minutes)")
    sw.add_argument("--rates", type=_rates, default=None, help="offered calls/s per step, comma-separated")
    sw.add_argument("--duration", type=float, default=None, help="seconds per step (default 20; --quick 3)")
    sw.add_argument("--no-baseline", action="store_true", help="skip the direct SIPp → SIPp steps")
    sw.add_argument("--keep-captures", action="store_true", help="keep the per-step pcap files")
    sw.add_argument("--keep-going", action="store_true", help="run every rate even after one fails")
    sw.add_argument("--proxy", action="append", default=[], metavar="NAME=COMMAND",
                    help="another proxy measured at every rate, between direct and the gateway (repeatable); "
                         "COMMAND gets {port} (where it must listen, UDP 127.0.0.1) and {next_hop} "
                         "(host:port of the callee), e.g. "
                         "'relay=python -m bench.relay --listen {port} --next-hop {next_hop}'")
    sw.add_argument("--callers", type=int, default=1,
                    help="SIPp callers per step, each at rate/N from its own port (default 1: one trunk)")
    _data_args(sw, 1_000_000)

    rp = sub.add_parser("replay", help="replay the INVITEs of a pcap/pcapng or SIPp CSV through the gateway")
    rp.add_argument("file", type=Path)
    rp.add_argument("--speed", type=float, default=1.0, help="time scale: 10 = ten times faster (default 1)")
    rp.add_argument("--rate", type=float, default=100.0, help="calls/s for a CSV file, which has no timing")
    rp.add_argument("--limit", type=int, default=0, help="replay at most this many INVITEs (0: all)")
    _data_args(rp, 100_000)

    gp = sub.add_parser("gen-pcap", help="write a synthetic capture of calls matching the benchmark data set")
    gp.add_argument("out", type=Path)
    gp.add_argument("--calls", type=int, default=1000)
    gp.add_argument("--cps", type=float, default=50.0, help="mean arrival rate (Poisson)")
    gp.add_argument("--consents", type=int, default=100_000,
                    help="draw tokens from the first N consents (replay loads 100,000 by default)")
    gp.add_argument("--filed", type=int, default=10_000)
    gp.add_argument("--mix", default=None)
    gp.add_argument("--seed", type=int, default=1)

    for name, module in MICRO.items():
        sub.add_parser(name, help=f"micro-benchmark ({module}); arguments are passed on")
    sub.add_parser("load", help="a consent/DNC file through cag policy load: rows/s, RSS, bytes/row, stalls")
    sub.add_parser("audit-scale", help="audit archive at carrier scale: look-ups, export, archiver, bytes "
                                       "per record (--records N; bench/audit_scale.py)")
    sub.add_parser("refdata", help="filings in a worker at scale: memory, suspend-to-effect, deltas, "
                                   "explain/show reads (--rows N; bench/refdata.py)")

    args = ap.parse_args(argv)
    if args.cmd == "gen-pcap":
        from bench import pcap

        spec = dataset.DatasetSpec(filed=args.filed, consents=args.consents)
        calls = dataset.make_calls(args.calls, dataset.parse_mix(args.mix), spec, seed=args.seed)
        pcap.write_synthetic(args.out, calls, args.cps, seed=args.seed)
        print(f"bench: wrote {len(calls)} calls to {args.out}")
        return 0

    quick = getattr(args, "quick", False)
    spec = dataset.DatasetSpec(
        filed=1000 if quick and args.filed == 10_000 else args.filed,
        consents=5000 if quick and args.consents == 1_000_000 else args.consents,
        dnc_extra=1000 if quick and args.dnc_extra == 40_000 else args.dnc_extra,
    )
    mix = dataset.parse_mix(args.mix)
    extra = tuple(args.gateway_arg)
    if args.cmd == "sweep":
        from bench.sweep import DEFAULT_RATES, QUICK_RATES, Sweep, SweepConfig

        cfg = SweepConfig(
            rates=args.rates or (QUICK_RATES if quick else DEFAULT_RATES),
            duration=args.duration or (3.0 if quick else 20.0),
            baseline=not args.no_baseline, workers=args.workers, spec=spec, mix=mix, out=args.out,
            keep_captures=args.keep_captures, quick=quick, gateway_args=extra,
            keep_going=args.keep_going, callers=args.callers, proxies=tuple(_proxy(p) for p in args.proxy),
        )
        Sweep(cfg).run()
        return 0
    if args.cmd == "replay":
        from bench.replay import ReplayConfig, run_replay

        run_replay(ReplayConfig(file=args.file, speed=args.speed, rate=args.rate, limit=args.limit,
                                spec=spec, workers=args.workers, out=args.out, gateway_args=extra))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
