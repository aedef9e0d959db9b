"""Kamailio + its own Redis as a ``--proxy`` of the sweep (the BENCHMARKS reference row).

    python -m bench sweep --proxy "kamailio=python -m bench.kamailio.run --port {port} --next-hop {next_hop}"

Starts a private ``redis-server`` on a unix socket and ``kamailio`` in the
foreground, both in this process's group, so the sweep's CPU figure for the
proxy is Kamailio's and its Redis's together — the same accounting as the
gateway's "gateway + Redis" figure. Needs Debian's ``kamailio`` and
``kamailio-redis-modules`` (not installed by the set-up: the comparison is
optional).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CFG = Path(__file__).with_name("kamailio.cfg")
# tm keeps each INVITE and BYE transaction ~5 s after its final reply (the wait
# timer): measured 2026-12-07, ~145 KB of shared memory per call/s (290 MB at
# 2,000 calls/s). The old 256 MB ran out after ~5 s at 2,000/s and the sweep
# failed on memory, not CPU. 2 GiB covers ~7,000 calls/s with room for
# retransmissions; the pool is address space until used (RSS grows with use).
SHM_MB_DEFAULT = 2048
SHM_HELP = (
    f"Kamailio's shared memory, MB (-m); needs ~0.15 MB per call/s (default {SHM_MB_DEFAULT})"
)


def render(port: int, next_hop: str, redis_sock: str, cfg: Path = CFG) -> str:
    """The shipped configuration (or a trial variant) with this run's listen port, next hop and Redis socket."""
    text = cfg.read_text()
    text = text.replace('"!LISTEN!udp:127.0.0.1:0!"', f'"!LISTEN!udp:127.0.0.1:{port}!"')
    text = text.replace('"!NEXT_HOP!127.0.0.1:5070!"', f'"!NEXT_HOP!{next_hop}!"')
    return text.replace('"!REDIS!unix=/tmp/redis.sock!"', f'"!REDIS!unix={redis_sock}!"')


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.kamailio.run", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--next-hop", required=True, help="HOST:PORT of the callee")
    ap.add_argument("--shm-mb", type=int, default=SHM_MB_DEFAULT, help=SHM_HELP)
    ap.add_argument(
        "--cfg",
        type=Path,
        default=CFG,
        help="a variant of kamailio.cfg to try (default: the shipped one)",
    )
    args = ap.parse_args(argv)
    kamailio = shutil.which("kamailio") or "/usr/sbin/kamailio"
    if not Path(kamailio).exists() or not shutil.which("redis-server"):
        print(
            "bench.kamailio: needs Debian's kamailio, kamailio-redis-modules and redis-server",
            file=sys.stderr,
        )
        return 2
    work = Path(tempfile.mkdtemp(prefix="cag-kamailio-"))
    sock = str(work / "redis.sock")
    redis = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--unixsocket",
            sock,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(work),
        ],
        stdout=subprocess.DEVNULL,
    )
    cfg = work / "kamailio.cfg"
    cfg.write_text(render(args.port, args.next_hop, sock, args.cfg))
    deadline = time.monotonic() + 10
    while not os.path.exists(sock) and time.monotonic() < deadline:
        time.sleep(0.05)
    kam = subprocess.Popen(
        [
            kamailio,
            "-DD",
            "-E",
            "-f",
            str(cfg),
            "-x",
            "tlsf",
            "-m",
            str(args.shm_mb),
            "-M",
            "16",
            "-Y",
            str(work),
            "-P",
            str(work / "kamailio.pid"),
        ]
    )

    def stop(*_: object) -> None:
        for p in (kam, redis):
            if p.poll() is None:
                p.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        rc = kam.wait()
    finally:
        stop()
        redis.wait()
        shutil.rmtree(work, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
