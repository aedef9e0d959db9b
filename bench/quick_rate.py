"""Live rate steps: SIPp caller → gateway (2 workers) → SIPp callee, with a private redis-server.

Prints per rate step the successful / failed calls and the CPU each process
spent per call, read from ``/proc/PID/stat`` (system-wide figures are
unreliable in these VMs, BENCHMARKS.md). Gateway CPU is the parent plus its
worker children. Run: ``python -m bench.quick_rate [--rates 500,1000] [--seconds 10]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

from gateway.embedded_redis import EmbeddedRedis
from tests.integration.harness import GatewayProc, SippUas, run_uac, standard_policy

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (0 when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text.rpartition(")")[2].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / _TICK


def gateway_pids(parent: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout
    return [parent, *(int(p) for p in out.split())]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rates", default="500,1000,2000,3000", help="comma-separated calls/s")
    ap.add_argument("--seconds", type=int, default=10, help="length of each step")
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory(prefix="cag-rate-") as d:
        tmp = Path(d)
        redis = EmbeddedRedis(tmp / "redis-state")
        uas = SippUas(tmp)
        gw: GatewayProc | None = None
        try:
            redis.start()
            assert redis.proc is not None
            rows = standard_policy(redis.url, callees=2000)
            uas.start()
            gw = GatewayProc(redis.url, tmp / "gw", [uas.hop], workers=2)
            gw.state_dir.mkdir()
            gw.start()
            assert gw.proc is not None
            print(f"{'rate':>6} {'ok':>7} {'failed':>7} {'gw µs/call':>11} {'redis µs/call':>14}")
            for rate in rates:
                pids = gateway_pids(gw.proc.pid)
                gw0 = sum(cpu_seconds(p) for p in pids)
                r0 = cpu_seconds(redis.proc.pid)
                res = run_uac(tmp, gw.port, rows, calls=rate * args.seconds, rate=rate, limit=5000)
                gw_cpu = sum(cpu_seconds(p) for p in pids) - gw0
                r_cpu = cpu_seconds(redis.proc.pid) - r0
                n = max(res.successful, 1)
                print(
                    f"{rate:>6} {res.successful:>7} {res.failed:>7} "
                    f"{gw_cpu / n * 1e6:>11.0f} {r_cpu / n * 1e6:>14.0f}",
                    flush=True,
                )
        finally:
            if gw is not None:
                gw.stop()
            uas.stop()
            redis.stop()


if __name__ == "__main__":
    main()
