"""What keeps a load from stalling calls (issue 14, target 2), against real redis-server.

The embedded server's settings (AOF rewrite threshold, the opt-in realtime
main thread) and the load bench's measuring knobs are each checked to be
honoured: a setting that silently does nothing would make the figures in
docs/reference-data.md unreproducible.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from bench.peers import ROOT
from gateway.embedded_redis import AOF_REWRITE_MIN_SIZE, REALTIME_ENV, EmbeddedRedis

pytestmark = pytest.mark.integration

RR = os.SCHED_RR


def _policy(tid: int) -> int:
    return os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK


def _can_realtime() -> bool:
    """Root, CAP_SYS_NICE or an RLIMIT_RTPRIO: what SCHED_RR needs (tried on a throwaway child)."""
    p = subprocess.Popen(["sleep", "5"])
    try:
        os.sched_setscheduler(p.pid, RR, os.sched_param(1))
        return True
    except OSError:
        return False
    finally:
        p.kill()
        p.wait()


def test_embedded_redis_defers_aof_rewrites_and_extra_args_still_win(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "a") as server:
        c = redis.Redis(unix_socket_path=str(server.sock), decode_responses=True)
        assert AOF_REWRITE_MIN_SIZE == "1gb"
        assert c.config_get("auto-aof-rewrite-min-size") == {"auto-aof-rewrite-min-size": str(1 << 30)}
        assert c.config_get("hz") == {"hz": "100"}
        assert c.config_get("appendfsync") == {"appendfsync": "everysec"}  # durability unchanged
        c.close()
    with EmbeddedRedis(tmp_path / "b", extra_args=("--auto-aof-rewrite-min-size", "64mb")) as server:
        c = redis.Redis(unix_socket_path=str(server.sock), decode_responses=True)
        assert c.config_get("auto-aof-rewrite-min-size") == {"auto-aof-rewrite-min-size": str(64 << 20)}
        c.close()


def test_embedded_redis_is_not_realtime_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REALTIME_ENV, raising=False)
    with EmbeddedRedis(tmp_path / "r") as server:
        assert server.proc is not None
        assert not server.realtime and not server.realtime_applied
        assert _policy(server.proc.pid) == os.SCHED_OTHER


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_embedded_redis_realtime_main_thread_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """SCHED_RR on the main thread, reset on fork; the background (bio) threads stay normal."""
    if how == "environment":
        monkeypatch.setenv(REALTIME_ENV, "1")
        server = EmbeddedRedis(tmp_path / "rt")
    else:
        monkeypatch.delenv(REALTIME_ENV, raising=False)
        server = EmbeddedRedis(tmp_path / "rt", realtime=True)
    with server:
        assert server.proc is not None
        pid = server.proc.pid
        if not _can_realtime():  # no privilege: the server runs normally and says why
            assert not server.realtime_applied
            assert REALTIME_ENV in caplog.text
            assert _policy(pid) == os.SCHED_OTHER
            return
        assert server.realtime_applied
        assert _policy(pid) == RR
        assert os.sched_getscheduler(pid) & os.SCHED_RESET_ON_FORK
        others = [int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid]
        assert others, "redis-server 7 starts its bio threads at start-up"
        assert all(_policy(t) == os.SCHED_OTHER for t in others)
        # The AOF-rewrite child (a fork of the main thread) must not inherit the realtime policy.
        c = redis.Redis(unix_socket_path=str(server.sock))
        c.set("k", "v" * 10_000)
        c.bgrewriteaof()
        child_policies = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not child_policies:
            for entry in os.listdir("/proc"):
                if entry.isdigit() and int(entry) != pid:
                    try:
                        stat = Path(f"/proc/{entry}/stat").read_text()
                    except OSError:
                        continue
                    if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # ppid: redis's fork
                        child_policies.append(int(stat.rsplit(")", 1)[1].split()[38]))
            if not int(c.info("persistence")["aof_rewrite_in_progress"]):
                break
        assert all(p == os.SCHED_OTHER for p in child_policies), child_policies
        c.close()


def test_ping_process_reports_and_takes_slow_pings_apart(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "p") as server:
        assert server.proc is not None
        p = subprocess.Popen(
            [sys.executable, "-m", "bench.ping", str(server.sock), str(server.proc.pid)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        time.sleep(0.5)
        out, _ = p.communicate(input="", timeout=20)
    rep = json.loads(out.strip().splitlines()[-1])
    assert p.returncode == 0
    assert rep["pings"] > 50 and rep["longest_ms"] > 0
    assert rep["over_1ms"] >= rep["over_5ms"] >= rep["over_10ms"] >= 0
    for s in rep["slowest"]:
        assert set(s) == {"ms", "at_s", "self_wait_ms", "redis_wait_ms", "redis_cpu_ms", "other_ms"}


def test_load_bench_honours_its_knobs_and_reports_the_stall_figures(tmp_path: Path) -> None:
    """--redis-config, --redis-sched, --loader-arg and the pinning flags reach what they set."""
    rt = _can_realtime()
    args = [
        "--rows", "150000", "--kind", "dnc", "--replace", "--control-seconds", "0.5",
        "--redis-config", "hz=20", "--redis-config", "auto-aof-rewrite-percentage=0",
        "--loader-arg=--nice=7", "--redis-cpus", "0", "--loader-cpus", "0",
        "--redis-sched", "rr:1" if rt else "normal",
    ]
    r = subprocess.run([sys.executable, "-m", "bench", "load", *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    rep = json.loads(r.stdout)
    assert rep["exit"] == 0 and rep["rows"] == 150_000
    knobs = rep["knobs"]
    assert knobs["redis"]["hz"] == "20"  # --redis-config over the embedded default's 100
    assert knobs["redis"]["auto-aof-rewrite-percentage"] == "0"
    assert knobs["redis"]["latency-monitor-threshold"] == "1"
    assert knobs["redis"]["auto-aof-rewrite-min-size"] == str(1 << 30)  # the embedded default
    assert knobs["redis_main_thread"]["cpus"] == [0]
    assert knobs["redis_main_thread"]["policy"] == ("rr" if rt else "normal")
    assert knobs["loader_sched"]["nice"] == 7 and knobs["loader_sched"]["cpus"] == [0]
    assert rep["pings"] > 0 and rep["longest_ping_ms"] > 0
    assert isinstance(rep["redis_latency_events"], dict)
    assert {"aof_rewrites", "forks", "latest_fork_ms", "aof_delayed_fsync"} <= set(rep["redis_persistence"])
    assert rep["redis_main_thread_cpu_s"] > 0
    assert "longest PING" in r.stderr and "Redis latency monitor" in r.stderr and "knobs:" in r.stderr


def test_max_rate_paces_the_loader(redis_url: str, tmp_path: Path) -> None:
    """--max-rate N: the load takes at least rows / N seconds (the pacing a shared box needs)."""
    data = tmp_path / "dnc.csv"
    with open(data, "w") as f:
        f.write("number,scope,registered_at\n")
        for i in range(30_000):
            f.write(f"+86{13_000_000_000 + i * 16},all,2025-03-15T10:00:00+08:00\n")
    cag = str(Path(sys.executable).with_name("cag"))
    t0 = time.monotonic()
    r = subprocess.run([cag, "policy", "load", "dnc", str(data), "--replace", "--gc-grace", "-1",
                        "--max-rate", "15000", "--redis-url", redis_url], capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    assert "loaded 30000 dnc" in r.stdout
    # 30,000 rows at 15,000 rows/s: the last batch is sent at ~1.9 s at the earliest.
    assert took >= 1.8, took
