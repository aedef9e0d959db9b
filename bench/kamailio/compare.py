"""Only the ``--proxy`` steps of the sweep: Kamailio beside the bare relay, no gateway step.

    python -m bench.kamailio.compare --rates 2000,4000 --duration 10 \\
      --proxy "kamailio=$PWD/.venv/bin/python -m bench.kamailio.run --port {port} --next-hop {next_hop}" \\
      --proxy "relay=$PWD/.venv/bin/python -m bench.relay --listen {port} --next-hop {next_hop}"

The sweep (``python -m bench sweep``) always runs the gateway step too, which
costs minutes and loads the shared box between the proxy steps; checking the
yardstick itself needs only the proxies, measured by the very same
``Sweep.step`` (same SIPp peers, capture, CPU accounting, pass criteria). The
rig still starts (its Redis, callee and an idle gateway), on a small data set.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bench import dataset
from bench.__main__ import _proxy, _rates
from bench.sweep import Sweep, SweepConfig, _line, say


def ctx_switches(pids: list[int]) -> int:
    """Voluntary + involuntary context switches of these processes so far (0 for one that is gone).

    Kamailio blocks per datagram and per Redis round trip where the relay's
    event loop reads many datagrams per wake-up: on a crowded box the
    switches, not the SIP work, set the CPU per call.
    """
    n = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        n += sum(int(line.split()[1]) for line in text.splitlines() if "ctxt_switches:" in line)
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.kamailio.compare", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--rates", type=_rates, default=(2000,))
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--proxy", action="append", default=[], metavar="NAME=COMMAND", required=True)
    ap.add_argument("--direct", action="store_true", help="also the direct SIPp → SIPp step")
    ap.add_argument("--repeat", type=int, default=1, help="run each (rate, proxy) step N times")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    spec = dataset.DatasetSpec(filed=1000, consents=5000, dnc_extra=1000)
    cfg = SweepConfig(
        rates=args.rates,
        duration=args.duration,
        spec=spec,
        out=args.out,
        keep_going=True,
        proxies=tuple(_proxy(p) for p in args.proxy),
    )
    sw = Sweep(cfg)
    steps = []
    try:
        sw.setup()
        for rate in cfg.rates:
            for _ in range(args.repeat):
                for target in (["direct"] if args.direct else []) + list(sw.proxies):
                    proxy = sw.proxies.get(target)
                    pids = proxy.pids() if proxy else []
                    cs0 = ctx_switches(pids)
                    s = sw.step(target, rate)
                    if pids and s["successful"]:
                        s["proxy_ctx_switches_per_call"] = round(
                            (ctx_switches(pids) - cs0) / s["calls"], 1
                        )
                    s["loadavg"] = os.getloadavg()
                    steps.append(s)
                    say(
                        _line(s)
                        + f"  ctx/call {s.get('proxy_ctx_switches_per_call', '-')}  load {s['loadavg'][0]:.2f}"
                    )
    finally:
        for p in sw.proxies.values():
            p.stop()
        sw.rig.stop()
    path = sw.out / "compare.json"
    path.write_text(json.dumps({"command": sys.argv, "steps": steps}, indent=1))
    say(f"bench: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
