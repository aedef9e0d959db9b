"""PolicyStore's write/read API and the function library on a real redis-server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from policy.model import DncEntry, Enterprise, Trunk
from policy.store import (
    CHANNEL,
    LIBRARY,
    PolicyStore,
    StoreError,
)
from tests.integration.conftest import CALLEE, OTHER_CALLEE, TOKEN, consent

pytestmark = pytest.mark.integration


async def test_connect_unix_and_tcp(redis_url: str, redis_tcp_url: str) -> None:
    for url in (redis_url, redis_tcp_url):
        s = await PolicyStore.connect(url)
        assert not s.cluster and await s.ping()
        await s.close()


async def test_connect_failure_is_store_error(tmp_path: object) -> None:
    with pytest.raises(StoreError):
        await PolicyStore.connect("unix:///nonexistent/redis.sock")


async def test_reference_roundtrip_version_and_replace(store: PolicyStore) -> None:
    trunks, ents, filings, v0 = await store.load_refdata()
    assert {t.trunk_id for t in trunks} == {"t-a", "t-cps", "t-conc", "t-b"}
    assert {e.enterprise_id for e in ents} == {"ent-a", "ent-b"} and len(filings) == 2
    assert v0 == await store.ref_version() == 3
    n = await store.put_records(
        "trunks", [Trunk(trunk_id="t-new", enterprise_id="ent-a", sources=("10.0.0.0/8",))]
    )
    assert n == 1
    trunks, *_, v1 = await store.load_refdata()
    assert len(trunks) == 5 and v1 == v0 + 1
    await store.put_records(
        "trunks",
        [Trunk(trunk_id="t-only", enterprise_id="ent-a", sources=("10.0.0.1",))],
        replace=True,
    )
    trunks, *_ = await store.load_refdata()
    assert [t.trunk_id for t in trunks] == ["t-only"]
    ents2 = [
        Enterprise(enterprise_id="e-q", quiet_hours="12:00-13:30 21:00-08:00", callee_daily_cap=5)
    ]
    await store.put_records("enterprises", ents2)
    _, ents, _, _ = await store.load_refdata()
    assert next(e for e in ents if e.enterprise_id == "e-q") == ents2[0]


async def test_reference_write_publishes_new_version(store: PolicyStore) -> None:
    pubsub = store.client.pubsub()
    await pubsub.subscribe(CHANNEL)
    await pubsub.get_message(timeout=1.0)  # subscribe confirmation
    await store.put_records("filings", [])
    msg = None
    for _ in range(20):
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if msg:
            break
    await pubsub.aclose()
    assert msg is not None and int(msg["data"]) == await store.ref_version()


async def test_set_status_records_and_clears_cause(store: PolicyStore) -> None:
    at = datetime(2026, 3, 10, 4, 0, tzinfo=UTC)
    assert await store.set_status("enterprise", "ent-a", "suspended", cause="manual", at=at)
    _, ents, _, _ = await store.load_refdata()
    e = next(x for x in ents if x.enterprise_id == "ent-a")
    assert (e.status, e.suspended_cause, e.suspended_at) == ("suspended", "manual", at)
    assert e.licence_expires is not None  # the rest of the record is kept
    assert await store.set_status("enterprise", "ent-a", "active")
    _, ents, _, _ = await store.load_refdata()
    e = next(x for x in ents if x.enterprise_id == "ent-a")
    assert (e.status, e.suspended_cause, e.suspended_at) == ("active", None, None)
    assert await store.set_status("trunk", "t-a", "suspended")
    assert not await store.set_status("trunk", "t-missing", "suspended")
    with pytest.raises(ValueError):
        await store.set_status("trunk", "t-a", "blacklisted")


async def test_consent_roundtrip_regrant_keeps_use_count(store: PolicyStore) -> None:
    c = await store.get_consent(TOKEN)
    assert c == consent()
    assert await store.set_consent_used(TOKEN, 2)
    await store.grant_consent(consent(max_calls=5))
    assert await store.consent_used(TOKEN) == 2
    assert (await store.get_consent(TOKEN)).max_calls == 5  # type: ignore[union-attr]
    at = datetime(2026, 3, 5, tzinfo=UTC)
    assert await store.revoke_consent(TOKEN, at)
    assert (await store.get_consent(TOKEN)).revoked_at == at  # type: ignore[union-attr]
    await store.grant_consent(consent())  # a re-grant clears the revocation
    assert (await store.get_consent(TOKEN)).revoked_at is None  # type: ignore[union-attr]
    assert await store.get_consent("nope") is None


async def test_consent_moved_to_another_callee(store: PolicyStore) -> None:
    await store.grant_consent(consent(callee="13900139000"))  # normalised on write
    assert await store.consents_for(CALLEE) == []  # gone from the old callee's bucket
    assert await store.token_callee(TOKEN) == OTHER_CALLEE
    assert [c.token for c in await store.consents_for(OTHER_CALLEE)] == [TOKEN]
    assert (await store.get_consent(TOKEN)).callee == OTHER_CALLEE  # type: ignore[union-attr]


async def test_consents_replace(store: PolicyStore) -> None:
    await store.put_records(
        "consents", [consent(token="a"), consent(token="b", callee=OTHER_CALLEE)]
    )
    assert {c.token for c in await store.consents_for(CALLEE)} == {TOKEN, "a"}
    n = await store.put_records("consents", [consent(token="b", callee=OTHER_CALLEE)], replace=True)
    assert n == 1
    for t in (TOKEN, "a"):
        assert await store.get_consent(t) is None
        assert await store.token_callee(t) is None
    assert await store.consents_for(CALLEE) == []
    assert await store.get_consent("b") is not None


async def test_dnc_add_remove_replace(store: PolicyStore) -> None:
    at = datetime(2026, 1, 2, tzinfo=UTC)
    await store.dnc_add(DncEntry(number="13800138000", scope="commercial", registered_at=at))
    assert await store.get_dnc(CALLEE) == DncEntry(
        number=CALLEE, scope="commercial", registered_at=at
    )
    assert await store.dnc_remove("138 0013 8000")
    assert not await store.dnc_remove(CALLEE)
    await store.put_records("dnc", [DncEntry(number=CALLEE), DncEntry(number=OTHER_CALLEE)])
    await store.put_records("dnc", [DncEntry(number=OTHER_CALLEE)], replace=True)
    assert await store.get_dnc(CALLEE) is None
    assert (await store.get_dnc(OTHER_CALLEE)).scope == "all"  # type: ignore[union-attr]


async def test_ensure_functions_loads_and_upgrades(store: PolicyStore) -> None:
    await store.client.execute_command("FUNCTION", "FLUSH")
    store._functions_ok = False
    await store.ensure_functions()
    libs = await store.client.execute_command("FUNCTION", "LIST", "LIBRARYNAME", LIBRARY)
    assert len(libs) == 1
    # An older library of the same name is replaced.
    old = "#!lua name=cag\nredis.register_function('cag_version', function() return 0 end)"
    await store.client.execute_command("FUNCTION", "LOAD", "REPLACE", old)
    await store.ensure_functions(force=True)
    assert await store.fcall("cag_version", (), ()) >= 1
    await store.ensure_functions()  # idempotent, no error


async def test_batched_calls_share_one_pipeline(store: PolicyStore) -> None:
    """Everything submitted in one loop turn resolves together (one pipeline round trip)."""
    futs = [store.token_callee(TOKEN) for _ in range(100)]
    assert set(await asyncio.gather(*futs)) == {CALLEE}


async def test_unconsented_window(store: PolicyStore) -> None:
    results = [await store.unconsented("ent-a", 3, 60) for _ in range(7)]
    assert results == [
        (1, False),
        (2, False),
        (3, True),
        (1, False),
        (2, False),
        (3, True),
        (1, False),
    ]
    assert 0 < await store.client.ttl("{e:ent-a}:unconsented") <= 60
