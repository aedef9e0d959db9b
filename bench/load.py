"""``python -m bench load``: a consent or DNC file of N rows through ``cag policy load``.

Reports what issue 14 asks of a load: rows/s, the loader's peak RSS, Redis
bytes per row (INFO memory before/after, and MEMORY USAGE of sampled bucket
keys), and the longest Redis stall a client saw during the load (a PING loop
in a thread, one PING per millisecond). With ``--gateway-rate R`` the gateway
runs with the benchmark world (bench/sweep.py's Rig) under SIPp at R calls/s
during the load, and the calls answered 503 and /readyz failures are counted.

The file is generated under ``--work`` (default /tmp) and deleted afterwards.
DNC numbers are Chinese mobiles, one in ``--stride`` (default 16: ~6 % of a
number range, about the density of a national list over the mobile space),
in ascending order as list exports come.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CAG = str(Path(sys.executable).with_name("cag"))


def write_file(path: Path, kind: str, rows: int, stride: int) -> None:
    """A CSV of ``rows`` rows (valid, no duplicates), written in 1 MiB chunks."""
    base = 13_000_000_000
    with open(path, "w", encoding="utf-8") as f:
        if kind == "dnc":
            f.write("number,scope,registered_at\n")
            chunk: list[str] = []
            for i in range(rows):
                scope = "commercial" if i % 10 == 0 else "all"
                chunk.append(f"+86{base + i * stride},{scope},2025-03-15T10:00:00+08:00\n")
                if len(chunk) >= 20_000:
                    f.write("".join(chunk))
                    chunk = []
            f.write("".join(chunk))
        else:
            f.write("token,callee,enterprise_id,purpose,granted_at,expires_at,max_calls,evidence_ref\n")
            chunk = []
            for i in range(rows):
                chunk.append(
                    f"ct{i:09d},+86{base + i * stride},ent-{i % 50},callback,"
                    f"2026-01-01T09:00:00+08:00,2027-01-01T00:00:00+08:00,{3 if i % 4 == 0 else ''},crm:{i}\n"
                )
                if len(chunk) >= 20_000:
                    f.write("".join(chunk))
                    chunk = []
            f.write("".join(chunk))


class Pinger(threading.Thread):
    """PING every millisecond; the longest round trip is the longest stall a call would have seen."""

    def __init__(self, sock: str | None, url: str) -> None:
        super().__init__(daemon=True)
        import redis

        self.client = redis.Redis(unix_socket_path=sock) if sock else redis.Redis.from_url(url)
        self.stop_ev = threading.Event()
        self.max_ms = 0.0
        self.over_5ms = 0
        self.count = 0

    def run(self) -> None:
        while not self.stop_ev.is_set():
            t0 = time.perf_counter()
            self.client.ping()
            ms = (time.perf_counter() - t0) * 1000
            self.count += 1
            self.max_ms = max(self.max_ms, ms)
            if ms > 5:
                self.over_5ms += 1
            time.sleep(0.001)


def used_memory(url_sock: str) -> int:
    import redis

    c = redis.Redis(unix_socket_path=url_sock)
    try:
        return int(c.info("memory")["used_memory"])
    finally:
        c.close()


def sample_usage(sock: str, kind: str) -> dict[str, Any]:
    """MEMORY USAGE of up to 200 bucket keys of the live generation: bytes per stored entry."""
    import redis

    from policy.layout import GEN_POINTER, consent_layer_key, dnc_layer_key, parse_layers

    c = redis.Redis(unix_socket_path=sock)
    try:
        layers = parse_layers(c.hget(GEN_POINTER, kind))
        if not layers:
            return {}
        pattern = (dnc_layer_key if kind == "dnc" else consent_layer_key)("*", layers[0]).replace("{c:*}", "{c:*}")
        total_bytes = total_entries = keys = 0
        encodings: dict[str, int] = {}
        for key in c.scan_iter(match=pattern, count=1000):
            total_bytes += int(c.memory_usage(key, samples=0) or 0)
            total_entries += int(c.hlen(key))
            enc = c.object("encoding", key)
            encodings[str(enc)] = encodings.get(str(enc), 0) + 1
            keys += 1
            if keys >= 200:
                break
        return {
            "sampled_keys": keys,
            "entries_per_key": round(total_entries / max(keys, 1), 1),
            "bytes_per_entry_memory_usage": round(total_bytes / max(total_entries, 1), 1),
            "encodings": encodings,
        }
    finally:
        c.close()


def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="cag-load-", dir=args.work))
    rig = None
    try:
        data = work / f"{args.kind}.csv"
        t0 = time.monotonic()
        write_file(data, args.kind, args.rows, args.stride)
        print(f"bench load: wrote {args.rows:,} {args.kind} rows ({data.stat().st_size / 1e6:,.0f} MB) "
              f"in {time.monotonic() - t0:.1f}s", file=sys.stderr)
        gw = None
        if args.gateway_rate:
            from bench import dataset
            from bench.sweep import Rig

            spec = dataset.DatasetSpec(consents=args.world_consents)
            rig = Rig(work / "rig", spec, workers=args.workers)
            rig.start()
            assert rig.redis is not None
            sock, url = str(rig.redis.sock), rig.redis.url
            gw = rig.gw
        else:
            from gateway.embedded_redis import EmbeddedRedis

            rig_redis = EmbeddedRedis(work / "redis-state")
            rig_redis.start()
            sock, url = str(rig_redis.sock), rig_redis.url
        # The noise floor: the same PING loop with nothing loading (a shared box preempts Redis too).
        control = Pinger(sock, url)
        control.start()
        time.sleep(args.control_seconds)
        control.stop_ev.set()
        control.join()
        before = used_memory(sock)
        pinger = Pinger(sock, url)
        pinger.start()
        calls: dict[str, Any] = {}
        uac = None
        if gw is not None:
            calls = _start_calls(work, gw, args)
            uac = calls.pop("thread")
            time.sleep(2.0)  # calls flowing before the load starts
        control_decisions: dict[str, int] = {}
        if gw is not None and args.control_seconds:
            c0 = _decisions(gw)
            time.sleep(args.control_seconds)  # the same calls, nothing loading
            c1 = _decisions(gw)
            control_decisions = {k: int(c1[k] - c0.get(k, 0)) for k in c1 if c1[k] != c0.get(k, 0)}
        d0 = _decisions(gw) if gw is not None else {}
        ready_fail = [0]
        ready_stop = threading.Event()
        if gw is not None:
            threading.Thread(target=_watch_ready, args=(gw, ready_fail, ready_stop), daemon=True).start()
        t0 = time.monotonic()
        child = subprocess.Popen(
            [CAG, "policy", "load", args.kind, str(data), "--redis-url", url, "--gc-grace", "1",
             *(["--replace"] if args.replace else []), *args.loader_arg],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        rss_kib = 0
        while child.poll() is None:  # VmHWM: the loader's own peak, not other children's
            rss_kib = max(rss_kib, _hwm_kib(child.pid))
            time.sleep(0.2)
        out, err = child.communicate()
        proc = subprocess.CompletedProcess(child.args, child.returncode, out, err)
        took = time.monotonic() - t0
        ready_stop.set()
        pinger.stop_ev.set()
        pinger.join()
        after = used_memory(sock)
        d1 = _decisions(gw) if gw is not None else {}
        if uac is not None:
            uac.join()
        report: dict[str, Any] = {
            "kind": args.kind,
            "rows": args.rows,
            "exit": proc.returncode,
            "seconds": round(took, 2),
            "rows_per_s": round(args.rows / took),
            "loader_peak_rss_mib": round(rss_kib / 1024, 1),
            "redis_bytes_per_row": round((after - before) / args.rows, 1),
            "redis_used_memory_delta_mb": round((after - before) / 1e6, 1),
            "longest_ping_ms": round(pinger.max_ms, 2),
            "pings_over_5ms": pinger.over_5ms,
            "pings": pinger.count,
            "control_longest_ping_ms": round(control.max_ms, 2),
            "control_pings_over_5ms": control.over_5ms,
            "control_pings": control.count,
            **sample_usage(sock, args.kind),
        }
        if gw is not None:
            report["gateway_rate"] = args.gateway_rate
            report["decisions_during_load"] = {k: int(d1.get(k, 0) - d0.get(k, 0)) for k in d1 if d1.get(k, 0) != d0.get(k, 0)}
            report["answered_503_during_load"] = int(
                sum(v for k, v in report["decisions_during_load"].items() if k in ("store_unavailable", "overload", "not_ready"))
            )
            report["readyz_failures"] = ready_fail[0]
            report["control_decisions"] = control_decisions
            report["control_503"] = sum(v for k, v in control_decisions.items()
                                        if k in ("store_unavailable", "overload", "not_ready"))
            report["sipp"] = calls
        if proc.returncode != 0:
            report["stderr"] = proc.stderr[-2000:]
        print(json.dumps(report, indent=2))
        if gw is None:
            rig_redis.stop()
        return 0 if proc.returncode == 0 else 1
    finally:
        if rig is not None:
            rig.stop()
        shutil.rmtree(work, ignore_errors=True)


def _hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _decisions(gw: Any) -> dict[str, float]:
    from bench.sweep import _decisions as dec

    return dec(gw.metrics())


def _watch_ready(gw: Any, fails: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        code, _ = gw.http("/readyz")
        if code != 200:
            fails[0] += 1
        time.sleep(0.1)


def _start_calls(work: Path, gw: Any, args: argparse.Namespace) -> dict[str, Any]:
    from bench import dataset
    from bench.peers import run_uac

    spec = dataset.DatasetSpec(consents=args.world_consents)
    calls = dataset.make_calls(20_000, dataset.DEFAULT_MIX, spec)
    rows = dataset.rows(calls)
    out: dict[str, Any] = {}
    total = int(args.gateway_rate * args.call_seconds)

    def go() -> None:
        r = run_uac(work, gw.port, rows, calls=total, rate=args.gateway_rate, timeout=args.call_seconds + 60,
                    limit=max(200, args.gateway_rate * 2))
        out.update({"calls": total, "successful": r.successful, "failed": r.failed})

    t = threading.Thread(target=go, daemon=True)
    t.start()
    out["thread"] = t
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench load", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--kind", choices=["dnc", "consents"], default="dnc")
    p.add_argument("--stride", type=int, default=16, help="number spacing (16: ~6 %% of a range filled)")
    p.add_argument("--replace", action="store_true", help="load with --replace (default: upsert)")
    p.add_argument("--gateway-rate", dest="gateway_rate", type=int, default=0,
                   help="calls/s through a live gateway during the load (0: no gateway)")
    p.add_argument("--call-seconds", dest="call_seconds", type=int, default=60,
                   help="how long SIPp places calls (start it 2 s before the load)")
    p.add_argument("--world-consents", dest="world_consents", type=int, default=100_000,
                   help="consents of the benchmark world the calls use")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--loader-arg", dest="loader_arg", action="append", default=[],
                   help="extra argument for cag policy load (repeatable), e.g. --loader-arg=--max-rate=50000")
    p.add_argument("--control-seconds", dest="control_seconds", type=float, default=5.0,
                   help="PING loop with nothing loading first: the box's own noise floor")
    p.add_argument("--work", default=os.environ.get("TMPDIR", "/tmp"))
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
