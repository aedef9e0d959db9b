"""``python -m bench.ping SOCKET [REDIS_PID]``: a PING every millisecond from a process of its own.

The load bench's measuring client. It runs as a separate process (not a
thread of the bench, whose GIL the other threads hold now and then) and
speaks RESP on a raw unix socket (no client library between it and the
clock). Each slow PING is taken apart with the kernel's scheduler
statistics (``/proc/<pid>/task/<tid>/schedstat``: CPU time run, time spent
runnable but waiting for a CPU), read before and after the PING for this
process and for Redis's main thread:

* ``self_wait_ms``: this process was runnable but had no CPU (the
  measurement's own scheduling, not Redis);
* ``redis_wait_ms``: Redis's main thread was runnable but had no CPU (a
  box where the loader, the gateway and Redis share the cores);
* ``redis_cpu_ms``: CPU Redis's main thread used meanwhile (other clients'
  commands, a fork, an AOF ``write``);
* the rest (``other_ms``): nobody ran for it — Redis blocked in the kernel
  (a disk write throttled), or the socket hand-off.

Runs until stdin closes (or SIGTERM), then prints one JSON object: the
number of PINGs, the longest, the count over each threshold, and the 20
slowest taken apart as above, with their time since the start.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Any


def _schedstat(path: str) -> tuple[int, int]:
    """(ns run on a CPU, ns runnable waiting for one) of one thread; (0, 0) when unreadable."""
    try:
        with open(path, "rb") as f:
            a, b, _ = f.read().split()
        return int(a), int(b)
    except (OSError, ValueError):
        return 0, 0


def run(sock_path: str, redis_pid: int, interval_s: float = 0.001, out: Any = None) -> dict[str, Any]:
    stop = threading.Event()

    def _watch_stdin() -> None:
        try:
            sys.stdin.read()
        finally:
            stop.set()

    threading.Thread(target=_watch_stdin, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    me = f"/proc/self/task/{threading.get_native_id()}/schedstat"
    rd = f"/proc/{redis_pid}/task/{redis_pid}/schedstat" if redis_pid else ""
    count = over_1 = over_5 = over_10 = 0
    longest = 0.0
    slow: list[tuple[float, float, float, float, float]] = []  # (ms, at_s, self_wait, redis_wait, redis_cpu)
    t_start = time.perf_counter()
    clock = time.perf_counter
    while not stop.is_set():
        m0 = _schedstat(me)
        r0 = _schedstat(rd) if rd else (0, 0)
        t0 = clock()
        s.sendall(b"PING\r\n")
        buf = b""
        while not buf.endswith(b"\r\n"):
            chunk = s.recv(64)
            if not chunk:
                raise SystemExit("bench.ping: redis closed the connection")
            buf += chunk
        ms = (clock() - t0) * 1000
        count += 1
        if ms > 1:
            over_1 += 1
            if ms > 5:
                over_5 += 1
                if ms > 10:
                    over_10 += 1
            m1 = _schedstat(me)
            r1 = _schedstat(rd) if rd else (0, 0)
            rec = (ms, t0 - t_start, (m1[1] - m0[1]) / 1e6, (r1[1] - r0[1]) / 1e6, (r1[0] - r0[0]) / 1e6)
            slow.append(rec)
            if len(slow) > 200:
                slow.sort(reverse=True)
                del slow[20:]
        longest = max(longest, ms)
        time.sleep(interval_s)
    slow.sort(reverse=True)
    report = {
        "pings": count,
        "longest_ms": round(longest, 2),
        "over_1ms": over_1,
        "over_5ms": over_5,
        "over_10ms": over_10,
        "slowest": [
            {
                "ms": round(ms, 2),
                "at_s": round(at, 2),
                "self_wait_ms": round(sw, 2),
                "redis_wait_ms": round(rw, 2),
                "redis_cpu_ms": round(rc, 2),
                "other_ms": round(max(ms - sw - rw - rc, 0.0), 2),
            }
            for ms, at, sw, rw, rc in slow[:20]
        ],
    }
    print(json.dumps(report), file=out or sys.stdout, flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    run(args[0], int(args[1]) if len(args) > 1 else 0)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
