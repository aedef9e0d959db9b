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
import contextlib
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
    """PING every millisecond from a thread of this process (the earlier measurement; ``--thread-pinger``)."""

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


class PingProc:
    """bench/ping.py in a child process: the PING loop that measures, with each slow PING taken apart."""

    def __init__(self, sock: str, redis_pid: int, sched: str = "normal") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.ping", sock, str(redis_pid)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        set_sched(self.proc.pid, sched)

    def stop(self) -> dict[str, Any]:
        out, _ = self.proc.communicate(input="", timeout=30)
        try:
            return dict(json.loads(out.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            return {"error": f"bench.ping exited {self.proc.returncode}"}


# Redis settings that decide whether a load stalls other clients; printed with every run.
REDIS_KNOBS = (
    "appendonly", "appendfsync", "no-appendfsync-on-rewrite", "auto-aof-rewrite-percentage",
    "auto-aof-rewrite-min-size", "aof-use-rdb-preamble", "save", "hz", "dynamic-hz", "activedefrag",
    "lazyfree-lazy-user-del", "lazyfree-lazy-server-del", "hash-max-listpack-entries",
    "latency-monitor-threshold",
)


def redis_knobs(sock: str) -> dict[str, str]:
    import redis

    with redis.Redis(unix_socket_path=sock, decode_responses=True) as c:
        out: dict[str, str] = {}
        for name in REDIS_KNOBS:
            out.update({str(k): str(v) for k, v in c.config_get(name).items()})
        return out


def latency_events(sock: str) -> dict[str, Any]:
    """Redis's own LATENCY monitor since the last reset: per event, the longest (ms) and how many seconds had one."""
    import redis

    with redis.Redis(unix_socket_path=sock) as c:
        out: dict[str, Any] = {}
        for row in c.execute_command("LATENCY", "LATEST") or ():
            name = row[0].decode() if isinstance(row[0], bytes) else str(row[0])
            hist = c.execute_command("LATENCY", "HISTORY", name) or ()
            out[name] = {
                "max_ms": int(row[3]),
                "seconds_with_event": len(hist),
                "over_5ms": sum(1 for _, ms in hist if int(ms) > 5),
            }
        return out


def persistence_stats(sock: str) -> dict[str, int]:
    import redis

    with redis.Redis(unix_socket_path=sock) as c:
        info = {**c.info("persistence"), **c.info("stats")}
        keys = ("aof_rewrites", "total_forks", "latest_fork_usec", "aof_delayed_fsync", "total_commands_processed")
        return {k: int(info.get(k, 0)) for k in keys}


def thread_cpu(pid: int) -> tuple[float, float]:
    """(s on a CPU, s runnable waiting for one) of a process's main thread (``schedstat``)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
            a, b, _ = f.read().split()
        return int(a) / 1e9, int(b) / 1e9
    except (OSError, ValueError):
        return 0.0, 0.0


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a live process (all threads), s."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


_POLICIES = {0: "normal", 1: "fifo", 2: "rr", 3: "batch", 5: "idle"}


def _sched_of(pid: int) -> dict[str, Any]:
    """The loader's scheduling as the kernel has it (nice, policy, CPUs), whatever its flags said."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return {"nice": int(fields[16]), "policy": _POLICIES.get(int(fields[38]), fields[38]),
                "cpus": sorted(os.sched_getaffinity(pid))}
    except (OSError, ValueError, IndexError):
        return {}


def set_sched(tid: int, spec: str) -> None:
    """``nice:N``, ``rr:PRIO`` or ``fifo:PRIO`` for one thread; realtime with reset-on-fork.

    Reset-on-fork: Redis's AOF-rewrite child (forked from the main thread)
    must not inherit a realtime policy and hold a core for the rewrite.
    """
    kind, _, val = spec.partition(":")
    if kind in ("", "normal"):
        return
    if kind == "nice":
        os.setpriority(os.PRIO_PROCESS, tid, int(val))
        return
    policy = {"rr": os.SCHED_RR, "fifo": os.SCHED_FIFO}[kind]
    os.sched_setscheduler(tid, policy | os.SCHED_RESET_ON_FORK, os.sched_param(int(val or 1)))


def set_affinity(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` (Redis has its bio threads) to ``cpus``."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)


def _cpus(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def used_memory(url_sock: str) -> int:
    import redis

    with redis.Redis(unix_socket_path=url_sock) as c:
        return int(c.info("memory")["used_memory"])


def sample_usage(sock: str, kind: str) -> dict[str, Any]:
    """MEMORY USAGE of up to 200 bucket keys of the live generation: bytes per stored entry."""
    import redis

    from policy.layout import GEN_POINTER, consent_layer_key, dnc_layer_key, parse_layers

    with redis.Redis(unix_socket_path=sock) as c:
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


def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="cag-load-", dir=args.work))
    rig = None
    rig_redis = None
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
            with contextlib.redirect_stdout(sys.stderr):  # its progress lines: stdout is the JSON report
                rig.start()
            assert rig.redis is not None and rig.redis.proc is not None
            sock, url, redis_pid = str(rig.redis.sock), rig.redis.url, rig.redis.proc.pid
            gw = rig.gw
        else:
            from gateway.embedded_redis import EmbeddedRedis

            rig_redis = EmbeddedRedis(work / "redis-state")
            rig_redis.start()
            assert rig_redis.proc is not None
            sock, url, redis_pid = str(rig_redis.sock), rig_redis.url, rig_redis.proc.pid
        _configure_redis(sock, args)
        if args.redis_cpus:
            set_affinity(redis_pid, _cpus(args.redis_cpus))
        set_sched(redis_pid, args.redis_sched)  # the main thread only: not the bio threads
        # The noise floor: the same PING loop with nothing loading (a shared box preempts Redis too).
        _latency_reset(sock)
        control = PingProc(sock, redis_pid, args.pinger_sched)
        time.sleep(args.control_seconds)
        control_ping = control.stop()
        control_latency = latency_events(sock)
        before = used_memory(sock)
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
        _latency_reset(sock)
        p0 = persistence_stats(sock)
        r0 = thread_cpu(redis_pid)
        pinger = PingProc(sock, redis_pid, args.pinger_sched)
        tpinger = Pinger(sock, url) if args.thread_pinger else None
        if tpinger is not None:
            tpinger.start()
        loadavg = os.getloadavg()
        loader_cmd = [CAG, "policy", "load", args.kind, str(data), "--redis-url", url, "--gc-grace", "1",
                      *(["--replace"] if args.replace else []), *args.loader_arg]
        loader_cpus = _cpus(args.loader_cpus) if args.loader_cpus else None
        t0 = time.monotonic()
        child = subprocess.Popen(
            loader_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, loader_cpus)) if loader_cpus else None,
        )
        rss_kib = 0
        loader_cpu = 0.0
        loader_sched: dict[str, Any] = {}
        while child.poll() is None:  # VmHWM: the loader's own peak, not other children's
            rss_kib = max(rss_kib, _hwm_kib(child.pid))
            loader_sched = _sched_of(child.pid) or loader_sched
            loader_cpu = max(loader_cpu, proc_cpu_s(child.pid))
            time.sleep(0.2)
        out, err = child.communicate()
        proc = subprocess.CompletedProcess(child.args, child.returncode, out, err)
        took = time.monotonic() - t0
        ready_stop.set()
        ping = pinger.stop()
        if tpinger is not None:
            tpinger.stop_ev.set()
            tpinger.join()
        r1 = thread_cpu(redis_pid)
        p1 = persistence_stats(sock)
        load_latency = latency_events(sock)
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
            "loader_cpu_s": round(loader_cpu, 2),
            "redis_bytes_per_row": round((after - before) / args.rows, 1),
            "redis_used_memory_delta_mb": round((after - before) / 1e6, 1),
            "longest_ping_ms": ping.get("longest_ms"),
            "pings_over_5ms": ping.get("over_5ms"),
            "pings_over_1ms": ping.get("over_1ms"),
            "pings": ping.get("pings"),
            "slowest_pings": ping.get("slowest", [])[:args.show_slowest],
            "redis_latency_events": load_latency,
            "redis_main_thread_cpu_s": round(r1[0] - r0[0], 2),
            "redis_main_thread_waited_for_cpu_s": round(r1[1] - r0[1], 3),
            "redis_persistence": {
                "aof_rewrites": p1["aof_rewrites"] - p0["aof_rewrites"],
                "forks": p1["total_forks"] - p0["total_forks"],
                "latest_fork_ms": round(p1["latest_fork_usec"] / 1000, 2),
                "aof_delayed_fsync": p1["aof_delayed_fsync"] - p0["aof_delayed_fsync"],
            },
            "control_longest_ping_ms": control_ping.get("longest_ms"),
            "control_pings_over_5ms": control_ping.get("over_5ms"),
            "control_pings": control_ping.get("pings"),
            "control_redis_latency_events": control_latency,
            **sample_usage(sock, args.kind),
        }
        if tpinger is not None:
            report["thread_pinger"] = {"longest_ms": round(tpinger.max_ms, 2), "over_5ms": tpinger.over_5ms,
                                       "pings": tpinger.count}
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
        report["knobs"] = {
            "loader": [args.kind, *loader_cmd[7:]],
            "loader_sched": loader_sched,
            "redis": redis_knobs(sock),
            "redis_cpus": args.redis_cpus or "any",
            "redis_sched": args.redis_sched,
            "redis_main_thread": _sched_of(redis_pid),
            "pinger_sched": args.pinger_sched,
            "loader_cpus": args.loader_cpus or "any",
            "load_average_at_start": [round(x, 2) for x in loadavg],
            "cores": os.cpu_count(),
            "pids": {"redis": redis_pid, "loader": child.pid},
        }
        if proc.returncode != 0:
            report["stderr"] = proc.stderr[-2000:]
        print(json.dumps(report, indent=2))
        print(summary(report), file=sys.stderr)
        return 0 if proc.returncode == 0 else 1
    finally:
        if rig is not None:
            rig.stop()
        if rig_redis is not None:
            rig_redis.stop()
        shutil.rmtree(work, ignore_errors=True)


def summary(r: dict[str, Any]) -> str:
    """The lines a person reads: the stall figure with its causes, the calls, the knobs."""
    lat = r.get("redis_latency_events") or {}
    events = ", ".join(f"{k} {v['max_ms']} ms ({v['over_5ms']} s over 5 ms)" for k, v in sorted(lat.items())) or "none"
    lines = [
        f"bench load: {r['rows']:,} {r['kind']} rows in {r['seconds']} s ({r['rows_per_s']:,} rows/s), "
        f"loader {r['loader_peak_rss_mib']} MiB peak, {r['loader_cpu_s']} s CPU, exit {r['exit']}",
        f"  longest PING {r['longest_ping_ms']} ms (control {r['control_longest_ping_ms']} ms); "
        f"{r['pings_over_5ms']} of {r['pings']:,} over 5 ms",
        f"  Redis latency monitor (threshold {r['knobs']['redis'].get('latency-monitor-threshold')} ms): {events}",
        f"  Redis main thread {r['redis_main_thread_cpu_s']} s CPU, {r['redis_main_thread_waited_for_cpu_s']} s "
        f"runnable without a CPU; {r['redis_persistence']['aof_rewrites']} AOF rewrites, "
        f"{r['redis_persistence']['forks']} forks (last {r['redis_persistence']['latest_fork_ms']} ms)",
    ]
    for s in r.get("slowest_pings", [])[:3]:
        lines.append(f"    PING {s['ms']} ms at {s['at_s']} s: PING client waited {s['self_wait_ms']}, Redis waited "
                     f"{s['redis_wait_ms']}, Redis ran {s['redis_cpu_ms']}, other {s['other_ms']} ms")
    if "answered_503_during_load" in r:
        lines.append(f"  gateway at {r['gateway_rate']} calls/s: {r['answered_503_during_load']} answered 503 during "
                     f"the load, /readyz failures {r['readyz_failures']}")
    if r.get("longest_ping_ms") is not None:
        verdict = (
            f"  issue 14 target 2: longest PING {r['longest_ping_ms']} ms "
            f"({'within' if r['longest_ping_ms'] <= 5 else 'over'} ~5 ms)"
        )
        if "answered_503_during_load" in r:
            verdict += f", {r['answered_503_during_load']} answered 503, /readyz failures {r['readyz_failures']}"
        lines.append(verdict)
    k = r["knobs"]
    red = k["redis"]
    lines.append(
        f"  knobs: loader {' '.join(k['loader'])} ({k.get('loader_sched')}); redis appendfsync {red.get('appendfsync')}, "
        f"auto-aof-rewrite {red.get('auto-aof-rewrite-percentage')}% / {red.get('auto-aof-rewrite-min-size')} B, "
        f"no-appendfsync-on-rewrite {red.get('no-appendfsync-on-rewrite')}, hz {red.get('hz')}; "
        f"cpus redis {k['redis_cpus']} loader {k['loader_cpus']}; priority redis {k['redis_sched']} "
        f"PING {k['pinger_sched']}; load average {k['load_average_at_start']}"
    )
    return "\n".join(lines)


def _configure_redis(sock: str, args: argparse.Namespace) -> None:
    """--redis-config NAME=VALUE (CONFIG SET), and the latency monitor's threshold."""
    import redis

    with redis.Redis(unix_socket_path=sock) as c:
        c.config_set("latency-monitor-threshold", args.latency_threshold_ms)
        for item in args.redis_config:
            name, _, value = item.partition("=")
            c.config_set(name.strip(), value.strip())


def _latency_reset(sock: str) -> None:
    import redis

    with redis.Redis(unix_socket_path=sock) as c:
        c.execute_command("LATENCY", "RESET")


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
    p.add_argument("--redis-config", dest="redis_config", action="append", default=[], metavar="NAME=VALUE",
                   help="CONFIG SET on the bench's Redis before the run (repeatable), e.g. "
                   "--redis-config auto-aof-rewrite-percentage=0")
    p.add_argument("--latency-threshold-ms", dest="latency_threshold_ms", type=int, default=1,
                   help="Redis's latency-monitor-threshold for the run (default 1 ms)")
    p.add_argument("--redis-cpus", dest="redis_cpus", default="",
                   help="pin Redis (every thread) to these CPUs, e.g. 0 (default: not pinned)")
    p.add_argument("--loader-cpus", dest="loader_cpus", default="",
                   help="pin the loader to these CPUs, e.g. 1 (default: not pinned)")
    p.add_argument("--redis-sched", dest="redis_sched", default="normal",
                   help="Redis main thread's priority: normal, nice:N, rr:PRIO or fifo:PRIO (realtime, reset on fork)")
    p.add_argument("--pinger-sched", dest="pinger_sched", default="normal",
                   help="the PING process's priority (same forms): realtime takes its own waits out of the figure")
    p.add_argument("--thread-pinger", dest="thread_pinger", action="store_true",
                   help="also PING from a thread of the bench (the earlier measurement), for comparison")
    p.add_argument("--show-slowest", dest="show_slowest", type=int, default=10,
                   help="slowest PINGs reported, each taken apart (default 10)")
    p.add_argument("--work", default=os.environ.get("TMPDIR", "/tmp"))
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
