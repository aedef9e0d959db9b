"""``PolicyStore.grant_consents``, the API's batched grants, leaves Redis exactly as one-by-one grants.

The provisioning API hands the consents of its concurrent requests to one
``grant_consents`` call (``provisioning.batch``); what the workers read
must not depend on whether two grants shared a batch, including a token
granted twice in one batch (the later one moves it, as one after the other).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from policy.layout import consent_field, consent_layer_key, split
from policy.model import Consent
from policy.store import PolicyStore
from tests.integration.conftest import consent, load_world
from tests.integration.test_policy_cli import snapshot  # every key and its value

pytestmark = pytest.mark.integration


def _batch() -> list[Consent]:
    at = datetime(2026, 3, 1, tzinfo=UTC)
    return [
        consent(token="t-1", callee="13800138001", granted_at=at),
        consent(token="t-2", callee="13800138002", granted_at=at, max_calls=3),
        consent(token="t-1", callee="13800138003", granted_at=at),  # moves t-1 within the batch
        consent(token="t-3", callee="13800138001", granted_at=at),  # a second token for one callee
    ]


async def _apply(url: str, batched: bool) -> dict[bytes, Any]:
    redis.Redis.from_url(url).flushall()
    store = await PolicyStore.connect(url)
    try:
        await store.ensure_functions()
        await load_world(store)
        await store.grant_consent(consent(token="t-2", callee="13800138009"))  # held elsewhere before
        if batched:
            await store.grant_consents(_batch())
        else:
            for c in _batch():
                await store.grant_consent(c)
        owners = {t: (await store.get_consent(t)) for t in ("t-1", "t-2", "t-3")}
        assert {t: c.callee if c else None for t, c in owners.items()} == {
            "t-1": "+8613800138003", "t-2": "+8613800138002", "t-3": "+8613800138001"}
    finally:
        await store.close()
    return snapshot(url)


async def test_a_batch_leaves_the_store_as_grants_one_by_one(redis_url: str) -> None:
    one_by_one = await _apply(redis_url, batched=False)
    batched = await _apply(redis_url, batched=True)
    assert batched == one_by_one


async def test_an_empty_batch_writes_nothing(redis_url: str) -> None:
    store = await PolicyStore.connect(redis_url)
    try:
        await store.grant_consents([])
    finally:
        await store.close()
    assert snapshot(redis_url) == {b"__dbsize__": 0}


async def test_a_grant_after_another_process_loaded_a_new_generation(redis_url: str) -> None:
    """The layers this store last saw are stale (a file load elsewhere switched generations):
    the grant still lands in the new top layer, and the token's earlier holder is found there."""
    api_side, loader = await PolicyStore.connect(redis_url), await PolicyStore.connect(redis_url)
    try:
        await api_side.ensure_functions()
        await load_world(api_side)
        await api_side.grant_consent(consent(token="t-1", callee="13800138001"))  # layers seen now
        before = (api_side._gens or {}).get("consents")
        await loader.put_records("consents", [consent(token="t-1", callee="13800138002")], replace=True)
        assert (await loader.refresh_layers()).get("consents") != before
        await api_side.grant_consents([consent(token="t-1", callee="13800138003")])
        got = await loader.get_consent("t-1")
        assert got is not None and got.callee == "+8613800138003"
        layers = (await loader.refresh_layers())["consents"]
        moved_from = "+8613800138002"  # the loaded holder: its consent under t-1 is gone from every layer
        held = [await loader.client.hget(consent_layer_key(split(moved_from)[0], g), consent_field(moved_from, "t-1"))
                for g in layers]
        assert held == [None] * len(layers)
        assert (api_side._gens or {}).get("consents") == (await loader.refresh_layers()).get("consents")
    finally:
        await api_side.close()
        await loader.close()
