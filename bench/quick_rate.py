"""Live rate steps: SIPp caller → gateway (2 workers) → SIPp callee, with a private redis-server.

Prints per rate step the successful / failed calls and the CPU each process
spent per call, read from ``/proc/PID/stat`` (system-wide figures are
unreliable in these VMs: docs/performance.md, reference figures). Gateway CPU
is the parent plus its worker children; the CPU seconds of each worker are
printed too, to show how evenly the load spreads. ``--callers N`` (default 2)
runs N SIPp callers from their own ports at rate/N each (without steering the
``SO_REUSEPORT`` sockets hash each caller's address and port to one worker). ``--profile DIR`` records
every worker with py-spy during the first step (``DIR/worker-PID.txt``, raw
collapsed stacks; needs py-spy and ptrace rights).
Run: ``python -m bench.quick_rate [--rates 500,1000] [--seconds 10] [--callers 2]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gateway.embedded_redis import EmbeddedRedis
from tests.integration.harness import GatewayProc, SippResult, SippUas, run_uac, standard_policy

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
    ap.add_argument("--callers", type=int, default=2, help="SIPp callers per step, each from its own port")
    ap.add_argument("--profile", type=Path, help="py-spy record the workers during the first step into DIR")
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory(prefix="cag-rate-") as d:
        tmp = Path(d)
        redis = EmbeddedRedis(tmp / "redis-state")
        uas = SippUas(tmp, trace_messages=False)  # no trace file write per message on the shared cores
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
            print(f"{'rate':>6} {'ok':>7} {'failed':>7} {'gw µs/call':>11} {'redis µs/call':>14}  worker CPU s")
            k = max(1, args.callers)
            for step, rate in enumerate(rates):
                pids = gateway_pids(gw.proc.pid)
                cpu0 = {p: cpu_seconds(p) for p in pids}
                r0 = cpu_seconds(redis.proc.pid)
                spies = _profile(args.profile, pids[1:], args.seconds) if args.profile and step == 0 else []

                def one(i: int, rate: int = rate) -> SippResult:
                    return run_uac(tmp, gw.port, rows, calls=rate * args.seconds // k, rate=rate / k, limit=5000)

                with ThreadPoolExecutor(k) as pool:
                    results = list(pool.map(one, range(k)))
                cpu = {p: cpu_seconds(p) - cpu0[p] for p in pids}
                for spy in spies:
                    spy.wait(timeout=60)
                r_cpu = cpu_seconds(redis.proc.pid) - r0
                ok = sum(r.successful for r in results)
                failed = sum(r.failed for r in results)
                n = max(ok, 1)
                workers = " ".join(f"{cpu[p]:.1f}" for p in pids[1:])
                print(
                    f"{rate:>6} {ok:>7} {failed:>7} "
                    f"{sum(cpu.values()) / n * 1e6:>11.0f} {r_cpu / n * 1e6:>14.0f}  {workers}",
                    flush=True,
                )
        finally:
            if gw is not None:
                gw.stop()
            uas.stop()
            redis.stop()


def _profile(out: Path, pids: list[int], seconds: int) -> list[subprocess.Popen[bytes]]:
    """py-spy on each worker for the step (raw collapsed stacks, one file per worker)."""
    spy = shutil.which("py-spy") or str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "py-spy")
    out.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [spy, "record", "--pid", str(p), "--duration", str(seconds), "--rate", "200", "--format", "raw",
             "--nonblocking", "--output", str(out / f"worker-{p}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for p in pids
    ]


if __name__ == "__main__":
    main()
