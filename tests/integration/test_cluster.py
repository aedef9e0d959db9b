"""The same store and engine on a 3-master Redis Cluster: same decisions as on one server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from policy.engine import AdmissionEngine, EngineConfig
from policy.model import DncEntry, FrequencyCap, Trunk
from policy.rules import RuleConfig
from policy.store import LIBRARY, PolicyStore
from tests.integration.conftest import (
    CALLEE,
    NOON,
    TOKEN,
    call,
    cluster_flush,
    consent,
    fixed_clock,
    load_world,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def cluster_store(redis_cluster: str) -> AsyncIterator[PolicyStore]:
    cluster_flush(redis_cluster)
    s = await PolicyStore.connect(redis_cluster)
    await load_world(s)
    yield s
    await s.close()


async def _scenario(store: PolicyStore) -> list[tuple[str, bool]]:
    """A small table of calls touching every slot kind; returns (reason, fail_open) per call."""
    await store.grant_consent(consent(token="tok-max", max_calls=1))
    rules = RuleConfig(caps=FrequencyCap(caller_per_second=20))
    e = AdmissionEngine(
        store, EngineConfig(rules=rules, unconsented_threshold=1000), clock=fixed_clock(NOON)
    )
    await e.start()
    out: list[tuple[str, bool]] = []
    try:
        batch = await asyncio.gather(*(e.admit(call()) for _ in range(5)))  # cap 3 per day
        out += [(d.reason, d.fail_open) for d in sorted(batch, key=lambda d: d.reason)]
        for c in (
            call(callee="13900139000"),  # consent_other_callee (token index, other slot)
            call(consent_token="unknown"),
            call(consent_token=None),
            call(callee="13700137000", consent_token="tok-max"),  # other_callee for tok-max
            call(consent_token="tok-max"),  # admitted? cap already used by TOKEN calls -> daily cap
            call(source_ip="198.51.100.1", callee="13600136000", consent_token=None),
            call(source_ip="203.0.113.1"),  # unknown source
        ):
            d = await e.admit(c)
            out.append((d.reason, d.fail_open))
        await store.dnc_add(DncEntry(number="13800138000"))
        out.append(((await e.admit(call())).reason, False))
        await store.dnc_remove(CALLEE)
        await store.revoke_consent(TOKEN, NOON)
        out.append(((await e.admit(call())).reason, False))
        await store.put_records(
            "trunks",
            [
                Trunk(
                    trunk_id="t-a",
                    enterprise_id="ent-a",
                    sources=("192.0.2.0/24",),
                    status="suspended",
                )
            ],
        )
        await asyncio.sleep(0.7)  # > refresh interval
        out.append(((await e.admit(call())).reason, False))
        x = await e.explain(call(source_ip="198.51.100.2"), NOON)
        out.append((x.reason, False))
        c1 = call(source_ip="198.51.100.2", callee="13600136000", consent_token="tok-other")
        await store.grant_consent(consent(token="tok-other", callee="+8613600136000"))
        out.append(((await e.admit(c1)).reason, False))
        out.append(
            (
                (
                    await e.admit(
                        call(
                            source_ip="198.51.100.2",
                            callee="13600136000",
                            consent_token="tok-other",
                        )
                    )
                ).reason,
                False,
            )
        )
        e.release("t-conc", c1.call_id)
        await asyncio.sleep(0.05)
        out.append(
            (
                (
                    await e.admit(
                        call(
                            source_ip="198.51.100.2",
                            callee="13600136000",
                            consent_token="tok-other",
                        )
                    )
                ).reason,
                False,
            )
        )
    finally:
        await e.stop()
    return out


async def test_cluster_decides_like_single_server(
    store: PolicyStore, cluster_store: PolicyStore
) -> None:
    assert cluster_store.cluster and not store.cluster
    single = await _scenario(store)
    clustered = await _scenario(cluster_store)
    assert clustered == single
    assert [r for r, _ in single][:5] == ["admitted"] * 3 + ["callee_daily_cap"] * 2
    assert "consent_other_callee" in {r for r, _ in single}


async def test_cluster_functions_on_every_primary_and_atomic_reference_write(
    cluster_store: PolicyStore,
) -> None:
    await cluster_store.ensure_functions(force=True)
    client = cluster_store.client
    for node in client.get_primaries():  # type: ignore[union-attr]
        libs = await client.execute_command(
            "FUNCTION", "LIST", "LIBRARYNAME", LIBRARY, target_nodes=node
        )
        assert len(libs) == 1
    await cluster_store.put_records(
        "trunks",
        [Trunk(trunk_id="t-x", enterprise_id="ent-a", sources=("10.1.0.0/16",))],
        replace=True,
    )
    trunks, _, _, version = await cluster_store.load_refdata()
    assert [t.trunk_id for t in trunks] == ["t-x"] and version == 4
    assert await cluster_store.set_status("trunk", "t-x", "suspended")
    assert (await cluster_store.get_consent(TOKEN)) == consent()


async def test_cluster_reference_change_within_one_second(cluster_store: PolicyStore) -> None:
    e = AdmissionEngine(cluster_store, EngineConfig(), clock=fixed_clock(NOON))
    await e.start()
    try:
        await asyncio.sleep(0.1)  # let the subscription settle
        t0 = time.monotonic()
        assert await cluster_store.set_status("trunk", "t-a", "suspended")
        while e.ref.trunks["t-a"].status != "suspended":
            assert time.monotonic() - t0 < 1.0, "change not visible within 1 s"
            await asyncio.sleep(0.005)
        print(f"cluster: reference change visible after {(time.monotonic() - t0) * 1000:.1f} ms")
        assert (await e.admit(call())).reason == "trunk_suspended"
    finally:
        await e.stop()
