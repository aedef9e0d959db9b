"""Fixtures for the store / engine / cluster tests: a small policy world on real Redis.

``redis_cluster`` starts three real ``redis-server`` masters (cluster-enabled,
loopback ports, temp dirs) and joins them with ``redis-cli --cluster create``;
it is session-scoped because a cluster takes a few seconds to form.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from policy.engine import AdmissionEngine, EngineConfig
from policy.model import CallAttempt, Consent, Enterprise, NumberFiling, Trunk
from policy.store import PolicyStore

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOON = datetime(2026, 3, 10, 12, 0, tzinfo=SHANGHAI)  # outside the default quiet hours
NIGHT = datetime(2026, 3, 10, 23, 0, tzinfo=SHANGHAI)  # inside 21:00-08:00
CALLER = "+861058001234"  # Beijing fixed line filed to ent-a for outbound
CALLEE = "+8613800138000"
OTHER_CALLEE = "+8613900139000"
TOKEN = "tok-1"


def trunks() -> list[Trunk]:
    return [
        Trunk(trunk_id="t-a", enterprise_id="ent-a", sources=("192.0.2.0/24",)),
        Trunk(trunk_id="t-cps", enterprise_id="ent-a", sources=("198.51.100.1",), max_cps=1),
        Trunk(
            trunk_id="t-conc", enterprise_id="ent-a", sources=("198.51.100.2",), max_concurrent=1
        ),
        Trunk(trunk_id="t-b", enterprise_id="ent-b", sources=("198.51.100.3",)),
    ]


def enterprises() -> list[Enterprise]:
    return [
        Enterprise(enterprise_id="ent-a", name="A", licence_expires=date(2030, 1, 1)),
        Enterprise(enterprise_id="ent-b", name="B"),
    ]


def filings() -> list[NumberFiling]:
    return [
        NumberFiling(number=CALLER, enterprise_id="ent-a", outbound=True),
        NumberFiling(number="+861058007777", enterprise_id="ent-b", outbound=True),
    ]


def consent(**overrides: Any) -> Consent:
    fields: dict[str, Any] = {
        "token": TOKEN,
        "callee": CALLEE,
        "enterprise_id": "ent-a",
        "purpose": "callback",
        "granted_at": datetime(2026, 3, 1, tzinfo=UTC),
        "evidence_ref": "ev-1",
    }
    fields.update(overrides)
    return Consent(**fields)


_seq = iter(range(10**9))


def call(**overrides: Any) -> CallAttempt:
    """An INVITE from trunk t-a with the filed caller and TOKEN; a fresh transaction each time."""
    n = next(_seq)
    fields: dict[str, Any] = {
        "call_id": f"call-{n}",
        "branch": f"z9hG4bK-{n}",
        "source_ip": "192.0.2.10",
        "source_port": 5060,
        "callee": "13800138000",
        "from_user": "01058001234",
        "pai_user": None,
        "consent_token": TOKEN,
    }
    fields.update(overrides)
    return CallAttempt(**fields)


def fixed_clock(t: datetime = NOON) -> Callable[[], float]:
    ts = t.timestamp()
    return lambda: ts


async def load_world(store: PolicyStore) -> None:
    await store.put_records("trunks", trunks())
    await store.put_records("enterprises", enterprises())
    await store.put_records("filings", filings())
    await store.grant_consent(consent())


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[PolicyStore]:
    s = await PolicyStore.connect(redis_url)
    await load_world(s)
    yield s
    await s.close()


EngineFactory = Callable[..., Awaitable[AdmissionEngine]]


@pytest.fixture
async def make_engine(store: PolicyStore) -> AsyncIterator[EngineFactory]:
    """Build started engines on ``store`` (stopped at teardown); kwargs go to EngineConfig."""
    engines: list[AdmissionEngine] = []

    async def make(
        *, clock: Callable[[], float] | None = None, on: PolicyStore | None = None, **cfg: Any
    ) -> AdmissionEngine:
        # Tests of the budget pass budget_ms; the rest check decisions, which a
        # busy CI machine must not turn into fail-closed timeouts.
        cfg.setdefault("budget_ms", 2000)
        e = AdmissionEngine(on or store, EngineConfig(**cfg), clock=clock or fixed_clock())
        await e.start()
        engines.append(e)
        return e

    yield make
    for e in engines:
        await e.stop()


# ---------------------------------------------------------------- cluster
def _cluster_port() -> int:
    """A TCP port p with p + 10000 (the cluster bus port) also free and below 65536."""
    import random

    for _ in range(200):
        port = random.randrange(20000, 30000)  # not crypto
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"redis on port {port} did not start")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Three cluster-enabled masters on loopback; yields a redis:// URL of one of them."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail("redis-server / redis-cli not installed")
    base = tmp_path_factory.mktemp("cluster")
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for i in range(3):
            port = _cluster_port()
            d = base / f"n{i}"
            d.mkdir()
            procs.append(
                subprocess.Popen(  # fixed argv
                    [
                        "redis-server",
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(d / "nodes.conf"),
                        "--cluster-node-timeout",
                        "2000",
                        "--dir",
                        str(d),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--logfile",
                        str(d / "redis.log"),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
            ports.append(port)
        for p in ports:
            _wait_port(p)
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = [
                subprocess.run(
                    ["redis-cli", "-p", str(p), "cluster", "info"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout
                for p in ports
            ]
            if all("cluster_state:ok" in s for s in states):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("redis cluster did not reach cluster_state:ok")
        yield f"redis://127.0.0.1:{ports[0]}"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def cluster_flush(url: str) -> None:
    """FLUSHALL on every master (keys only: functions stay, as after a data reset)."""
    from redis.cluster import RedisCluster

    c = RedisCluster.from_url(url)
    try:
        c.flushall(target_nodes=RedisCluster.PRIMARIES)
    finally:
        c.close()


def tmp_redis(tmp: Path) -> Any:
    """A private redis-server (for stop / restart tests) on a unix socket in ``tmp``; AOF keeps data."""
    from gateway.embedded_redis import EmbeddedRedis

    return EmbeddedRedis(tmp)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Any]:
    """A private redis-server a test may stop and restart (fault tests)."""
    from gateway.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "redis-own")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def uas(tmp_path: Path) -> Iterator[Any]:
    """A SIPp callee without message traces (load tests); modules with their own ``uas`` override it."""
    from bench.peers import SippUas

    peer = SippUas(tmp_path, trace_messages=False).start()
    yield peer
    peer.stop()
