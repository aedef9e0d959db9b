"""The provisioning API (SPEC §10, R12) in-process against a real redis-server.

Each rule of issue 16 has a test here; the end-to-end ones (a real
``cag api`` process and the gateway with SIPp) are in test_api_gateway.py.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway.audit.export import Query, read_stream, records
from gateway.audit.record import pack
from gateway.audit.sink import FIELD, STREAM
from gateway.config import load_settings
from policy.model import Enterprise
from policy.store import PolicyStore
from provisioning.app import MAX_BODY, ApiState, create_app
from provisioning.store import ApiStore
from tests.integration.conftest import CALLEE, CALLER, TOKEN, load_world
from tests.integration.harness import CAG

pytestmark = pytest.mark.integration

FUTURE = "2030-01-01T00:00:00+08:00"


class Api:
    def __init__(self, client: httpx.AsyncClient, state: ApiState, keys: dict[str, str]) -> None:
        self.client = client
        self.state = state
        self.keys = keys

    async def req(self, method: str, path: str, who: str | None = "a", **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        if who is not None:
            headers["Authorization"] = f"Bearer {self.keys[who]}"
        return await self.client.request(method, path, headers=headers, **kw)


@pytest.fixture
async def api(redis_url: str, tmp_path: Path) -> AsyncIterator[Api]:
    store = await PolicyStore.connect(redis_url)
    await store.ensure_functions()
    await load_world(store)
    # ent-a tolerates one complaint per 30 days; the second suspends it.
    await store.put_records("enterprises", [
        Enterprise(enterprise_id="ent-a", name="A", complaint_threshold=1, quiet_hours="none"),  # type: ignore[arg-type]
        Enterprise(enterprise_id="ent-b", name="B", quiet_hours="none"),  # type: ignore[arg-type]
    ])
    keys = ApiStore(store.client)
    now = datetime.now(UTC)
    texts = {
        "admin": (await keys.create_key(enterprise_id=None, admin=True, rate=10_000, now=now))[1],
        "a": (await keys.create_key(enterprise_id="ent-a", admin=False, rate=10_000, now=now))[1],
        "b": (await keys.create_key(enterprise_id="ent-b", admin=False, rate=10_000, now=now))[1],
        "slow": (await keys.create_key(enterprise_id="ent-b", admin=False, rate=2, now=now))[1],
    }
    await store.close()
    settings = load_settings(None, redis_url=redis_url, state_dir=tmp_path)
    state = ApiState(settings, redis_url, [tmp_path / "audit"])
    await state.start()
    app = create_app(state, manage_lifespan=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:  # type: ignore[arg-type]
        yield Api(client, state, texts)
    await state.stop()


def consent_body(**kw: Any) -> dict[str, Any]:
    body = {"callee": "13800138000", "purpose": "callback", "expires_at": FUTURE, "evidence_ref": "crm://42"}
    body.update(kw)
    return body


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    p: dict[str, Any] = r.json()
    assert p["status"] == status and p["title"]
    return p


def api_rows(redis_url: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(redis_url)
    try:
        return [r for r in records([read_stream(client)], Query()) if r["decision"] == "api"]
    finally:
        client.close()


# ---------------------------------------------------------------- keys


async def test_no_key_or_unknown_key_is_401(api: Api) -> None:
    p = problem(await api.req("GET", f"/v1/consents/{TOKEN}", who=None), 401)
    assert "Bearer" in p["detail"]
    r = await api.client.get(f"/v1/consents/{TOKEN}", headers={"Authorization": "Bearer cag_nope_secret"})
    problem(r, 401)
    assert r.headers["www-authenticate"] == "Bearer"
    key_id = api.keys["a"].split("_")[1]
    r = await api.client.get(f"/v1/consents/{TOKEN}", headers={"Authorization": f"Bearer cag_{key_id}_wrong"})
    problem(r, 401)
    r = await api.client.get(f"/v1/consents/{TOKEN}", headers={"Authorization": "Basic abc"})
    problem(r, 401)


async def test_keys_are_stored_only_as_hashes(api: Api, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    raw = b"".join(k + v for k, v in client.hgetall("{cag:api}:keys").items())
    dump = b"".join(client.dump(k) or b"" for k in client.keys("*"))
    client.close()
    for text in api.keys.values():
        secret = text.split("_", 2)[2].encode()
        assert secret not in raw and secret not in dump


async def test_revoked_key_is_refused_within_a_second(api: Api) -> None:
    assert (await api.req("GET", f"/v1/consents/{TOKEN}")).status_code == 200
    key_id = api.keys["a"].split("_")[1]
    assert api.state.api is not None
    await api.state.api.revoke_key(key_id, datetime.now(UTC))
    await asyncio.sleep(1.1)
    problem(await api.req("GET", f"/v1/consents/{TOKEN}"), 401)


async def test_rate_limit_per_key_is_429_with_retry_after(api: Api) -> None:
    codes = [(await api.req("GET", "/v1/consents/nothing-here", who="slow")) for _ in range(4)]
    assert [r.status_code for r in codes[:2]] == [404, 404]
    p = problem(codes[2], 429)
    assert int(codes[2].headers["retry-after"]) >= 1, p
    # Another key is not slowed by it.
    assert (await api.req("GET", "/v1/consents/nothing-here", who="b")).status_code == 404


# ---------------------------------------------------------------- consents


async def test_consent_create_read_revoke(api: Api) -> None:
    r = await api.req("POST", "/v1/consents", json=consent_body(max_calls=3))
    assert r.status_code == 201, r.text
    c = r.json()
    assert c["callee"] == "+8613800138000"  # stored normalised, as `cag policy load` does
    assert c["enterprise_id"] == "ent-a" and c["token"] and c["calls_used"] == 0 and c["revoked_at"] is None
    token = c["token"]
    got = (await api.req("GET", f"/v1/consents/{token}")).json()
    assert got == c
    # effective on the next INVITE: the engine admits with it
    assert await _explain_reason(api, token) == "admitted"
    assert (await api.req("DELETE", f"/v1/consents/{token}")).status_code == 204
    got = (await api.req("GET", f"/v1/consents/{token}")).json()
    assert got["revoked_at"] is not None
    assert await _explain_reason(api, token) == "consent_revoked"
    # a repeated DELETE keeps the first revocation
    assert (await api.req("DELETE", f"/v1/consents/{token}")).status_code == 204
    assert (await api.req("GET", f"/v1/consents/{token}")).json()["revoked_at"] == got["revoked_at"]


async def _explain_reason(api: Api, token: str) -> str:
    r = await api.req("POST", "/v1/explain", json={
        "source": "192.0.2.10", "caller": "01058001234", "callee": "13800138000", "token": token,
    })
    assert r.status_code == 200, r.text
    return str(r.json()["reason"])


async def test_enterprise_key_cannot_see_or_touch_another_enterprises_consent(api: Api) -> None:
    # TOKEN belongs to ent-a; ent-b's key gets exactly what an unknown token gets.
    unknown = await api.req("GET", "/v1/consents/no-such-token", who="b")
    other = await api.req("GET", f"/v1/consents/{TOKEN}", who="b")
    assert problem(other, 404) == {**problem(unknown, 404), "instance": f"/v1/consents/{TOKEN}"}
    problem(await api.req("DELETE", f"/v1/consents/{TOKEN}", who="b"), 404)
    assert (await api.req("GET", f"/v1/consents/{TOKEN}", who="a")).json()["revoked_at"] is None
    assert (await api.req("GET", f"/v1/consents/{TOKEN}", who="admin")).status_code == 200
    # and cannot create for another enterprise
    problem(await api.req("POST", "/v1/consents", who="b", json=consent_body(enterprise_id="ent-a")), 403)


async def test_admin_creates_for_a_named_enterprise(api: Api) -> None:
    p = problem(await api.req("POST", "/v1/consents", who="admin", json=consent_body()), 422)
    assert [e["field"] for e in p["errors"]] == ["enterprise_id"]
    r = await api.req("POST", "/v1/consents", who="admin", json=consent_body(enterprise_id="ent-b", token="adm-1"))
    assert r.status_code == 201 and r.json()["enterprise_id"] == "ent-b"
    p = problem(await api.req("POST", "/v1/consents", who="admin", json=consent_body(enterprise_id="ent-x")), 422)
    assert p["errors"][0]["field"] == "enterprise_id"


async def test_idempotency_key_returns_the_first_result(api: Api) -> None:
    h = {"Idempotency-Key": "crm-req-1"}
    first = await api.req("POST", "/v1/consents", json=consent_body(), headers=h)
    again = await api.req("POST", "/v1/consents", json=consent_body(), headers=h)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert again.headers["idempotent-replayed"] == "true"
    p = problem(await api.req("POST", "/v1/consents", json=consent_body(callee="13900139000"), headers=h), 422)
    assert p["errors"][0]["field"] == "Idempotency-Key"
    # keys are per API key: another enterprise's identical header is its own request
    other = await api.req("POST", "/v1/consents", who="b", json=consent_body(), headers=h)
    assert other.status_code == 201 and other.json()["token"] != first.json()["token"]


async def test_token_of_another_enterprise_is_not_taken_over(api: Api) -> None:
    problem(await api.req("POST", "/v1/consents", who="b", json=consent_body(token=TOKEN)), 409)
    assert (await api.req("GET", f"/v1/consents/{TOKEN}", who="a")).json()["enterprise_id"] == "ent-a"


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({}, {"callee", "purpose", "expires_at", "evidence_ref"}),
        (consent_body(callee="not a number"), {"callee"}),
        (consent_body(expires_at="2030-01-01T00:00:00"), {"expires_at"}),  # no zone
        (consent_body(expires_at="tomorrow"), {"expires_at"}),
        (consent_body(purpose="marketing"), {"purpose"}),
        (consent_body(purpose="survey"), {"purpose"}),  # not in ent-a's list
        (consent_body(max_calls=0), {"max_calls"}),
        (consent_body(token="has space"), {"token"}),
        (consent_body(evidence_ref=""), {"evidence_ref"}),
        (consent_body(surprise=1), {"surprise"}),
        (consent_body(granted_at="2031-01-01T00:00:00Z"), {"expires_at"}),  # expiry before grant
        (consent_body(callee="x", purpose="marketing"), {"callee", "purpose"}),  # both named at once
    ],
)
async def test_invalid_consent_is_422_naming_each_field(api: Api, body: dict[str, Any], fields: set[str]) -> None:
    p = problem(await api.req("POST", "/v1/consents", json=body), 422)
    assert {e["field"] for e in p["errors"]} == fields, p


async def test_not_json_is_422(api: Api) -> None:
    r = await api.req("POST", "/v1/consents", content=b"{nope", headers={"Content-Type": "application/json"})
    problem(r, 422)


async def test_body_over_64_kib_is_413(api: Api) -> None:
    big = consent_body(evidence_ref="x" * (MAX_BODY + 10))
    problem(await api.req("POST", "/v1/consents", json=big), 413)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit still holds
        for _ in range(10):
            yield b" " * 8192

    problem(await api.req("POST", "/v1/consents", content=chunks(), headers={"Content-Type": "application/json"}), 413)


# ---------------------------------------------------------------- DNC


async def test_dnc_add_remove_admin_only(api: Api) -> None:
    problem(await api.req("POST", "/v1/dnc", json={"number": "13800138000"}), 403)
    r = await api.req("POST", "/v1/dnc", who="admin", json={"number": "138 0013 8000", "scope": "all"})
    assert r.status_code == 201, r.text
    assert r.json()["number"] == "+8613800138000"
    assert await _explain_reason(api, TOKEN) == "callee_dnc"
    problem(await api.req("DELETE", "/v1/dnc/13800138000", who="a"), 403)
    assert (await api.req("DELETE", "/v1/dnc/13800138000", who="admin")).status_code == 204
    problem(await api.req("DELETE", "/v1/dnc/13800138000", who="admin"), 404)
    assert await _explain_reason(api, TOKEN) == "admitted"
    p = problem(await api.req("POST", "/v1/dnc", who="admin", json={"number": "x", "scope": "some"}), 422)
    assert {e["field"] for e in p["errors"]} == {"scope"} or {e["field"] for e in p["errors"]} == {"number", "scope"}


# ---------------------------------------------------------------- complaints (R12)


def _decision(redis_url: str, rid: str, t: datetime, *, ent: str, token: str | None, decision: str = "admit") -> None:
    """A worker's decision entry, as the audit sink writes it to the stream."""
    e: dict[str, Any] = {"k": "d", "rid": rid, "t": round(t.timestamp() * 1e6), "call_id": f"{rid}@x",
                         "decision": decision, "reason": "admitted" if decision == "admit" else "consent_missing",
                         "sip_code": 200 if decision == "admit" else 608, "latency_us": 100, "node": "n",
                         "worker": 0, "trunk_id": "t-a", "enterprise_id": ent, "caller": CALLER, "callee": CALLEE}
    if token:
        e["consent_token"] = token
        e["evidence_ref"] = "ev-1"
    client = redis.Redis.from_url(redis_url)
    client.xadd(STREAM, {FIELD: pack(e)})
    client.close()


async def test_complaint_traces_withdraws_counts_and_suspends(api: Api, redis_url: str) -> None:
    now = datetime.now(UTC)
    _decision(redis_url, "r-old", now - timedelta(hours=80), ent="ent-a", token=TOKEN)  # outside 72 h
    _decision(redis_url, "r-1", now - timedelta(hours=5), ent="ent-a", token=TOKEN)
    body = {"callee": "13800138000", "caller": "010 5800 1234", "reported_at": now.isoformat(),
            "channel": "12321", "ref": "12321-2026-0001"}
    problem(await api.req("POST", "/v1/complaints", who="a", json=body), 403)
    r = await api.req("POST", "/v1/complaints", who="admin", json=body)
    assert r.status_code == 201, r.text
    c = r.json()
    assert c["complaint_id"] and c["enterprise_id"] == "ent-a"
    assert [x["record_id"] for x in c["records"]] == ["r-1"]
    assert c["records"][0]["consent_token"] == TOKEN and c["records"][0]["evidence_ref"] == "ev-1"
    assert c["actions"] == ["consent_withdrawn"] and c["withdrawn_tokens"] == [TOKEN]
    assert await _explain_reason(api, TOKEN) == "consent_revoked"

    # threshold 1: the second complaint in 30 days is over it
    r2 = await api.req("POST", "/v1/complaints", who="admin", json={**body, "ref": "desk-7", "channel": "carrier"})
    c2 = r2.json()
    assert c2["actions"] == ["enterprise_suspended"], c2  # the consent was withdrawn by the first
    store = await PolicyStore.connect(redis_url)
    _, ents, _, _ = await store.load_refdata()
    await store.close()
    ent = next(e for e in ents if e.enterprise_id == "ent-a")
    assert ent.status == "suspended" and ent.suspended_cause == "complaints"
    deadline = time.monotonic() + 5  # the engine's reference data follows within 1 s (slack for a busy CI box)
    while await _explain_reason(api, TOKEN) != "enterprise_suspended":
        assert time.monotonic() < deadline, "the suspension did not reach the engine"
        await asyncio.sleep(0.1)

    # lists: newest first; the enterprise sees its own, not another's
    listed = (await api.req("GET", "/v1/complaints?enterprise_id=ent-a", who="admin")).json()
    assert [x["ref"] for x in listed] == ["desk-7", "12321-2026-0001"] or len(listed) == 2
    own = (await api.req("GET", "/v1/complaints", who="a")).json()
    assert {x["complaint_id"] for x in own} == {c["complaint_id"], c2["complaint_id"]}
    problem(await api.req("GET", "/v1/complaints?enterprise_id=ent-a", who="b"), 403)
    assert (await api.req("GET", "/v1/complaints", who="b")).json() == []
    since = (now + timedelta(days=1)).isoformat()
    assert (await api.req("GET", "/v1/complaints", who="admin", params={"since": since})).json() == []

    # every change is in the audit trail, exportable: who, what, when
    rows = api_rows(redis_url)
    actions = [r["reason"] for r in rows]
    assert actions.count("complaint") == 2 and "consent_withdrawn" in actions and "enterprise_suspended" in actions
    admin_id = api.keys["admin"].split("_")[1]
    assert all(r["node"] == f"api:{admin_id}" and r["time"] for r in rows)


async def test_complaint_without_a_traced_call_names_the_number_holder(api: Api) -> None:
    r = await api.req("POST", "/v1/complaints", who="admin", json={
        "callee": "13900139000", "caller": "01058001234", "reported_at": datetime.now(UTC).isoformat(),
        "channel": "other-feed", "ref": "x-1"})
    c = r.json()
    assert r.status_code == 201 and c["records"] == [] and c["enterprise_id"] == "ent-a"
    assert c["traced_by"] == "number_filing" and c["actions"] == []


async def test_complaint_validation(api: Api) -> None:
    p = problem(await api.req("POST", "/v1/complaints", who="admin", json={
        "callee": "nope", "caller": "01058001234", "reported_at": "2026-01-01T00:00:00", "channel": "", "ref": "r"}),
        422)
    assert {e["field"] for e in p["errors"]} >= {"reported_at", "channel"}
    future = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    p = problem(await api.req("POST", "/v1/complaints", who="admin", json={
        "callee": "13800138000", "caller": "01058001234", "reported_at": future, "channel": "12321", "ref": "r"}), 422)
    assert p["errors"][0]["field"] == "reported_at"


# ---------------------------------------------------------------- explain


async def test_explain_same_json_as_the_cli(api: Api, redis_url: str) -> None:
    args = {"source": "192.0.2.10", "caller": "01058001234", "callee": "13800138000", "token": TOKEN,
            "at": "2026-03-10T12:00:00+08:00"}
    r = await api.req("POST", "/v1/explain", json=args)
    cli = subprocess.run([CAG, "explain", "--source", args["source"], "--caller", args["caller"], "--callee",
                          args["callee"], "--token", TOKEN, "--at", args["at"], "--redis-url", redis_url],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert r.json() == json.loads(cli.stdout)
    # ent-b's key may not explain calls from ent-a's trunk
    problem(await api.req("POST", "/v1/explain", who="b", json=args), 403)
    assert (await api.req("POST", "/v1/explain", who="admin", json=args)).status_code == 200


async def test_openapi_and_health(api: Api) -> None:
    spec = (await api.client.get("/v1/openapi.json")).json()
    for path in ("/v1/consents", "/v1/consents/{token}", "/v1/dnc", "/v1/dnc/{number}", "/v1/complaints",
                 "/v1/explain"):
        assert path in spec["paths"]
    assert (await api.client.get("/healthz")).json()["redis"] is True
    problem(await api.client.get("/v1/nothing"), 404)
    await api.req("GET", f"/v1/consents/{TOKEN}")
    text = (await api.client.get("/metrics")).text
    assert 'cag_api_requests_total{method="GET",route="/v1/consents/{token}",status="200"}' in text


# ---------------------------------------------------------------- CLI


def test_cli_keys_and_complaint(redis_url: str, tmp_path: Path) -> None:
    def cag(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CAG, *args, "--redis-url", redis_url], capture_output=True, text=True, timeout=60)

    r = cag("api", "key", "create", "--enterprise", "ent-a", "--rate", "5")
    assert r.returncode == 0, r.stderr
    key = r.stdout.strip()
    assert key.startswith("cag_") and "\n" not in key
    key_id = key.split("_")[1]
    listed = [json.loads(x) for x in cag("api", "key", "list").stdout.splitlines()]
    assert [k["key_id"] for k in listed] == [key_id] and listed[0]["enterprise_id"] == "ent-a"
    assert key.split("_", 2)[2] not in json.dumps(listed)
    assert cag("api", "key", "revoke", key_id).returncode == 0
    assert json.loads(cag("api", "key", "list").stdout)["revoked_at"]
    assert cag("api", "key", "revoke", "nope").returncode == 1
    assert cag("api", "key", "create").returncode == 2  # --enterprise or --admin

    asyncio.run(_world(redis_url))
    _decision(redis_url, "r-cli", datetime.now(UTC) - timedelta(hours=1), ent="ent-a", token=TOKEN)
    r = cag("policy", "complaint", "add", "--callee", "13800138000", "--caller", "01058001234",
            "--reported-at", datetime.now(UTC).isoformat(), "--channel", "carrier", "--ref", "desk-1",
            "--audit-dir", str(tmp_path / "none"))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["enterprise_id"] == "ent-a" and out["actions"] == ["consent_withdrawn"]
    bad = cag("policy", "complaint", "add", "--callee", "x", "--caller", "1", "--reported-at", "soon",
              "--channel", "c", "--ref", "r")
    assert bad.returncode == 2


async def _world(redis_url: str) -> None:
    store = await PolicyStore.connect(redis_url)
    await store.ensure_functions()
    await load_world(store)
    await store.close()


def test_complaint_threshold_column_loads(tmp_path: Path) -> None:
    from policy.loader import load_file

    f = tmp_path / "ents.csv"
    f.write_text("enterprise_id,name,complaint_threshold\nE1,x,3\nE2,y,\n")
    got = load_file("enterprises", f)
    assert [e.complaint_threshold for e in got] == [3, None]  # type: ignore[attr-defined]
    f.write_text("enterprise_id,complaint_threshold\nE1,0\n")
    with pytest.raises(Exception, match="complaint_threshold"):
        load_file("enterprises", f)





async def test_api_store_on_redis_cluster(redis_cluster: str) -> None:
    """Keys, idempotency records, complaints and change records carry hash tags: Cluster works too."""
    store = await PolicyStore.connect(redis_cluster)
    assert store.cluster
    try:
        api = ApiStore(store.client)
        now = datetime.now(UTC)
        key, text = await api.create_key(enterprise_id="ent-c", admin=False, rate=5, now=now)
        got = await api.get_key(key.key_id)
        assert got is not None and got.matches(text.split("_", 2)[2])
        assert key.key_id in [k.key_id for k in await api.list_keys()]
        assert await api.idem_claim(key.key_id, "i-1") is None
        assert await api.idem_claim(key.key_id, "i-1") == {"pending": True}
        await api.idem_store(key.key_id, "i-1", "fp", 201, {"token": "t"})
        assert (await api.idem_claim(key.key_id, "i-1"))["body"] == {"token": "t"}  # type: ignore[index]
        for i in range(3):
            c = {"complaint_id": f"cmp-{i}", "enterprise_id": "ent-c", "reported_at": now.isoformat(), "ref": str(i)}
            count = await api.add_complaint(c, filed_at=now, now=now)
        assert count == 3
        listed = await api.list_complaints(enterprise_id="ent-c", since=None)
        assert {c["complaint_id"] for c in listed} == {"cmp-0", "cmp-1", "cmp-2"}
        assert len(await api.list_complaints(enterprise_id=None, since=None)) == 3
        from provisioning.changes import ChangeLog

        log = ChangeLog(store.client)
        await log.record("k", "dnc_add", callee="+8613800138000")
        assert log.failed == 0
    finally:
        await store.client.flushall()
        await store.close()


async def test_a_bug_answers_500_problem_json(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """The only fake here is the fault itself: a store method that raises what no handler expects."""
    assert api.state.policy is not None

    async def broken(token: str) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(api.state.policy, "get_consent", broken)
    r = await api.req("GET", f"/v1/consents/{TOKEN}")
    p = problem(r, 500)
    assert p["detail"] == "internal error (KeyError)"


async def test_concurrent_consents_are_each_stored(api: Api) -> None:
    """Consents registered in the same instant share one store write; each is there on its own."""
    rs = await asyncio.gather(*(
        api.req("POST", "/v1/consents", json=consent_body(callee=f"1390013{i:04d}", evidence_ref=f"crm://{i}"))
        for i in range(20)
    ))
    assert [r.status_code for r in rs] == [201] * 20
    for i, r in enumerate(rs):
        got = (await api.req("GET", f"/v1/consents/{r.json()['token']}")).json()
        assert (got["callee"], got["evidence_ref"]) == (f"+861390013{i:04d}", f"crm://{i}")
