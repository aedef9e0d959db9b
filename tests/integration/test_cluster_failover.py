"""Redis Cluster master failover (issue 7): a replica is promoted, decisions resume.

Its own cluster (3 masters + 3 replicas on loopback, node timeout 1 s), since
the test kills a master: the shared ``redis_cluster`` of conftest stays
intact for the other tests.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from policy.layout import callee_tag
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


def _node(d: Path, port: int) -> subprocess.Popen[bytes]:
    d.mkdir()
    return subprocess.Popen(  # fixed argv
        [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1",
            "--cluster-enabled", "yes", "--cluster-config-file", str(d / "nodes.conf"),
            "--cluster-node-timeout", "1000", "--dir", str(d), "--save", "", "--appendonly", "no",
            "--logfile", str(d / "redis.log"), "--repl-diskless-sync-delay", "0",
        ],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _cli(port: int, *args: str) -> str:
    return subprocess.run(
        ["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=5
    ).stdout


@pytest.fixture
def replicated_cluster(tmp_path: Path) -> Iterator[tuple[list[int], dict[int, subprocess.Popen[bytes]]]]:
    procs: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for i in range(6):
            port = _cluster_port()
            procs[port] = _node(tmp_path / f"n{i}", port)
        ports = list(procs)
        for p in ports:
            _wait_port(p)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # A replica can take over only once it has synced: wait for every link.
            if all("cluster_state:ok" in _cli(p, "cluster", "info") for p in ports) and all(
                "master_link_status:up" in info
                for info in (_cli(p, "info", "replication") for p in ports)
                if "role:slave" in info
            ) and sum("role:slave" in _cli(p, "info", "replication") for p in ports) == 3:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("cluster did not reach cluster_state:ok")
        yield ports, procs
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
async def failover_store(
    replicated_cluster: tuple[list[int], dict[int, subprocess.Popen[bytes]]],
) -> AsyncIterator[PolicyStore]:
    ports, _ = replicated_cluster
    s = await PolicyStore.connect(f"redis://127.0.0.1:{ports[0]}")
    await load_world(s)
    yield s
    await s.close()


async def test_master_failover_decisions_resume(
    replicated_cluster: tuple[list[int], dict[int, subprocess.Popen[bytes]]],
    failover_store: PolicyStore,
    make_engine: EngineFactory,
) -> None:
    ports, procs = replicated_cluster
    e = await make_engine(on=failover_store, budget_ms=100)
    assert (await e.admit(call())).admit
    # The master holding the callee's slot (the admission script's slot).
    slot = int(_cli(ports[0], "cluster", "keyslot", split_tag("+8613800138000")).strip())
    master = _master_of(ports, slot)
    os.kill(procs[master].pid, signal.SIGKILL)
    t_kill = time.monotonic()
    reasons: list[str] = []
    worst = 0.0
    resumed = None
    while time.monotonic() - t_kill < 20:
        t0 = time.monotonic()
        d = await e.admit(call())  # callee and token slots, the dead master among them
        worst = max(worst, time.monotonic() - t0)
        reasons.append(d.reason)
        if d.reason != "store_unavailable":
            resumed = time.monotonic() - t_kill
            break
        await asyncio.sleep(0.05)
    print(f"cluster failover: decisions resumed {resumed} s after the master was killed "
          f"({len(reasons)} decisions, worst {worst * 1000:.0f} ms)")
    assert resumed is not None, f"decisions did not resume: {reasons[-3:]}"
    assert resumed < 15, "node timeout 1 s + election + breaker probe"
    assert worst < 1.0, "every INVITE answered within the budget (+ slack) during the failover"


def test_master_failover_under_sipp_load(
    replicated_cluster: tuple[list[int], dict[int, subprocess.Popen[bytes]]], tmp_path: Path
) -> None:
    """Through the gateway at 50 calls/s: a master is killed, every INVITE is answered (200 or
    503 store_unavailable while the slot has no master), admissions resume a few seconds later."""
    ports, procs = replicated_cluster
    url = f"redis://127.0.0.1:{ports[0]}"
    rows = standard_policy(url, callees=20)
    uas = SippUas(tmp_path, trace_messages=False).start()
    gw = GatewayProc(url, tmp_path / "gw", [uas.hop], extra=["--budget-ms", "100"])
    try:
        gw.start()
        result: list[SippResult] = []
        load = threading.Thread(target=lambda: result.append(
            run_uac(tmp_path, gw.port, rows, calls=500, rate=50, timeout=60, scenario="uac_overload.xml")
        ))
        load.start()
        time.sleep(2.0)
        # The master of the callee slot of the first rows' callee.
        slot = int(_cli(ports[0], "cluster", "keyslot", split_tag("+8613800000000")).strip())
        master = _master_of(ports, slot)
        os.kill(procs[master].pid, signal.SIGKILL)
        t_kill = time.monotonic()
        resumed = None
        n = 0
        while time.monotonic() - t_kill < 15:
            n += 1
            finals = _fault_call(gw, n)
            if finals and status_code(finals[0]) == 200:
                resumed = time.monotonic() - t_kill
                break
            time.sleep(0.1)
        load.join(90)
        assert result
        r = result[0]
        assert r.failed == 0 and r.successful == 500, f"unanswered INVITEs: {r.stats}"
        print(f"cluster failover under load: admissions resumed {resumed} s after the master was killed")
        assert resumed is not None and resumed < 15
    finally:
        gw.stop()
        uas.stop()


def split_tag(callee: str) -> str:
    """The hash tag of a callee's keys (its number bucket, policy/layout.py)."""
    return callee_tag(callee).split("}")[0] + "}"


def _master_of(ports: list[int], slot: int) -> int:
    for p in ports:
        for line in _cli(p, "cluster", "nodes").splitlines():
            f = line.split()
            if "myself" in f[2] and "master" in f[2]:
                for r in f[8:]:
                    lo, _, hi = r.partition("-")
                    if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                        return p
    raise AssertionError(f"no master serves slot {slot}")


def _fault_call(gw: GatewayProc, n: int) -> list[bytes]:

    return call_once(gw, "tok-0", 20_000 + n, wait=0.5)
