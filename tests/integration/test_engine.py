"""AdmissionEngine against a real redis-server: atomicity, idempotency, refunds, fail modes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from policy.decision import Check, Decision
from policy.layout import (
    consent_layer_key,
    index_key,
    index_shard,
    split,
    token_layer_key,
    token_shard,
    used_key,
)
from policy.model import DncEntry, FrequencyCap
from policy.rules import CHECK_ORDER, RuleConfig
from policy.store import PolicyStore, callee_txn_key, day_key, total_day_key
from tests.integration.conftest import (
    CALLEE,
    NIGHT,
    NOON,
    OTHER_CALLEE,
    TOKEN,
    EngineFactory,
    call,
    consent,
    fixed_clock,
    load_world,
    tmp_redis,
)

pytestmark = pytest.mark.integration

DAY = NOON.strftime("%Y%m%d")


async def eventually(cond: Callable[[], Awaitable[bool]], timeout: float = 2.0) -> float:
    """Poll ``cond`` until true; return the seconds it took (fails the test on timeout)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if await cond():
            return time.monotonic() - t0
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition not met within {timeout}s")


async def day_count(store: PolicyStore, callee: str = CALLEE, enterprise: str = "ent-a") -> int:
    return int(await store.client.get(day_key(callee, enterprise, DAY)) or 0)


async def total_count(store: PolicyStore, callee: str = CALLEE) -> int:
    return int(await store.client.get(total_day_key(callee, DAY)) or 0)


def check(d: Decision, name: str) -> Check:
    return next(c for c in d.checks if c.name == name)


# ------------------------------------------------------------ atomicity
async def test_concurrent_admits_respect_cap_exactly(
    redis_url: str, store: PolicyStore, make_engine: EngineFactory
) -> None:
    """50 INVITEs to one callee from two workers at once, cap 3: exactly 3 admitted."""
    other = await PolicyStore.connect(redis_url)
    try:
        w1 = await make_engine()
        w2 = await make_engine(on=other)
        decisions = await asyncio.gather(*(w.admit(call()) for _ in range(25) for w in (w1, w2)))
    finally:
        await asyncio.sleep(0.05)  # let refunds of the rejected ones land
        await other.close()
    admitted = [d for d in decisions if d.admit]
    assert len(admitted) == 3
    assert {d.reason for d in decisions if not d.admit} == {"callee_daily_cap"}
    assert all(d.retry_after and d.retry_after > 0 for d in decisions if not d.admit)
    assert await day_count(store) == 3
    assert await total_count(store) == 3
    assert await store.consent_used(TOKEN) == 3


async def test_consent_max_calls_exhausted_exactly(
    store: PolicyStore, make_engine: EngineFactory
) -> None:
    await store.grant_consent(consent(token="tok-2", max_calls=2))
    e = await make_engine()
    decisions = await asyncio.gather(*(e.admit(call(consent_token="tok-2")) for _ in range(10)))
    assert sum(d.admit for d in decisions) == 2
    assert {d.reason for d in decisions if not d.admit} == {"consent_exhausted"}
    assert await store.consent_used("tok-2") == 2


async def test_same_transaction_counts_once(store: PolicyStore, make_engine: EngineFactory) -> None:
    e = await make_engine()
    c = call()
    d1, d2 = await asyncio.gather(e.admit(c), e.admit(c))  # same txn, even in one pipeline
    d3 = await e.admit(c)
    assert d1.admit and d2.admit and d3.admit
    assert await day_count(store) == 1
    assert await store.consent_used(TOKEN) == 1


async def test_late_script_after_client_timeout_counts_once(
    store: PolicyStore, make_engine: EngineFactory
) -> None:
    """The script ran but the client never saw the answer; the retransmission counts nothing."""
    c = call()
    # What a worker whose client timed out left behind: the script ran and counted.
    r = await store.admit_callee(
        callee=CALLEE,
        token=TOKEN,
        enterprise_id="ent-a",
        purpose=None,
        allowed_purposes=("callback", "consultation"),
        now_ms=int(NOON.timestamp() * 1000),
        quiet_fail=False,
        daily_limit=3,
        total_limit=0,
        day=DAY,
        day_ttl=3600,
        txn=c.txn_id,
    )
    assert r.counted and not r.replay
    e = await make_engine()
    d = await e.admit(c)
    assert d.admit
    assert await day_count(store) == 1
    assert await store.consent_used(TOKEN) == 1


async def test_budget_timeout_rejects_refunds_and_repeats(
    store: PolicyStore, make_engine: EngineFactory
) -> None:
    """Fail-closed after the budget ran out: the late script's counting is refunded, and a
    retransmission of that transaction gets the same rejection (the stored decision)."""
    hasty = await make_engine(budget_ms=0.0001)
    c = call()
    d = await hasty.admit(c)
    assert (d.reason, d.sip_code, d.retry_after) == ("store_unavailable", 503, 1)
    assert hasty.stats["store_timeouts"] == 1

    async def refunded() -> bool:
        return (
            await day_count(store) == 0
            and await store.client.exists(callee_txn_key(CALLEE, c.txn_id)) == 1
        )

    await eventually(refunded)
    assert await store.consent_used(TOKEN) == 0
    normal = await make_engine()
    again = await normal.admit(c)
    assert again.reason == "store_unavailable"
    assert await day_count(store) == 0
    assert (await normal.admit(call())).admit  # a new transaction is decided afresh


# ------------------------------------------------------ rejections, quota
async def test_rejected_calls_consume_no_quota(
    store: PolicyStore, make_engine: EngineFactory
) -> None:
    night = await make_engine(clock=fixed_clock(NIGHT))
    d = await night.admit(call())
    assert d.reason == "quiet_hours" and d.retry_after == 9 * 3600
    await store.dnc_add(DncEntry(number=CALLEE, scope="all"))
    e = await make_engine()
    assert (await e.admit(call())).reason == "callee_dnc"
    assert (await e.admit(call(consent_token="nope"))).reason == "consent_unknown"
    assert await day_count(store) == 0
    assert await store.client.exists(total_day_key(CALLEE, NIGHT.strftime("%Y%m%d"))) == 0
    assert await store.consent_used(TOKEN) == 0


async def test_refund_when_trunk_rate_rejects(
    store: PolicyStore, make_engine: EngineFactory
) -> None:
    e = await make_engine()
    first = await e.admit(call(source_ip="198.51.100.1"))
    second = await e.admit(call(source_ip="198.51.100.1"))  # same second, max_cps 1
    assert first.admit
    assert (second.reason, second.retry_after) == ("trunk_rate", 1)

    async def refunded() -> bool:
        return await day_count(store) == 1 and await store.consent_used(TOKEN) == 1

    await eventually(refunded)
    assert e.stats["refunds"] >= 1


async def test_caller_rate(store: PolicyStore, make_engine: EngineFactory) -> None:
    rules = RuleConfig(caps=FrequencyCap(callee_daily=0, caller_per_second=2))
    e = await make_engine(rules=rules)
    ds = [await e.admit(call()) for _ in range(3)]
    assert [d.reason for d in ds] == ["admitted", "admitted", "caller_rate"]


async def test_max_concurrent_released(store: PolicyStore, make_engine: EngineFactory) -> None:
    e = await make_engine()
    c1 = call(source_ip="198.51.100.2")
    assert (await e.admit(c1)).admit
    d2 = await e.admit(call(source_ip="198.51.100.2"))
    assert d2.reason == "trunk_concurrent"
    e.release("t-conc", c1.call_id)

    async def admitted() -> bool:
        return (await e.admit(call(source_ip="198.51.100.2"))).admit

    await eventually(admitted)


async def test_revocation_and_dnc_effective_on_next_invite(
    store: PolicyStore, make_engine: EngineFactory
) -> None:
    e = await make_engine()
    assert (await e.admit(call())).admit
    await store.dnc_add(DncEntry(number=CALLEE, scope="all"))
    assert (await e.admit(call())).reason == "callee_dnc"
    assert await store.dnc_remove(CALLEE)
    assert (await e.admit(call())).admit
    assert await store.revoke_consent(TOKEN, NOON - timedelta(seconds=1))
    assert (await e.admit(call())).reason == "consent_revoked"
    assert not await store.revoke_consent("no-such-token", NOON)


async def test_consent_other_callee_via_token_index(
    store: PolicyStore, make_engine: EngineFactory
) -> None:
    e = await make_engine()
    d = await e.admit(call(callee="13900139000"))  # TOKEN was granted for CALLEE
    assert d.reason == "consent_other_callee"
    assert CALLEE in check(d, "consent").detail
    assert (await e.admit(call(consent_token="unknown"))).reason == "consent_unknown"
    assert (await e.admit(call(consent_token=None))).reason == "consent_missing"
    assert await day_count(store, OTHER_CALLEE) == 0


async def test_evidence_ref_and_checks_on_admission(
    store: PolicyStore, make_engine: EngineFactory
) -> None:
    e = await make_engine()
    seen: list[tuple[str, float]] = []
    e.latency_observer = lambda what, s: seen.append((what, s))
    d = await e.admit(call())
    assert d.admit and d.evidence_ref == "ev-1" and d.consent_token == TOKEN
    assert sorted(w for w, _ in seen) == ["decision", "redis"] and all(0 < s < 1 for _, s in seen)
    assert tuple(c.name for c in d.checks) == CHECK_ORDER
    assert all(c.outcome == "pass" for c in d.checks)


# ------------------------------------------------- reference data, R6
async def test_reference_change_visible_within_one_second(
    store: PolicyStore, make_engine: EngineFactory
) -> None:
    e = await make_engine()
    assert e.ready and (await e.admit(call())).admit
    t0 = time.monotonic()
    assert await store.set_status("trunk", "t-a", "suspended")

    async def seen() -> bool:
        return e.ref.trunks["t-a"].status == "suspended"

    await eventually(seen, timeout=1.0)
    elapsed = time.monotonic() - t0
    assert elapsed < 1.0
    assert (await e.admit(call())).reason == "trunk_suspended"
    print(f"reference change visible after {elapsed * 1000:.1f} ms")


async def test_auto_suspension_after_threshold(
    store: PolicyStore, make_engine: EngineFactory
) -> None:
    e = await make_engine(unconsented_threshold=3, unconsented_window_s=60)
    for _ in range(3):
        assert (await e.admit(call(consent_token=None))).reason == "consent_missing"

    async def suspended() -> bool:
        return e.ref.enterprises["ent-a"].status == "suspended"

    await eventually(suspended)
    assert e.stats["auto_suspended"] == 1
    assert (await e.admit(call())).reason == "enterprise_suspended"
    x = await e.explain(call(), NOON)
    detail = check(x, "trunk").detail
    assert "auto: 3 unconsented attempts in 60 s" in detail and "suspended since" in detail
    assert await store.set_status("enterprise", "ent-a", "active")

    async def resumed() -> bool:
        return e.ref.enterprises["ent-a"].status == "active"

    await eventually(resumed)
    assert e.ref.enterprises["ent-a"].suspended_cause is None
    assert (await e.admit(call())).admit


async def _snapshot(store: PolicyStore) -> dict[bytes, Any]:
    out: dict[bytes, Any] = {}
    async for k in store.client.scan_iter():
        t = await store.client.type(k)
        if t == b"string":
            out[k] = await store.client.get(k)
        elif t == b"hash":
            out[k] = await store.client.hgetall(k)
        elif t == b"zset":
            out[k] = await store.client.zrange(k, 0, -1, withscores=True)
        elif t == b"set":
            out[k] = await store.client.smembers(k)
    return out


async def test_explain_changes_no_counter(store: PolicyStore, make_engine: EngineFactory) -> None:
    rules = RuleConfig(caps=FrequencyCap(caller_per_second=5))
    e = await make_engine(rules=rules)
    assert (await e.admit(call(source_ip="198.51.100.2"))).admit
    before = await _snapshot(store)
    x = await e.explain(call(source_ip="198.51.100.2"), NOON)
    x2 = await e.explain(call(consent_token="nope"), NOON)
    assert await _snapshot(store) == before
    assert x.reason == "trunk_concurrent"
    assert {c.name for c in x.checks} >= {
        "trunk",
        "consent",
        "dnc",
        "quiet_hours",
        "callee_daily_cap",
        "caller_rate",
        "trunk_concurrent",
    }
    assert check(x, "callee_daily_cap").detail == "1 of 3 used"
    assert x2.reason == "consent_unknown" and check(x2, "callee_daily_cap").outcome == "pass"
    assert check(x2, "consent").detail == "unknown consent token"  # worded by policy.rules.consent


# ------------------------------------------------------ fail modes
@pytest.fixture
async def private(tmp_path: Path) -> Any:
    """A redis-server of this test's own (it gets stopped and restarted) with the world loaded."""
    server = tmp_redis(tmp_path)
    server.start()
    s = await PolicyStore.connect(server.url)
    await load_world(s)
    yield server, s
    await s.close()
    server.stop()


async def test_fail_closed_when_redis_stopped(private: Any, make_engine: EngineFactory) -> None:
    server, s = private
    e = await make_engine(on=s, budget_ms=50)
    assert (await e.admit(call())).admit
    server.stop()
    t0 = time.monotonic()
    d = await e.admit(call())
    elapsed = time.monotonic() - t0
    assert (d.reason, d.sip_code, d.retry_after) == ("store_unavailable", 503, 1)
    assert elapsed < 0.08  # budget 50 ms + scheduling slack
    assert e.stats["fail_closed"] == 1
    assert e.source_known("192.0.2.10")  # the reference snapshot stays in service


async def test_budget_applies_when_redis_hangs(private: Any, make_engine: EngineFactory) -> None:
    server, s = private
    e = await make_engine(on=s, budget_ms=50)
    assert (await e.admit(call())).admit
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        d = await e.admit(call())
        elapsed = time.monotonic() - t0
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    assert d.reason == "store_unavailable"
    assert 0.045 <= elapsed < 0.1
    assert e.stats["store_timeouts"] == 1


async def test_fail_open_keeps_in_memory_checks(private: Any, make_engine: EngineFactory) -> None:
    server, s = private
    day = await make_engine(on=s, fail_mode="open")
    night = await make_engine(on=s, fail_mode="open", clock=fixed_clock(NIGHT))
    server.stop()
    d = await day.admit(call())
    assert d.admit and d.fail_open
    assert check(d, "consent").outcome == "skip"
    assert (await night.admit(call())).reason == "quiet_hours"
    assert (await day.admit(call(source_ip="203.0.113.9"))).reason == "unknown_source"
    assert day.stats["fail_open"] == 1


async def test_recovery_within_five_seconds(private: Any, make_engine: EngineFactory) -> None:
    server, s = private
    e = await make_engine(on=s, breaker_failures=3, breaker_probe_s=0.5)
    server.stop()
    for _ in range(4):
        assert (await e.admit(call())).reason == "store_unavailable"
    assert not e.redis_ok and e.stats["breaker_opened"] == 1
    t0 = time.monotonic()
    d = await e.admit(call())  # breaker open: decided at once, Redis not called
    assert d.reason == "store_unavailable" and time.monotonic() - t0 < 0.02
    server.start()
    t0 = time.monotonic()

    async def back() -> bool:
        return (await e.admit(call())).admit

    elapsed = await eventually(back, timeout=5.0)
    assert elapsed < 5.0
    print(f"decisions resumed {elapsed:.2f} s after redis restarted")


async def test_shadow_mode_admits_and_counts(
    store: PolicyStore, make_engine: EngineFactory
) -> None:
    e = await make_engine(shadow=True)
    d = await e.admit(call(consent_token="nope"))
    assert d.admit and d.shadow_reject == "consent_unknown"
    assert e.stats["shadow_would_reject"] == 1
    assert (await e.admit(call())).shadow_reject is None
    assert await day_count(store) == 1


async def test_function_library_reloaded_when_flushed(
    store: PolicyStore, make_engine: EngineFactory
) -> None:
    e = await make_engine()
    assert (await e.admit(call())).admit
    await store.client.execute_command("FUNCTION", "FLUSH")
    assert (await e.admit(call())).admit  # "Function not found" -> load -> retried
    assert await store.consent_used(TOKEN) == 2


async def test_every_counter_has_a_ttl(store: PolicyStore, make_engine: EngineFactory) -> None:
    rules = RuleConfig(caps=FrequencyCap(caller_per_second=5))
    e = await make_engine(rules=rules, unconsented_threshold=50)
    assert (await e.admit(call(source_ip="198.51.100.2"))).admit
    assert (
        await e.admit(call(source_ip="198.51.100.1", consent_token=None))
    ).reason == "consent_missing"
    await asyncio.sleep(0.05)
    (gen,) = (await store.refresh_layers())["consents"]
    bucket, _ = split(CALLEE)
    persistent = {
        b"{cag:ref}:trunks",
        b"{cag:ref}:enterprises",
        b"{cag:ref}:filings",
        b"{cag:ref}:version",
        b"{cag:ref}:filings:version",  # filings deltas (policy/store_keys.py): bounded by version count
        b"{cag:ref}:filings:log",
        b"{cag:ref}:filings:lens",
        b"{cag:ref}:gen",
        b"{cag:ref}:genseq",
        token_layer_key(token_shard(TOKEN), gen).encode(),
        consent_layer_key(bucket, gen).encode(),
        index_key("consents", gen, index_shard(bucket)).encode(),
        used_key(bucket).encode(),
    }
    seen = set()
    async for k in store.client.scan_iter():
        ttl = await store.client.pttl(k)
        if k in persistent:
            assert ttl == -1, k
            continue
        seen.add(k.split(b":")[-2] if b":txn:" not in k else b"txn")
        assert ttl > 0, k
        if b":rate:" in k:
            assert ttl <= 2000
        elif b"txn" in k:
            assert 32_000 < ttl <= 64_000
        elif k.endswith(b":conc"):
            assert ttl <= 14400 * 1000
    assert len(seen) >= 4
