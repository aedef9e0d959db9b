"""``python -m bench sweep``: the gateway under rising load, beside SIPp → SIPp with no proxy.

One run starts everything itself on loopback: a ``redis-server``
(``EmbeddedRedis``, unix socket) loaded with the generated policy world
(``bench.dataset``), a SIPp callee as next hop, ``cag serve --workers 2``,
and per step a SIPp caller placing the call mix at a fixed rate. Each rate
is run twice, first straight to the callee (the direct baseline, so the
gateway's added latency is a difference measured minutes apart on the same
machine), then through the gateway. The sweep stops at the first rate the
gateway fails: more than 0.1 % failed calls, less than 95 % of the offered
rate achieved, or calls piling up in flight (a backlog that grows is a
failed rate even before calls time out).

Latency is INVITE → final response as the caller's socket sees it, from a
tcpdump capture on loopback (µs timestamps); without tcpdump (or root) the
sweep still runs and says so, quoting the gateway's decision histogram only.
The one SIPp scenario (``bench/sipp/uac_mix.xml``) accepts 200 and every
rejection status as optional branches, so the whole mix is one caller
process per step, one capture and one set of counters.
"""

from __future__ import annotations

import asyncio
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import capture, dataset, pcap, peers, report, stats
from gateway.embedded_redis import EmbeddedRedis

DEFAULT_RATES = (500, 1000, 2000, 3000, 4000, 5000, 6000)
QUICK_RATES = (50, 100)
FAIL_RATIO = 0.001  # > 0.1 % failed calls fails a rate
MIN_ACHIEVED = 0.95  # < 95 % of the offered rate fails it
# The mix keeps sending unconsented calls from one enterprise; at the default
# threshold (100 an hour) the gateway would suspend it (R6 auto-restriction)
# within seconds and the sweep would measure nothing but that rejection.
# The attempts are still counted in Redis, as in production. (An environment
# variable: `cag serve` has no flag for this key yet.)
GATEWAY_ENV = {"CAG_UNCONSENTED_THRESHOLD": "1000000000"}
SETTLE_S = 1.5  # after each step, before the last scrape and stopping the capture
RSS_EVERY_S = 5.0
WARMUP_S = 120.0  # RSS growth is read from here: the token cache and lingering transactions fill first


@dataclass
class SweepConfig:
    rates: tuple[int, ...] = DEFAULT_RATES
    duration: float = 20.0
    baseline: bool = True
    workers: int = 2
    spec: dataset.DatasetSpec = field(default_factory=dataset.DatasetSpec)
    mix: dict[str, float] = field(default_factory=lambda: dict(dataset.DEFAULT_MIX))
    out: Path | None = None
    keep_captures: bool = False
    quick: bool = False
    gateway_args: tuple[str, ...] = ()
    keep_going: bool = False  # run every rate even after one failed (to see the whole curve)
    # SIPp callers per step, each from its own port at rate / callers: several
    # trunks. One is enough to load every worker while steering is on (the default).
    callers: int = 1
    # Other proxies measured beside the gateway: (name, command with {port} and {next_hop}).
    proxies: tuple[tuple[str, str], ...] = ()


def say(msg: str) -> None:
    print(msg, flush=True)


Metrics = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _series(m: Metrics, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (n, ls), v in m.items():
        if n == name:
            d = dict(ls)
            key = d.get(label, "")
            out[key] = out.get(key, 0.0) + v
    return out


def _delta(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def histogram_delta(after: Metrics, before: Metrics, name: str) -> dict[str, Any]:
    """Percentiles (ms) of a gateway histogram over one step: the difference of two scrapes."""
    b_after = _series(after, f"{name}_bucket", "le")
    b_before = _series(before, f"{name}_bucket", "le")
    buckets = {float(le): b_after[le] - b_before.get(le, 0.0) for le in b_after}
    total = sum(v for (n, _), v in after.items() if n == f"{name}_sum") - sum(
        v for (n, _), v in before.items() if n == f"{name}_sum"
    )
    if not buckets:
        return {"count": 0}
    res = stats.histogram_percentiles(buckets, total)
    out: dict[str, Any] = {k: (v * 1000.0 if k != "count" else v) for k, v in res.items()}
    # The raw histogram too (cumulative counts per upper bound, ms), for finer reading than percentiles.
    out["buckets_ms"] = {("+Inf" if math.isinf(le) else f"{le * 1000:g}"): int(c) for le, c in sorted(buckets.items())}
    return out


def _decisions(m: Metrics) -> dict[str, float]:
    """``cag_decisions_total`` by reason (admitted calls under ``admitted``)."""
    out: dict[str, float] = {}
    for (n, ls), v in m.items():
        if n == "cag_decisions_total":
            reason = dict(ls).get("reason", "") or dict(ls).get("decision", "")
            out[reason] = out.get(reason, 0.0) + v
    return out


def _last_int(row: Mapping[str, str], key: str) -> int:
    try:
        return int(row.get(key, "0") or 0)
    except ValueError:
        return 0


def rss_growth(series: list[tuple[float, int]]) -> float | None:
    """Percent RSS growth from the first sample after the warm-up to the last (None: step too short).

    The first two minutes are excluded because a worker's memory rightly
    grows while its fixed-size structures fill: the Record-Route token cache
    (65,536 entries) and 32 s of lingering transactions at the offered rate.
    Growth after that is what a leak looks like.
    """
    after = [(t, v) for t, v in series if t >= WARMUP_S and v]
    if len(after) < 2 or after[-1][0] - after[0][0] < WARMUP_S:
        return None
    return round(100.0 * (after[-1][1] - after[0][1]) / after[0][1], 2)


def backlog_growing(in_flight: list[int], rate: float) -> bool:
    """Calls in flight at the end of the offered period well above the start: a growing queue.

    The second and last quarters are compared (the first is the ramp-up),
    with slack for noise: a quarter of a second of calls at the offered rate,
    and at least 20 calls. A rate the gateway cannot sustain piles up
    (offered - served) x t calls, far more than that within a step; tens of
    calls held by a slow tail are not a backlog.
    """
    if len(in_flight) < 4:
        return False
    q = max(1, len(in_flight) // 4)
    first = sum(in_flight[q : 2 * q]) / q  # skip the ramp-up quarter
    last = sum(in_flight[-q:]) / q
    return last > 2 * first + max(20.0, 0.25 * rate)


class Rig:
    """Redis with the generated policy world, a SIPp callee and the gateway: what every benchmark runs.

    The sweep and the replay share it so a replay measures exactly the
    set-up the sweep does.
    """

    def __init__(self, work: Path, spec: dataset.DatasetSpec, *, workers: int = 2,
                 gateway_args: tuple[str, ...] = ()) -> None:
        self.work = work
        self.spec = spec
        self.workers = workers
        self.gateway_args = gateway_args
        self.redis: EmbeddedRedis | None = None
        self.uas: peers.SippUas | None = None
        self.gw: peers.GatewayProc | None = None

    def start(self) -> dict[str, Any]:
        spec = self.spec
        self.redis = EmbeddedRedis(self.work / "redis-state")
        self.redis.start()
        say(f"bench: loading policy data: {spec.filed:,} filed numbers, {spec.consents:,} consents, "
            f"{spec.dnc_total:,} DNC entries")
        took = asyncio.run(dataset.load(self.redis.url, spec, say))
        self._settle_redis()
        self.uas = peers.SippUas(self.work, trace_messages=False).start()
        # The audit archiver runs beside the gateway, as in production: without it the stream
        # fills (1,000,000 entries, ~6 minutes at 1,000 calls/s) and every later record is
        # spooled to disk, which a long step would measure instead of the gateway. Its CPU
        # is reported apart (``audit_archiver``). --gateway-arg can override both flags.
        archiver = ("--audit-archiver", "on", "--audit-dir", str(self.work / "audit-archive"))
        self.gw = peers.GatewayProc(self.redis.url, self.work / "gateway", [self.uas.hop],
                                    workers=self.workers, extra=(*archiver, *self.gateway_args),
                                    env=dict(GATEWAY_ENV))
        self.gw.start(timeout=60)
        say(f"bench: gateway up (pid {self.gw.proc.pid if self.gw.proc else '?'}, workers "
            f"{self.gw.worker_pids()}), callee SIPp on {self.uas.port}")
        return {"load_seconds": took, "redis_url_kind": "unix socket"}

    def _settle_redis(self) -> None:
        """Rewrite the AOF now, so a rewrite forked by the bulk load does not land in a step."""
        import redis as redis_sync

        assert self.redis is not None
        c = redis_sync.Redis(unix_socket_path=str(self.redis.sock))
        try:
            deadline = time.monotonic() + 120
            while int(c.info("persistence").get("aof_rewrite_in_progress", 0)) and time.monotonic() < deadline:
                time.sleep(0.2)
            c.bgrewriteaof()
            time.sleep(0.2)
            while int(c.info("persistence").get("aof_rewrite_in_progress", 0)) and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            c.close()

    def pids(self) -> dict[str, list[int]]:
        assert self.gw is not None and self.gw.proc is not None
        return {
            "gateway_parent": [self.gw.proc.pid],
            "gateway_workers": self.gw.worker_pids(),
            "audit_archiver": self.gw.archiver_pids(),
            "redis": [self.redis.proc.pid] if self.redis and self.redis.proc else [],
            "sipp_uas": [self.uas.proc.pid] if self.uas and self.uas.proc else [],
        }

    def stop(self) -> None:
        for stop in (self.gw.stop if self.gw else None, self.uas.stop if self.uas else None,
                     self.redis.stop if self.redis else None):
            if stop is not None:
                try:
                    stop()
                except Exception as e:  # keep tearing down the rest
                    say(f"bench: teardown: {e}")
        shutil.rmtree(self.work / "redis-state", ignore_errors=True)
        shutil.rmtree(self.work / "audit-archive", ignore_errors=True)


class OtherProxy:
    """A proxy command from ``--proxy``, started once for the whole sweep like the gateway.

    Its CPU is its whole process group's (a Kamailio forks workers), read
    from /proc like every other figure.
    """

    def __init__(self, name: str, command: str, work: Path) -> None:
        self.name = name
        self.command = command
        self.work = work
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, next_hop: str, timeout: float = 15.0) -> None:
        self.port = peers.free_port()
        args = shlex.split(self.command.format(port=self.port, next_hop=next_hop))
        log = open(self.work / f"proxy-{self.name}.log", "wb")
        try:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.work,
                                         start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = (self.work / f"proxy-{self.name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"--proxy {self.name} exited {self.proc.returncode}: {tail}")
            if stats.udp_bound(self.port):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"--proxy {self.name}: nothing listening on UDP {self.port} after {timeout:.0f} s")

    def pids(self) -> list[int]:
        return stats.group_pids(self.proc.pid) if self.proc is not None else []

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, 9)
            except ProcessLookupError:
                pass
            self.proc.wait()


class Sweep:
    def __init__(self, cfg: SweepConfig) -> None:
        self.cfg = cfg
        # Absolute: redis-server is started in its own directory, so a relative socket path would miss.
        self.out = (cfg.out or report.new_results_dir("sweep")).resolve()
        self.work = self.out / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.rig = Rig(self.work, cfg.spec, workers=cfg.workers, gateway_args=cfg.gateway_args)
        self.no_capture = capture.available()
        self.steps: list[dict[str, Any]] = []
        self.proxies = {name: OtherProxy(name, cmd, self.work) for name, cmd in cfg.proxies}

    @property
    def uas(self) -> peers.SippUas | None:
        return self.rig.uas

    @property
    def gw(self) -> peers.GatewayProc | None:
        return self.rig.gw

    def setup(self) -> dict[str, Any]:
        say(f"bench: results in {self.out}")
        setup = self.rig.start()
        assert self.uas is not None
        for p in self.proxies.values():
            p.start(f"127.0.0.1:{self.uas.port}")
            say(f"bench: --proxy {p.name} listening on {p.port} (pids {p.pids()})")
        if self.no_capture:
            say(f"bench: no loopback capture ({self.no_capture}): latency from the gateway histogram only")
        return setup

    # ------------------------------------------------------------ one step
    def step(self, target: str, rate: int) -> dict[str, Any]:
        cfg = self.cfg
        assert self.uas is not None and self.gw is not None
        n = max(1, int(rate * cfg.duration))
        ports = [peers.free_port() for _ in range(cfg.callers)]
        cap = None
        pcap_path = self.work / f"{target}-{rate}.pcap"
        if not self.no_capture:
            cap = capture.Capture(pcap_path, ports).start()
        try:
            return self._run_step(target, rate, n, ports, cap, pcap_path)
        finally:
            if cap is not None:
                cap.stop()  # idempotent: already stopped unless the step raised

    def _run_step(self, target: str, rate: int, n: int, uac_ports: list[int],
                  cap: capture.Capture | None, pcap_path: Path) -> dict[str, Any]:
        cfg = self.cfg
        assert self.uas is not None and self.gw is not None
        proxy = self.proxies.get(target)
        port = self.gw.port if target == "gateway" else proxy.port if proxy else self.uas.port
        calls = dataset.make_calls(n, cfg.mix, cfg.spec, seed=rate * 7 + (target == "gateway"))
        tag = f"{target}-{rate}"
        k = len(uac_ports)
        st_paths = [self.work / f"{tag}-{i}-stats.csv" for i in range(k)]
        pids = self.rig.pids()
        pids["proxy"] = proxy.pids() if proxy else []
        cpu0 = {key: sum(stats.cpu_seconds(p) for p in v) for key, v in pids.items()}
        wcpu0 = {p: stats.cpu_seconds(p) for p in pids["gateway_workers"]}
        mem0 = {p: stats.memory_kib(p) for p in pids["gateway_workers"]}
        m0 = self.gw.metrics() if target == "gateway" else {}
        uas0 = peers.read_sipp_stats(self.uas.stats)
        drops_ports = [*uac_ports, self.uas.port, self.gw.port, *([proxy.port] if proxy else [])]
        drops0 = stats.udp_drops(drops_ports)
        procs: list[subprocess.Popen[bytes]] = []
        logs = []
        t0 = time.monotonic()
        for i, uac_port in enumerate(uac_ports):
            mine = calls[i::k]
            inf = peers.write_inf(self.work / f"{tag}-{i}.csv", dataset.rows(mine))
            args = peers.uac_args(
                f"127.0.0.1:{port}", peers.BENCH_SIPP_DIR / "uac_mix.xml", inf, st_paths[i], port=uac_port,
                calls=len(mine), rate=round(rate / k, 3), limit=max(2000, rate * 10), timeout=cfg.duration + 30,
                extra=("-buff_size", str(4 * 1024 * 1024)),
            )
            logs.append(open(self.work / f"{tag}-{i}-sipp.log", "wb"))  # closed below
            procs.append(subprocess.Popen(args, stdout=logs[-1], stderr=subprocess.STDOUT, cwd=self.work,
                                          start_new_session=True))
        uac_cpu = {pr.pid: 0.0 for pr in procs}
        in_flight: list[int] = []
        gw_in_flight: list[float] = []
        # Worker RSS every RSS_EVERY_S: growth is read after the warm-up (the Record-Route
        # token cache and 32 s of lingering transactions fill first), see rss_growth().
        rss_series: dict[int, list[tuple[float, int]]] = {p: [] for p in pids["gateway_workers"]}
        last_rss = -RSS_EVERY_S
        last_print = 0.0

        def totals() -> dict[str, int]:
            """The callers' latest statistics rows, added up."""
            out: dict[str, int] = {}
            for path in st_paths:
                rows = peers.read_sipp_stats(path)
                if rows:
                    for key in ("OutgoingCall(C)", "CurrentCall", "SuccessfulCall(C)", "FailedCall(C)",
                                "Retransmissions(C)"):
                        out[key] = out.get(key, 0) + _last_int(rows[-1], key)
            return out

        try:
            while any(pr.poll() is None for pr in procs):
                time.sleep(0.5)
                for pr in procs:
                    uac_cpu[pr.pid] = max(uac_cpu[pr.pid], stats.cpu_seconds(pr.pid))
                row = totals()
                if not row:
                    continue
                created = row.get("OutgoingCall(C)", 0)
                cur = row.get("CurrentCall", 0)
                if created < n:
                    in_flight.append(cur)
                if target == "gateway":
                    gw_in_flight.append(self.gw.metric("cag_transactions_in_flight"))
                el = time.monotonic() - t0
                if target == "gateway" and el - last_rss >= RSS_EVERY_S:
                    last_rss = el
                    for p, series in rss_series.items():
                        series.append((round(el, 1), stats.memory_kib(p)["rss"]))
                if el - last_print >= 2.0:
                    last_print = el
                    say(f"  {target:7} {rate:>6}/s  t={el:5.1f}s  sent {created:>7,}/{n:,}  "
                        f"ok {row.get('SuccessfulCall(C)', 0):>7,}  failed {row.get('FailedCall(C)', 0):>4}  "
                        f"in flight {cur:>5}  retrans {row.get('Retransmissions(C)', 0)}")
        finally:
            for pr in procs:
                if pr.poll() is None:
                    pr.kill()
                pr.wait()
            for f in logs:
                f.close()
        elapsed = time.monotonic() - t0
        cpu1 = {key: sum(stats.cpu_seconds(p) for p in v) for key, v in pids.items()}
        wcpu1 = {p: stats.cpu_seconds(p) for p in pids["gateway_workers"]}
        mem1 = {p: stats.memory_kib(p) for p in pids["gateway_workers"]}
        # Settle: workers publish their counters every second, and tcpdump hands
        # over the kernel ring's last block only when its 1 s timeout expires.
        time.sleep(SETTLE_S)
        cap_stats = cap.stop() if cap is not None else {}
        m1 = self.gw.metrics() if target == "gateway" else {}
        uas1 = peers.read_sipp_stats(self.uas.stats)
        final = totals()
        ok, failed = final.get("SuccessfulCall(C)", 0), final.get("FailedCall(C)", 0)
        created = final.get("OutgoingCall(C)", 0)
        uas_retrans = (_last_int(uas1[-1], "Retransmissions(C)") if uas1 else 0) - (
            _last_int(uas0[-1], "Retransmissions(C)") if uas0 else 0)
        uac_cpu_total = sum(uac_cpu.values())

        # Latency (and achieved rate) from the capture.
        lat: dict[str, Any] = {"count": 0, "source": "none"}
        finals: dict[str, int] = {}
        wire_reasons: dict[str, int] = {}
        achieved = ok / elapsed if elapsed else 0.0
        unanswered = None
        if cap is not None and pcap_path.exists():
            answered, unanswered = pcap.latencies(pcap_path)
            lat = {**stats.percentiles([a.latency_ms for a in answered]), "source": "loopback capture (tcpdump)"}
            for a in answered:
                finals[str(a.status)] = finals.get(str(a.status), 0) + 1
                wire_reasons[a.reason or str(a.status)] = wire_reasons.get(a.reason or str(a.status), 0) + 1
            if len(answered) > 1:
                ts = sorted(a.invite_ts for a in answered)
                achieved = (len(answered) - 1) / (ts[-1] - ts[0]) if ts[-1] > ts[0] else achieved
            if not cfg.keep_captures:
                pcap_path.unlink(missing_ok=True)
        total = max(1, created or n)
        cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
        gw_cpu = cpu["gateway_parent"] + cpu["gateway_workers"]
        res: dict[str, Any] = {
            "target": target,
            "rate": rate,
            "duration_s": round(elapsed, 2),
            "calls": n,
            "created": created,
            "successful": ok,
            "failed": failed,
            "failed_pct": round(100.0 * failed / total, 4),
            "achieved_cps": round(achieved, 1),
            "retransmissions": {
                "caller": final.get("Retransmissions(C)", 0),
                "callee": uas_retrans,
            },
            "in_flight": {
                "max": max(in_flight, default=0),
                "end_of_offer": in_flight[-1] if in_flight else 0,
                "series": in_flight,
            },
            "latency_ms": lat,
            "unanswered_in_capture": unanswered,
            "capture": cap_stats,
            "finals": finals,
            "wire_reasons": wire_reasons,
            "udp_drops": stats.udp_drops(drops_ports) - drops0,
            "cpu_seconds": {k: round(v, 3) for k, v in cpu.items()} | {"sipp_uac": round(uac_cpu_total, 3)},
            "callers": k,
        }
        if proxy is not None:
            res["proxy_cpu_us_per_call"] = round(cpu["proxy"] / total * 1e6, 1)
        if target == "gateway":
            res["decisions"] = {k: int(v) for k, v in _delta(_decisions(m1), _decisions(m0)).items()}
            res["decision_ms"] = histogram_delta(m1, m0, "cag_decision_seconds")
            res["redis_ms"] = histogram_delta(m1, m0, "cag_redis_seconds")
            res["gateway_events"] = {k: int(v) for k, v in _delta(
                _series(m1, "cag_proxy_events_total", "event"), _series(m0, "cag_proxy_events_total", "event")).items()}
            res["retransmissions"]["absorbed_by_gateway"] = res["gateway_events"].get("retransmission_absorbed", 0)
            res["gateway_in_flight"] = {"max": max(gw_in_flight, default=0.0),
                                        "end": gw_in_flight[-1] if gw_in_flight else 0.0}
            res["cpu_per_1000_calls_s"] = {
                "gateway": round(gw_cpu / total * 1000, 4),
                "redis": round(cpu["redis"] / total * 1000, 4),
                "audit_archiver": round(cpu["audit_archiver"] / total * 1000, 4),
            }
            res["gateway_cpu_us_per_call"] = round(gw_cpu / total * 1e6, 1)
            res["workers"] = [
                {"pid": p, "cpu_s": round(wcpu1.get(p, 0.0) - wcpu0.get(p, 0.0), 3),
                 "rss_start_kib": mem0.get(p, {}).get("rss", 0),
                 "rss_end_kib": mem1.get(p, {}).get("rss", 0), "peak_kib": mem1.get(p, {}).get("peak", 0),
                 "rss_series_kib": rss_series.get(p, []),
                 "rss_growth_after_warmup_pct": rss_growth(rss_series.get(p, []))}
                for p in pids["gateway_workers"]
            ]
            if lat.get("count") == 0:
                res["latency_ms"] = {**res["decision_ms"], "source": "gateway decision histogram (no capture)"}
        why: list[str] = []
        if failed > total * FAIL_RATIO:
            why.append(f"{failed} failed calls ({100.0 * failed / total:.2f} % > 0.1 %)")
        if achieved < MIN_ACHIEVED * rate:
            why.append(f"achieved {achieved:.0f}/s < 95 % of {rate}/s")
        if backlog_growing(in_flight, rate):
            why.append(f"calls in flight growing ({in_flight[len(in_flight) // 4 : len(in_flight) // 2]} → {in_flight[-3:]})")
        expected = {"admitted" if dataset.FAMILIES[f] == "admit" else dataset.FAMILIES[f]
                    for f, w in cfg.mix.items() if w > 0}
        unexpected = {r: v for r, v in res.get("decisions", {}).items() if r not in expected}
        res["unexpected_decisions"] = unexpected
        if sum(unexpected.values()) > total * FAIL_RATIO:
            why.append(f"decisions the mix does not call for: {unexpected}")
        if created < n:
            why.append(f"only {created} of {n} calls placed")
        res["passed"] = not why
        res["why_failed"] = why
        return res

    # ------------------------------------------------------------ the sweep
    def run(self) -> Path:
        cfg = self.cfg
        started = time.time()
        setup: dict[str, Any] = {}
        try:
            setup = self.setup()
            for rate in cfg.rates:
                pair = []
                if cfg.baseline:
                    pair.append(self.step("direct", rate))
                for name in self.proxies:
                    pair.append(self.step(name, rate))
                pair.append(self.step("gateway", rate))
                self.steps += pair
                for s in pair:
                    say(_line(s))
                gw = pair[-1]
                if not gw["passed"]:
                    say(f"bench: gateway fails at {rate}/s: {'; '.join(gw['why_failed'])}"
                        + ("" if cfg.keep_going else "; stopping"))
                    if not cfg.keep_going:
                        break
        finally:
            for p in self.proxies.values():
                p.stop()
            self.rig.stop()
        rep = {
            "schema": "cag-bench-sweep/1",
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": sys.argv,
            "machine": report.machine(),
            "config": {
                "rates": list(cfg.rates), "step_seconds": cfg.duration, "baseline": cfg.baseline,
                "workers": cfg.workers, "quick": cfg.quick, "proxies": dict(cfg.proxies), "mix": cfg.mix, "dataset": asdict(cfg.spec),
                "gateway_args": list(cfg.gateway_args), "gateway_env": GATEWAY_ENV, "keep_going": cfg.keep_going,
                "pass_criteria": ("< 0.1 % failed calls, >= 95 % of the offered rate, no growing backlog in "
                                  "flight, < 0.1 % decisions the mix does not call for (e.g. 503 fail-closed)"),
            },
            "setup": setup,
            "latency_source": ("INVITE → final response on the caller's socket, from a tcpdump capture on "
                               "loopback (kernel µs timestamps)") if not self.no_capture else
                              f"gateway decision histogram only: {self.no_capture}",
            "steps": self.steps,
            "summary": summarise(self.steps),
        }
        rep["plots"] = report.plot_sweep(self.out, self.steps)
        path = report.write_json(self.out / "report.json", rep)
        say("")
        say(table(self.steps))
        say(f"\nbench: report {path}")
        return path


def _line(s: Mapping[str, Any]) -> str:
    lat = s["latency_ms"]
    p = " / ".join(f"{lat.get(k, math.nan):.3f}" for k in ("p50", "p90", "p99", "p99.9"))
    extra = ""
    if s["target"] == "gateway":
        extra = f"  gw CPU {s['gateway_cpu_us_per_call']} µs/call"
        growth = [w["rss_growth_after_warmup_pct"] for w in s["workers"] if w.get("rss_growth_after_warmup_pct") is not None]
        if growth:
            extra += f"  worker RSS after warm-up {', '.join(f'{g:+.1f}' for g in growth)} %"
    if "proxy_cpu_us_per_call" in s:
        extra = f"  proxy CPU {s['proxy_cpu_us_per_call']} µs/call"
    verdict = "ok" if s["passed"] else "FAIL"
    return (f"= {s['target']:7} {s['rate']:>6}/s: achieved {s['achieved_cps']:.0f}/s, failed {s['failed']}, "
            f"latency p50/p90/p99/p99.9 {p} ms{extra}  [{verdict}]")


def summarise(steps: list[dict[str, Any]]) -> dict[str, Any]:
    gw = [s for s in steps if s["target"] == "gateway"]
    direct = {s["rate"]: s for s in steps if s["target"] == "direct"}
    passing = [s["rate"] for s in gw if s["passed"]]
    failing = [s["rate"] for s in gw if not s["passed"]]
    added: dict[str, Any] = {}
    for s in gw:
        d = direct.get(s["rate"])
        if d and s["latency_ms"].get("count") and d["latency_ms"].get("count"):
            added[str(s["rate"])] = {
                p: round(s["latency_ms"][p] - d["latency_ms"][p], 3) for p in ("p50", "p90", "p99", "p99.9")
            }
    others: dict[str, dict[str, Any]] = {}
    for s in steps:
        d = direct.get(s["rate"])
        if s["target"] in ("direct", "gateway") or not d:
            continue
        if s["latency_ms"].get("count") and d["latency_ms"].get("count"):
            others.setdefault(s["target"], {})[str(s["rate"])] = {
                "passed": s["passed"], "proxy_cpu_us_per_call": s.get("proxy_cpu_us_per_call"),
                **{p: round(s["latency_ms"][p] - d["latency_ms"][p], 3) for p in ("p50", "p99")},
            }
    return {
        "other_proxies_added_latency_ms": others,
        "max_passing_rate": max(passing, default=None),
        "first_failing_rate": min(failing, default=None),
        "added_latency_ms": added,
        "gateway_cpu_us_per_call": {str(s["rate"]): s["gateway_cpu_us_per_call"] for s in gw},
        "worker_peak_rss_kib": max((w["peak_kib"] for s in gw for w in s["workers"]), default=None),
        "worker_rss_growth_after_warmup_pct": {
            str(s["rate"]): [w.get("rss_growth_after_warmup_pct") for w in s["workers"]] for s in gw
        },
    }


def table(steps: list[dict[str, Any]]) -> str:
    """The report as a Markdown table (what docs/performance.md quotes)."""
    cols = ["target", "offered/s", "achieved/s", "failed", "retrans", "max in flight", "p50 ms", "p90 ms",
            "p99 ms", "p99.9 ms", "decision p99 ms", "gw CPU µs/call", "redis CPU µs/call",
            "worker peak RSS MiB", "pass"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for s in steps:
        lat = s["latency_ms"]
        cells = [s["target"], str(s["rate"]), f"{s['achieved_cps']:.0f}", str(s["failed"]),
                 str(s["retransmissions"]["caller"]), str(s["in_flight"]["max"]),
                 *(f"{lat.get(k, math.nan):.3f}" for k in ("p50", "p90", "p99", "p99.9"))]
        if s["target"] == "gateway":
            peak = max((w["peak_kib"] for w in s["workers"]), default=0) / 1024
            cells += [f"{s['decision_ms'].get('p99', math.nan):.3f}", f"{s['gateway_cpu_us_per_call']:.0f}",
                      f"{s['cpu_per_1000_calls_s']['redis'] * 1000:.0f}", f"{peak:.0f}"]
        else:
            cells += ["-", "-", "-", "-"]
        cells.append("yes" if s["passed"] else "no")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
