"""Redis Sentinel (issue 14 item 7): a primary killed under calls, the gateway follows the new one.

A real primary, a replica and one sentinel (``redis-server --sentinel``,
quorum 1, down-after 1 s) on loopback; the store and the gateway connect with
``redis+sentinel://127.0.0.1:PORT/cagmaster`` and no virtual IP.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from policy.redis_client import parse_sentinel_url
from policy.store import PolicyStore
from tests.integration.conftest import EngineFactory, _cluster_port, _wait_port, call, load_world
from tests.integration.harness import (
    GatewayProc,
    SippResult,
    SippUas,
    call_once,
    run_uac,
    standard_policy,
    status_code,
)

pytestmark = pytest.mark.integration

MASTER = "cagmaster"


def _server(d: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    d.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(d), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[tuple[str, dict[str, subprocess.Popen[bytes]], list[int]]]:
    """(sentinel URL, processes by role, [primary port, replica port])."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    primary, replica, sport = _cluster_port(), _cluster_port(), _cluster_port()
    try:
        procs["primary"] = _server(tmp_path / "primary", primary)
        procs["replica"] = _server(tmp_path / "replica", replica, "--replicaof", "127.0.0.1", str(primary))
        _wait_port(primary)
        _wait_port(replica)
        conf = tmp_path / "sentinel.conf"
        conf.write_text(
            f"port {sport}\nbind 127.0.0.1\ndir {tmp_path}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {primary} 1\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 5000\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
        )
        procs["sentinel"] = subprocess.Popen(
            ["redis-server", str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        _wait_port(sport)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the replica has synced before anything is written
            out = subprocess.run(["redis-cli", "-p", str(replica), "info", "replication"],
                                 capture_output=True, text=True).stdout
            if "master_link_status:up" in out:
                break
            time.sleep(0.1)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # the sentinel knows the replica: it can promote it
            out = subprocess.run(["redis-cli", "-p", str(sport), "sentinel", "replicas", MASTER],
                                 capture_output=True, text=True).stdout
            if str(replica) in out:
                break
            time.sleep(0.1)
        yield f"redis+sentinel://127.0.0.1:{sport}/{MASTER}", procs, [primary, replica]
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_parse_sentinel_url() -> None:
    s = parse_sentinel_url("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2,[::1]:26380/mymaster/2?sentinel_password=sp")
    assert s.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380))
    assert (s.master, s.db, s.password, s.sentinel_kwargs) == ("mymaster", 2, "pw", {"password": "sp"})
    with pytest.raises(ValueError, match="master name"):
        parse_sentinel_url("redis+sentinel://10.0.0.1:26379")
    with pytest.raises(ValueError, match="database"):
        parse_sentinel_url("redis+sentinel://10.0.0.1/m/x")


async def test_store_follows_the_new_primary(
    sentinel_set: tuple[str, dict[str, subprocess.Popen[bytes]], list[int]], make_engine: EngineFactory
) -> None:
    url, procs, _ = sentinel_set
    store = await PolicyStore.connect(url)
    try:
        assert not store.cluster and await store.ping()
        await load_world(store)
        await asyncio.sleep(0.5)  # replicated before the kill
        e = await make_engine(on=store, budget_ms=200)
        assert (await e.admit(call())).admit
        os.killpg(procs["primary"].pid, signal.SIGKILL)
        t_kill = time.monotonic()
        resumed = None
        while time.monotonic() - t_kill < 20:
            d = await e.admit(call())
            if d.reason != "store_unavailable":
                resumed = time.monotonic() - t_kill
                assert d.admit, d.reason  # the replica had the data
                break
            await asyncio.sleep(0.1)
        print(f"sentinel failover: decisions resumed {resumed} s after the primary was killed")
        assert resumed is not None and resumed < 20
    finally:
        await store.close()


def test_gateway_under_sipp_load_survives_a_primary_kill(
    sentinel_set: tuple[str, dict[str, subprocess.Popen[bytes]], list[int]], tmp_path: Path
) -> None:
    """50 calls/s through the gateway on a sentinel URL: the primary is killed, every INVITE is
    answered (200, or 503 while there is no primary), admissions resume after the promotion."""
    url, procs, _ = sentinel_set
    rows = standard_policy(url, callees=20)
    time.sleep(0.5)  # replicated
    uas = SippUas(tmp_path, trace_messages=False).start()
    # The audit on too: its sink follows the primary through the sentinels like the store.
    gw = GatewayProc(url, tmp_path / "gw", [uas.hop], extra=["--budget-ms", "100"])
    try:
        gw.start()
        result: list[SippResult] = []
        load = threading.Thread(target=lambda: result.append(
            run_uac(tmp_path, gw.port, rows, calls=500, rate=50, timeout=60, scenario="uac_overload.xml")
        ))
        load.start()
        time.sleep(2.0)
        os.killpg(procs["primary"].pid, signal.SIGKILL)
        t_kill = time.monotonic()
        resumed = None
        n = 0
        while time.monotonic() - t_kill < 20:
            n += 1
            finals = call_once(gw, "tok-0", 30_000 + n, wait=0.5)
            if finals and status_code(finals[0]) == 200:
                resumed = time.monotonic() - t_kill
                break
            time.sleep(0.1)
        load.join(90)
        assert result
        r = result[0]
        assert r.failed == 0 and r.successful == 500, f"unanswered INVITEs: {r.stats}"
        print(f"sentinel failover under load: admissions resumed {resumed} s after the primary was killed")
        assert resumed is not None and resumed < 20
    finally:
        gw.stop()
        uas.stop()
